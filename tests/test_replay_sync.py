"""Causal replay (``--sync``) on real servers, with small hand-made dependent workloads.

The sync members (commit numbers, the commits and disconnections a statement or a
connection came after) are set by hand on the records, as the capture tracker
would from the log's record order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from capture.records import Session, Statement, StatementKind
from capture.workload import Workload, WorkloadWriter, read_workload
from pgtraffic.servers import Cluster
from replay.report import build_report
from replay.results import Results
from replay.schedule import session_worker
from replay.sync import SyncMode
from tests.replay_helpers import START, replay


def sql_stmt(
    session: str,
    seq: int,
    offset_ms: float,
    sql: str,
    *,
    commit: int = 0,
    after: int = 0,
    after_objects: int = 0,
) -> Statement:
    return Statement(
        session,
        seq,
        int(offset_ms * 1000),
        StatementKind.SIMPLE,
        sql,
        f"fp:{sql.split()[0]}:{seq}",
        commit=commit,
        after=after,
        after_objects=after_objects,
    )


def sync_workload(
    path: Path,
    statements: Iterable[Statement],
    sessions: Mapping[str, Mapping[str, Any]] | None = None,
) -> Workload:
    """A format-2 workload; ``sessions`` adds members (sync ones, connect_us) per id."""
    stmts = sorted(statements, key=lambda s: (s.offset_us, s.session, s.seq))
    counts: dict[str, int] = {}
    for s in stmts:
        counts[s.session] = counts.get(s.session, 0) + 1
    extra = sessions or {}
    writer = WorkloadWriter(path)
    for s in stmts:
        writer.write(s)
    records = [
        Session(id=sid, user="postgres", database="postgres", statements=n, **extra.get(sid, {}))
        for sid, n in counts.items()
    ]
    writer.close(
        capture_start=START,
        capture_end=START + dt.timedelta(microseconds=stmts[-1].offset_us),
        sessions=records,
        classes=[],
        sync={
            "commits": max(s.commit for s in stmts),
            "disconnects": max([s.disconnect_order for s in records] + [0]),
        },
    )
    return read_workload(path)


def summary(results: Results) -> dict[str, Any]:
    """The workers' sync counters, added up."""
    total: dict[str, Any] = {"sync_timeouts": {}}
    for worker in results.summaries:
        for key, value in worker.items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            elif key == "sync_timeouts":
                for fp, n in value.items():
                    total["sync_timeouts"][fp] = total["sync_timeouts"].get(fp, 0) + n
            else:
                total[key] = value
    return total


def by_key(results: Results) -> dict[tuple[str, int], tuple[Any, ...]]:
    waits = results.records["sync_wait_us"].tolist()
    return {(r[0], r[1]): (*r, w) for r, w in zip(results.rows(), waits, strict=True)}


def execute(cluster: Cluster, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(cluster.dsn())
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def two_sessions(a: str = "a", b: str = "b") -> tuple[str, str]:
    """Session ids; with ``a``/``b`` of different workers when two workers share them."""
    if session_worker(a, 2) == session_worker(b, 2):
        b = next(
            f"{b}{i}" for i in range(100) if session_worker(f"{b}{i}", 2) != session_worker(a, 2)
        )
    return a, b


def dependent_read(tmp_path: Path) -> tuple[Workload, str, str]:
    """A creates t and fills it (commits 1 and 2) after a slow first statement; B,
    logged after those commits, reads t: in the capture at the same offset as A's
    first statement."""
    a, b = two_sessions()
    table = f"t_{uuid.uuid4().hex[:8]}"
    workload = sync_workload(
        tmp_path / "dep.pgtw",
        [
            sql_stmt(a, 0, 0, "SELECT pg_sleep(0.4)"),
            sql_stmt(a, 1, 0, f"CREATE TABLE {table} (x int)", commit=1),
            sql_stmt(a, 2, 0, f"INSERT INTO {table} VALUES (1), (2), (3)", after=1, commit=2),
            sql_stmt(b, 0, 0, f"SELECT x FROM {table}", after=2, after_objects=2),
        ],
    )
    return workload, a, b


@pytest.mark.parametrize(
    ("mode", "pace"),
    [
        (SyncMode.COMMIT, {"max_speed": True}),
        (SyncMode.COMMIT, {"speed": 4.0}),
        (SyncMode.OBJECTS, {"max_speed": True}),
    ],
    ids=["commit-max-speed", "commit-speed-4", "objects-max-speed"],
)
def test_a_statement_waits_for_the_commits_it_came_after(
    pg16: Cluster, tmp_path: Path, mode: SyncMode, pace: dict[str, Any]
) -> None:
    workload, _, b = dependent_read(tmp_path)
    results = replay(workload, pg16, tmp_path / "r.pgtr", sync=mode, **pace)
    got = by_key(results)
    assert got[(b, 0)][6:8] == (3, None)  # three rows, no error
    assert got[(b, 0)][9] > 300_000  # it waited for A's slow start
    counters = summary(results)
    assert counters["sync"] == mode.value
    assert counters["sync_waits"] == 1
    assert counters["sync_wait_us"] == got[(b, 0)][9]
    report = build_report(results)
    assert report.sync_waits == 1


def test_without_sync_the_reader_overtakes_the_writer(pg16: Cluster, tmp_path: Path) -> None:
    workload, _, b = dependent_read(tmp_path)
    results = replay(workload, pg16, tmp_path / "r.pgtr", sync=SyncMode.NONE, max_speed=True)
    assert by_key(results)[(b, 0)][7] == "42P01"
    assert summary(results)["sync"] == "none"


def test_the_table_is_shared_between_worker_processes(pg16: Cluster, tmp_path: Path) -> None:
    workload, a, b = dependent_read(tmp_path)
    assert session_worker(a, 2) != session_worker(b, 2)
    results = replay(
        workload, pg16, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, max_speed=True, workers=2
    )
    got = by_key(results)
    assert got[(b, 0)][6:8] == (3, None)
    assert got[(b, 0)][9] > 300_000


def test_a_connection_waits_for_the_disconnections_before_it(pg16: Cluster, tmp_path: Path) -> None:
    """Session 2 connected, in the capture, after session 1 disconnected: it opens
    its connection (and sends its statements) only after session 1 ended."""
    table = f"c_{uuid.uuid4().hex[:8]}"
    sessions = {
        "one": {"connect_us": 0, "disconnect_us": 1000, "disconnect_order": 1},
        "two": {"connect_us": 0, "after_disconnects": 1},
    }
    statements = [
        sql_stmt("one", 0, 0, "SELECT pg_sleep(0.3)"),
        sql_stmt("one", 1, 0, f"CREATE TABLE {table} AS SELECT 1 AS x"),
        sql_stmt("two", 0, 0, f"SELECT x FROM {table}"),
    ]
    workload = sync_workload(tmp_path / "w.pgtw", statements, sessions)
    results = replay(workload, pg16, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, max_speed=True)
    got = by_key(results)
    one_end = got[("one", 1)][4] + got[("one", 1)][5]
    assert got[("two", 0)][6:8] == (1, None)
    assert got[("two", 0)][4] > one_end
    counters = summary(results)
    assert counters["connect_sync_waits"] == 1
    assert counters["connect_sync_wait_us"] > 250_000
    # and without the sync the second session reads too early
    workload = sync_workload(
        tmp_path / "w2.pgtw",
        [
            sql_stmt(s.session, s.seq, s.offset_us / 1000, s.sql.replace(table, table + "b"))
            for s in statements
        ],
        sessions,
    )
    results = replay(workload, pg16, tmp_path / "r2.pgtr", sync=SyncMode.NONE, max_speed=True)
    assert by_key(results)[("two", 0)][7] == "42P01"


def test_a_wait_longer_than_the_timeout_goes_ahead_and_is_counted(
    pg16: Cluster, tmp_path: Path
) -> None:
    a, b = two_sessions()
    workload = sync_workload(
        tmp_path / "w.pgtw",
        [
            sql_stmt(a, 0, 0, "SELECT pg_sleep(2)", commit=1),
            sql_stmt(b, 0, 0, "SELECT 1", after=1),
        ],
    )
    results = replay(
        workload,
        pg16,
        tmp_path / "r.pgtr",
        sync=SyncMode.COMMIT,
        max_speed=True,
        sync_timeout_s=0.3,
    )
    got = by_key(results)
    wait = got[(b, 0)][9]
    assert 250_000 < wait < 1_500_000
    assert got[(b, 0)][4] + got[(b, 0)][5] < got[(a, 0)][4] + got[(a, 0)][5]  # went ahead
    counters = summary(results)
    assert counters["sync_timeouts"] == {"fp:SELECT:0": 1}
    report = build_report(results)
    assert report.sync_timeouts == {"fp:SELECT:0": 1}


@pytest.mark.parametrize("in_blocks", [True, False], ids=["wait-in-blocks", "default"])
def test_a_cycle_between_a_sync_wait_and_a_row_lock_is_broken(
    pg16: Cluster, tmp_path: Path, in_blocks: bool
) -> None:
    """On the target A locks row 1 first; B's update of it waits for A's lock, while
    A's COMMIT would wait for B's commit (the order of the capture). Waiting inside
    blocks, the cycle breaker sees B blocked by a waiting session and releases A long
    before the timeout; by default a statement inside a block never waits, so there
    is no cycle to break."""
    table = f"k_{uuid.uuid4().hex[:8]}"
    execute(
        pg16, f"CREATE TABLE {table} (id int PRIMARY KEY, v int); INSERT INTO {table} VALUES (1, 0)"
    )
    a, b = two_sessions()
    workload = sync_workload(
        tmp_path / "w.pgtw",
        [
            sql_stmt(a, 0, 0, "BEGIN"),
            sql_stmt(a, 1, 0, f"UPDATE {table} SET v = v + 1 WHERE id = 1"),
            sql_stmt(b, 0, 50, f"UPDATE {table} SET v = v + 10 WHERE id = 1", commit=1),
            sql_stmt(a, 2, 100, "COMMIT", after=1, commit=2),
        ],
    )
    began = time.monotonic()
    results = replay(
        workload,
        pg16,
        tmp_path / "r.pgtr",
        sync=SyncMode.COMMIT,
        speed=1.0,
        sync_timeout_s=30,
        sync_in_blocks=in_blocks,
    )
    assert time.monotonic() - began < 10
    got = by_key(results)
    assert {key: row[7] for key, row in got.items()} == {
        (a, 0): None,
        (a, 1): None,
        (b, 0): None,
        (a, 2): None,
    }
    counters = summary(results)
    assert counters["cycles_broken"] == int(in_blocks)
    assert counters["sync_released"] == int(in_blocks)
    assert counters["sync_timeouts"] == {}
    assert got[(a, 2)][9] < 2_000_000


def test_a_workload_without_sync_members_replays_without_sync(
    pg16: Cluster, tmp_path: Path
) -> None:
    """A format-1 file has no commit clock: it replays as --sync none, and the
    report says so."""
    workload, _, _ = dependent_read(tmp_path)
    path = tmp_path / "v1.pgtw"
    with gzip.open(workload.path, "rt") as fh:
        lines = fh.read().splitlines()
    header = json.loads(lines[0])
    header["format_version"] = 1
    header.pop("sync", None)
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    old = read_workload(path)
    results = replay(old, pg16, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, speed=1.0)
    counters = summary(results)
    assert counters["sync"] == "none"
    assert counters["sync_requested"] == "commit"
    report = build_report(results)
    assert any("--sync none" in w for w in report.warnings)


def test_a_workload_without_row_keys_replays_rows_in_commit_order(
    pg16: Cluster, tmp_path: Path
) -> None:
    """A workload captured before after_rows existed (no ``sync.rows``): --sync rows
    keeps commit order, and the report says why."""
    workload, _, _ = dependent_read(tmp_path)
    path = tmp_path / "norows.pgtw"
    with gzip.open(workload.path, "rt") as fh:
        lines = fh.read().splitlines()
    header = json.loads(lines[0])
    header["sync"].pop("rows", None)  # as a capture before after_rows wrote it
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    results = replay(read_workload(path), pg16, tmp_path / "r.pgtr", sync=SyncMode.ROWS)
    counters = summary(results)
    assert (counters["sync"], counters["sync_requested"]) == ("commit", "rows")
    report = build_report(results)
    assert any("captured before row keys" in w for w in report.warnings)


def test_a_session_that_runs_nothing_disconnects_on_time(pg16: Cluster, tmp_path: Path) -> None:
    """pgbench's first connection runs no statement; a later connection waits for its
    disconnection. The session's end must not wait for the whole workload to be
    dispatched (it did: the later connection then stalled until the end)."""
    stmts = [sql_stmt("late", 0, 300, "SELECT 1")]
    stmts += [sql_stmt("busy", k, k * 500, "SELECT 2") for k in range(7)]
    path = tmp_path / "w.pgtw"
    writer = WorkloadWriter(path)
    for s in sorted(stmts, key=lambda s: (s.offset_us, s.session)):
        writer.write(s)
    sessions = [
        Session(
            "idle",
            "postgres",
            "postgres",
            connect_us=0,
            disconnect_us=100_000,
            statements=0,
            disconnect_order=1,
        ),
        Session(
            "late",
            "postgres",
            "postgres",
            connect_us=200_000,
            disconnect_us=400_000,
            statements=1,
            disconnect_order=2,
            after_disconnects=1,
        ),
        Session(
            "busy",
            "postgres",
            "postgres",
            connect_us=0,
            disconnect_us=3_100_000,
            statements=7,
            disconnect_order=3,
        ),
    ]
    writer.close(
        capture_start=START,
        capture_end=START + dt.timedelta(seconds=3.1),
        sessions=sessions,
        classes=[],
        sync={"commits": 0, "disconnects": 3},
    )
    results = replay(read_workload(path), pg16, tmp_path / "r.pgtr", sync=SyncMode.COMMIT)
    late = results.records[results.records["session"] == results.strings.index("late")]
    assert late.size == 1
    lag_us = int(late["start_us"][0]) - int(late["intended_us"][0])
    assert lag_us < 1_000_000, f"the late session waited {lag_us / 1e6:.1f} s for the idle one"
