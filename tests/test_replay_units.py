"""Replay's pure parts: scheduling, the results file format, statistics (no server)."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.errors import UsageError
from replay.connection import rows_from_status
from replay.errors import ResultsFormatError
from replay.report import build_report
from replay.results import (
    CSV_COLUMNS,
    ResultsWriter,
    append_final_summary,
    create_results_file,
    export_csv,
    read_results,
)
from replay.schedule import Schedule, idle_gaps, peak_concurrency, session_worker


def test_speed_scales_intended_times() -> None:
    assert Schedule(speed=2.0).intended_us(1_000_000) == 500_000
    assert Schedule(speed=0.5).intended_us(1_000_000) == 2_000_000
    assert Schedule(speed=1.0, origin_us=300).intended_us(1_300) == 1_000
    assert Schedule(speed=None).intended_us(123_456_789) == 0
    assert Schedule(speed=None).max_speed


@pytest.mark.parametrize("speed", [0.0, -1.0])
def test_speed_must_be_positive(speed: float) -> None:
    with pytest.raises(UsageError):
        Schedule(speed=speed)


def test_jump_idle_removes_gaps() -> None:
    gaps = idle_gaps([(0, 1_000_000), (10_000_000, 11_000_000)], min_gap_us=1_000_000, keep_us=0)
    assert gaps == ((1_000_000, 10_000_000),)
    sched = Schedule(speed=1.0, gaps=gaps)
    assert sched.intended_us(500_000) == 500_000
    assert sched.intended_us(10_500_000) == 1_500_000
    # overlapping sessions leave no gap
    assert idle_gaps([(0, 5_000_000), (1_000_000, 9_000_000), (9_500_000, 10_000_000)]) == ()


@given(
    offsets=st.lists(st.integers(0, 10**9), min_size=2, max_size=50),
    spans=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**7)), max_size=20),
    speed=st.floats(0.01, 100),
)
def test_intended_times_never_go_backwards(
    offsets: list[int], spans: list[tuple[int, int]], speed: float
) -> None:
    gaps = idle_gaps([(s, s + d) for s, d in spans])
    sched = Schedule(speed=speed, gaps=gaps)
    times = [sched.intended_us(o) for o in sorted(offsets)]
    assert times == sorted(times)
    assert all(t >= 0 for t in times)


def test_peak_concurrency() -> None:
    assert peak_concurrency([(0, 10), (5, 15), (10, 20), (30, 40)]) == 2
    assert peak_concurrency([]) == 0


def test_sessions_split_between_workers_stably() -> None:
    ids = [f"6565b3c1.{i:x}" for i in range(1000)]
    shares = [session_worker(i, 4) for i in ids]
    assert shares == [session_worker(i, 4) for i in ids]
    assert set(shares) == {0, 1, 2, 3}
    assert min(shares.count(w) for w in range(4)) > 150
    assert {session_worker(i, 1) for i in ids} == {0}


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("INSERT 0 5", 5),
        ("UPDATE 3", 3),
        ("SELECT 0", 0),
        (b"DELETE 7", 7),
        ("MERGE 2", 2),
        ("BEGIN", -1),
        ("SET", -1),
        (None, -1),
    ],
)
def test_rows_from_command_tag(tag: str | bytes | None, rows: int) -> None:
    assert rows_from_status(tag) == rows


def _write_sample(path: Path, n: int, *, workers: int = 1) -> None:
    create_results_file(path, {"workload_id": "abc", "max_speed": False, "speed": 1.0})
    for w in range(workers):
        writer = ResultsWriter(path, worker=w, capacity=7)
        for i in range(n):
            writer.add(
                f"w{w}s{i % 3}",
                i,
                f"fp{i % 5}",
                i * 10,
                i * 10 + 2,
                100 + i,
                i % 4 - 1,
                "22012" if i % 6 == 0 else None,
                "22012" if i % 4 == 0 else None,
            )
        writer.write_summary({"worker": w, "sessions": 3, "skipped": {"copy_from_stdin": 2}})
        writer.close()
    append_final_summary(path, {"completed": True, "run_time_us": 1_000_000})


def test_results_round_trip_across_workers(tmp_path: Path) -> None:
    path = tmp_path / "r.pgtr"
    _write_sample(path, 50, workers=3)
    res = read_results(path)
    assert len(res) == 150
    assert res.header["workload_id"] == "abc"
    assert res.final == {"completed": True, "run_time_us": 1_000_000}
    assert len(res.summaries) == 3
    rows = list(res.rows())
    w1 = [r for r in rows if r[0].startswith("w1")]
    assert [r[1] for r in w1] == list(range(50))
    assert w1[6] == ("w1s0", 6, "fp1", 60, 62, 106, 1, "22012", None)
    assert set(res.strings_of("session")) == {f"w{w}s{i}" for w in range(3) for i in range(3)}


def test_results_survive_a_torn_last_chunk(tmp_path: Path) -> None:
    path = tmp_path / "r.pgtr"
    _write_sample(path, 40)
    whole = path.read_bytes()
    path.write_bytes(whole[:-25])  # cut into the final summary chunk
    res = read_results(path)
    assert len(res) == 40
    assert res.final is None
    assert res.damaged_bytes > 0
    report = build_report(res)
    assert not report.completed
    assert any("did not finish" in w for w in report.warnings)


def test_results_file_is_compact(tmp_path: Path) -> None:
    path = tmp_path / "big.pgtr"
    create_results_file(path, {"workload_id": "x"})
    writer = ResultsWriter(path)
    rng = np.random.default_rng(1)
    n = 200_000
    service = rng.integers(50, 5000, n)
    for i in range(n):
        writer.add(
            f"s{i % 50}",
            i // 50,
            f"fp{i % 20}",
            i * 100,
            i * 100 + 300,
            int(service[i]),
            1,
            None,
            None,
        )
    writer.close()
    per_statement = path.stat().st_size / n
    assert per_statement < 20, per_statement  # "millions of statements in tens of MB"
    assert len(read_results(path)) == n


def test_not_a_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.pgtr"
    bad.write_bytes(b"hello world, not results")
    with pytest.raises(ResultsFormatError):
        read_results(bad)
    with pytest.raises(ResultsFormatError):
        read_results(tmp_path / "missing.pgtr")


def test_csv_export(tmp_path: Path) -> None:
    path = tmp_path / "r.pgtr"
    _write_sample(path, 12)
    out = tmp_path / "r.csv"
    assert export_csv(read_results(path), out) == 12
    with out.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[0] == [
        "session",
        "index",
        "fingerprint",
        "intended_us",
        "start_us",
        "service_us",
        "rows",
        "sqlstate",
        "original_sqlstate",
        "sync_wait_us",
    ]
    assert rows[1] == ["w0s0", "0", "fp0", "0", "2", "100", "", "22012", "22012", "0"]
    assert rows[2][6:] == ["0", "", "", "0"]


def test_results_format_1_is_still_read(tmp_path: Path) -> None:
    """A version-1 file (no sync_wait_us column) reads with zero sync waits."""
    import struct
    import zlib

    from replay import results as results_mod

    path = tmp_path / "v1.pgtr"
    columns = results_mod.CSV_COLUMNS[:9]
    header = json.dumps({"format": "pgtraffic-results", "format_version": 1}).encode()
    strings = json.dumps(["s1", "fp", "22012"]).encode()
    payload = struct.pack("<I", 2) + b"".join(
        np.array(values, dtype=results_mod.RECORD_DTYPE[name]).tobytes()
        for name, values in zip(
            columns,
            ([1, 1], [0, 1], [2, 2], [0, 10], [5, 15], [100, 200], [1, -1], [0, 3], [0, 0]),
            strict=True,
        )
    )

    def chunk(kind: int, worker: int, body: bytes) -> bytes:
        return struct.pack("<BBHII", kind, worker, 0, len(body), zlib.crc32(body)) + body

    path.write_bytes(
        struct.pack("<6sH", b"PGTRES", 1)
        + chunk(1, 255, header)
        + chunk(2, 0, strings)
        + chunk(3, 0, zlib.compress(payload))
    )
    res = read_results(path)
    assert list(res.rows()) == [
        ("s1", 0, "fp", 0, 5, 100, 1, None, None),
        ("s1", 1, "fp", 10, 15, 200, -1, "22012", None),
    ]
    assert res.records["sync_wait_us"].tolist() == [0, 0]


def test_report_divergence_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.pgtr"
    _write_sample(path, 24)
    report = build_report(read_results(path))
    div = report.divergence
    # i%6==0 fails now; i%4==0 failed originally; both: i%12==0
    assert div.compared == 24
    assert div.new_errors == {"22012": 2}  # i in {6, 18}
    assert div.resolved_errors == {"22012": 4}  # i in {4, 8, 16, 20}
    assert div.agreed == 24 - 6
    assert report.errors == {"22012": 4}
    assert report.unreplayable == {"copy_from_stdin": 2}
    assert report.completed


def test_replayer_lag_excludes_waiting_behind_the_previous_statement() -> None:
    from replay.report import replayer_lag_us
    from replay.results import RECORD_DTYPE

    rows = [
        # session, index, fp, intended, start, service, rows, sqlstate, original, sync wait
        (1, 0, 0, 0, 100, 5_000, 1, 0, 0, 0),  # 100 µs late on its own
        (1, 1, 0, 1_000, 5_150, 10, 1, 0, 0, 0),  # waited for #0 (ended 5_100): 50 µs own lag
        (2, 0, 0, 2_000, 2_000, 10, 1, 0, 0, 0),  # on time
        (1, 2, 0, 9_000, 9_300, 10, 1, 0, 0, 0),  # previous ended long ago: 300 µs own lag
    ]
    recs = np.array(rows, dtype=RECORD_DTYPE)
    assert sorted(replayer_lag_us(recs).tolist()) == [0, 50, 100, 300]


def test_lag_is_split_into_sync_wait_waiting_behind_and_the_replayers_own() -> None:
    from replay.report import lag_split
    from replay.results import RECORD_DTYPE

    rows = [
        # session, index, fp, intended, start, service, rows, sqlstate, original, sync wait
        (1, 0, 0, 0, 100, 5_000, 1, 0, 0, 0),  # 100 µs late on its own
        (1, 1, 0, 1_000, 5_150, 10, 1, 0, 0, 0),  # 4_100 behind #0, then 50 µs own
        (2, 0, 0, 2_000, 9_030, 10, 1, 0, 0, 7_000),  # waited 7 ms for a commit, 30 own
        (1, 2, 0, 9_000, 9_300, 10, 1, 0, 0, 200),  # 200 sync, 100 own
    ]
    sync, behind, own = lag_split(np.array(rows, dtype=RECORD_DTYPE))
    # session order: (1, 0), (1, 1), (1, 2), (2, 0)
    assert sync.tolist() == [0, 0, 200, 7_000]
    assert behind.tolist() == [0, 4_100, 0, 0]
    assert own.tolist() == [100, 50, 100, 30]


def test_sync_table_watermark_waits_timeouts_and_releases() -> None:
    from replay.sync import Outcome, SyncTable

    async def main() -> None:
        table = SyncTable(5, 2)
        assert table.commit_reached(0)
        assert table.commit_reached(9)  # not in the workload: done from the start
        table.commit_done(2)
        assert table.commits.mark == 0  # 1 is not done yet
        assert not table.commit_reached(2)
        waiter = asyncio.ensure_future(table.wait_commits(2, 5.0, "w"))
        await asyncio.sleep(0)
        table.commit_done(1)
        assert table.commits.mark == 2
        assert await waiter is Outcome.DONE
        assert await table.wait_commits(4, 0.05, "t") is Outcome.TIMEOUT
        released = asyncio.ensure_future(table.wait_commits(5, 5.0, "r"))
        await asyncio.sleep(0)
        assert table.waiting == ["r"]
        assert table.release(["r", "nobody"]) == 1
        assert await released is Outcome.RELEASED
        assert table.waiting == []
        table.disconnect_done(2)
        assert await table.wait_disconnects(2, 0.05, "d") is Outcome.TIMEOUT
        table.disconnect_done(1)
        assert table.disconnects.mark == 2

    asyncio.run(main())


def test_sync_tables_of_two_processes_share_their_flags() -> None:
    from replay.sync import Outcome, SyncTable, map_flags, shared_flags

    async def main(path: str) -> None:
        mine = SyncTable(3, 1, map_flags(path, 3, 1), shared=True)
        theirs = SyncTable(3, 1, map_flags(path, 3, 1), shared=True)
        waiter = asyncio.ensure_future(mine.wait_commits(2, 5.0, "w"))
        await asyncio.sleep(0.01)
        theirs.commit_done(1)
        theirs.commit_done(2)
        assert await asyncio.wait_for(waiter, 1.0) is Outcome.DONE  # seen by polling
        theirs.disconnect_done(1)
        assert mine.commit_reached(2)
        assert await mine.wait_disconnects(1, 1.0, "d") is Outcome.DONE

    with shared_flags(3, 1) as path:
        asyncio.run(main(path))
    assert not Path(path).exists()
