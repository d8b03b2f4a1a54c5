"""Session scale-up (capacity --scale K) and capacity's causal order (--sync ddl) as
workload transformations.

Synthetic workloads with a commit clock are scaled and read back: the copies'
ids, timing, statements and sync members are checked one by one; then a scaled
workload is replayed onto a real server, unchanged replayer, to show the copies
run on their own connections and repeat no write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from capture.records import QueryClass, Session, Statement, StatementKind
from capture.workload import Workload, WorkloadWriter, read_workload
from pgtraffic.capacity.order import (
    Effects,
    global_commits,
    idle_sessions_wait_for_nobody,
    keep_ddl_order,
)
from pgtraffic.capacity.scale import (
    DEFAULT_GAP_US,
    MAX_GAP_US,
    Scale,
    ScaleMode,
    copy_id,
    scale_workload,
    typical_gap_us,
)
from pgtraffic.servers import Cluster, Profile
from replay.results import read_results
from replay.runner import ReplaySettings, full_scan, quick_scan, replay_workload
from replay.sync import SyncMode
from tests.replay_helpers import fetch

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def stmt(session: str, seq: int, at_ms: int, sql: str, **kw: Any) -> Statement:
    return Statement(session, seq, at_ms * 1000, StatementKind.SIMPLE, sql, f"fp-{sql}", **kw)


def write(path: Path, stmts: list[Statement], commits: int, **sessions: dict[str, int]) -> Workload:
    """A version 2 workload (commit clock ``commits``) with classes and sessions."""
    stmts = sorted(stmts, key=lambda s: (s.offset_us, s.session, s.seq))
    writer = WorkloadWriter(path)
    for s in stmts:
        writer.write(s)
    per_session = Counter(s.session for s in stmts)
    per_class = Counter(s.fingerprint for s in stmts)
    writer.close(
        capture_start=START,
        capture_end=START + dt.timedelta(seconds=10),
        sessions=[
            dataclasses.replace(
                Session(sid, "postgres", "postgres", statements=n),
                **sessions.get(sid, {}),  # type: ignore[arg-type]
            )
            for sid, n in per_session.items()
        ],
        classes=[
            QueryClass(fp, fp[3:], True, n, total_duration_us=n * 100)
            for fp, n in per_class.items()
        ],
        sync={"commits": commits, "disconnects": 2},
    )
    return read_workload(path)


def shop(path: Path) -> Workload:
    """Session a: a block that updates and reads (its COMMIT is commit 1), then a
    read after it; session b reads after commit 1 and inserts (commit 2)."""
    return write(
        path,
        [
            stmt("a", 0, 0, "BEGIN"),
            stmt("a", 1, 100, "UPDATE t SET n = n + 1 WHERE id = 1"),
            stmt("a", 2, 200, "SELECT n FROM t WHERE id = 1"),
            stmt("a", 3, 300, "COMMIT", commit=1),
            stmt("a", 4, 400, "SELECT count(*) FROM t", after=1, after_objects=1),
            stmt("b", 0, 350, "SELECT n FROM t WHERE id = 1", after=1, after_objects=1),
            stmt("b", 1, 450, "INSERT INTO t VALUES (2, 0)", after=1, commit=2),
        ],
        commits=2,
        a={"connect_us": 0, "disconnect_us": 500_000, "disconnect_order": 1},
        b={
            "connect_us": 340_000,
            "disconnect_us": 600_000,
            "disconnect_order": 2,
            "connect_after": 1,
            "after_disconnects": 0,
        },
    )


def by_session(workload: Workload) -> dict[str, list[Statement]]:
    out: dict[str, list[Statement]] = {}
    for s in workload.statements():
        out.setdefault(s.session, []).append(s)
    return out


def test_read_only_copies_carry_no_write_and_own_no_commit(tmp_path: Path) -> None:
    source = shop(tmp_path / "w.pgtw")
    done = scale_workload(source, tmp_path / "x3.pgtw", Scale(3))
    scaled = read_workload(done.path)
    got = by_session(scaled)
    assert set(got) == {"a", "b", "a+c1", "a+c2", "b+c1", "b+c2"}
    assert done.copies == 4 and done.sessions == 6
    # the originals are untouched
    assert [s.sql for s in got["a"]] == [s.sql for s in by_session(source)["a"]]
    # a's copies: BEGIN, the SELECT inside the block, COMMIT (no longer a commit), the read
    for k in (1, 2):
        copy = got[copy_id("a", k)]
        assert [s.sql for s in copy] == [
            "BEGIN",
            "SELECT n FROM t WHERE id = 1",
            "COMMIT",
            "SELECT count(*) FROM t",
        ]
        assert [s.seq for s in copy] == [0, 1, 2, 3]
        assert [s.commit for s in copy] == [0, 0, 0, 0]
        assert [s.after for s in copy] == [0, 0, 0, 1]  # waits as the original does
        # a's typical gap is 100 ms: copy k of 3 starts k * 33.3 ms later
        originals = [s for s in got["a"] if s.seq in (0, 2, 3, 4)]
        assert [c.offset_us - o.offset_us for c, o in zip(copy, originals, strict=True)] == [
            100_000 * k // 3
        ] * 4
    assert [s.sql for s in got["b+c1"]] == ["SELECT n FROM t WHERE id = 1"]
    # the commit clock: each number still on exactly one record, the original's
    commits = [s.commit for s in scaled.statements() if s.commit]
    assert sorted(commits) == [1, 2]
    assert scaled.header.sync == source.header.sync
    # offset order in the file, and sessions: copies own no disconnection
    offsets = [s.offset_us for s in scaled.statements()]
    assert offsets == sorted(offsets)
    copy_b = scaled.sessions["b+c1"]
    assert copy_b.disconnect_order == 0 and copy_b.connect_after == 1
    assert copy_b.connect_us == 340_000 + 100_000 // 3  # b's one gap: 100 ms
    assert scaled.sessions["b"].disconnect_order == 2
    # counts: 2 sessions x 2 copies; a's UPDATE and b's INSERT left out of both copies
    assert scaled.header.counts["statements"] == 7 + 2 * 4 + 2 * 1
    assert scaled.header.counts["scale_skipped_statements"] == 2
    assert scaled.classes["fp-SELECT n FROM t WHERE id = 1"].count == 6


def test_write_copies_repeat_every_statement_but_own_no_commit(tmp_path: Path) -> None:
    source = shop(tmp_path / "w.pgtw")
    scaled = read_workload(
        scale_workload(source, tmp_path / "x2.pgtw", Scale(2, ScaleMode.WRITES)).path
    )
    got = by_session(scaled)
    assert [s.sql for s in got["a+c1"]] == [s.sql for s in got["a"]]
    assert [s.sql for s in got["b+c1"]] == [s.sql for s in got["b"]]
    assert all(s.commit == 0 for k in ("a+c1", "b+c1") for s in got[k])
    assert sorted(s.commit for s in scaled.statements() if s.commit) == [1, 2]


def test_gaps_are_bounded_and_a_lone_statement_gets_the_documented_offset() -> None:
    assert typical_gap_us([0, 10, 30, 60]) == 20
    assert typical_gap_us([5]) == DEFAULT_GAP_US
    assert typical_gap_us([7, 7, 7]) == DEFAULT_GAP_US
    assert typical_gap_us([0, 60_000_000, 120_000_000]) == MAX_GAP_US


def test_scale_one_is_the_workload_unchanged(tmp_path: Path) -> None:
    source = shop(tmp_path / "w.pgtw")
    scaled = read_workload(scale_workload(source, tmp_path / "x1.pgtw", Scale(1)).path)
    assert scaled.header.workload_id == source.header.workload_id
    assert set(scaled.sessions) == {"a", "b"}


@pytest.mark.pg(">=16")
def test_a_scaled_workload_replays_with_the_copies_on_their_own_connections(
    make_cluster: Any, tmp_path: Path
) -> None:
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0)")
    source = shop(tmp_path / "w.pgtw")
    scaled = scale_workload(source, tmp_path / "x4.pgtw", Scale(4))
    run = replay_workload(
        scaled.path, tmp_path / "r.pgtr", target.dsn(), ReplaySettings(sync=SyncMode.COMMIT)
    )
    results = read_results(run.results_path)
    sessions = set(results.strings_of("session").tolist())
    assert sessions == {"a", "b"} | {copy_id(s, k) for s in "ab" for k in (1, 2, 3)}
    assert len(results) == 7 + 3 * 4 + 3 * 1
    assert [s for s in results.strings_of("sqlstate").tolist() if s] == []
    # the copies repeated no write: one update of row 1, one inserted row
    assert fetch(target, "SELECT id, n FROM t ORDER BY id") == [(1, 1), (2, 0)]


def test_ddl_order_keeps_only_global_commits_and_idle_sessions_wait_for_nobody(
    tmp_path: Path,
) -> None:
    """Commit 1 creates a table (global), commits 2 and 3 update a row; the updates
    then depend only on the CREATE, and the DROP (itself global) on everything."""
    source = write(
        tmp_path / "w.pgtw",
        [
            stmt("a", 0, 0, "CREATE TABLE t (id int, n int)", commit=1),
            stmt("a", 1, 10, "UPDATE t SET n = n + 1", after=1, after_objects=1, commit=2),
            stmt("b", 0, 20, "UPDATE t SET n = n + 1", after=2, after_objects=2, commit=3),
            stmt("b", 1, 30, "SELECT n FROM t", after=3, after_objects=3),
            stmt("b", 2, 40, "BEGIN", after=3, after_objects=3),
            stmt("b", 3, 50, "DROP TABLE t", after=3, after_objects=3),
            stmt("b", 4, 60, "COMMIT", after=3, after_objects=3, commit=4),
            stmt("a", 2, 70, "SELECT 1", after=4, after_objects=4),
        ],
        commits=4,
        a={"disconnect_order": 2},
        b={"disconnect_order": 1},
    )
    effects = Effects()
    assert global_commits(source.statements(), effects) == [1, 4]  # the DROP's block
    out = keep_ddl_order(source, tmp_path / "ddl.pgtw")
    got = {(s.session, s.seq): s.after_objects for s in read_workload(out.path).statements()}
    assert got == {
        ("a", 0): 0,
        ("a", 1): 1,
        ("b", 0): 1,  # was 2: the other update's commit is left to the row lock
        ("b", 1): 1,
        ("b", 2): 1,
        ("b", 3): 3,  # DROP TABLE is global: it waits for every commit before it
        ("b", 4): 1,
        ("a", 2): 4,
    }
    assert out.global_commits == 2
    # commit numbers and `after` unchanged
    assert [s.commit for s in read_workload(out.path).statements()] == [
        s.commit for s in source.statements()
    ]
    idle = idle_sessions_wait_for_nobody(
        [Session("x", None, None, statements=0, disconnect_order=3), *source.sessions.values()]
    )
    assert [(s.id, s.disconnect_order) for s in idle] == [("x", 0), ("a", 2), ("b", 1)]


def test_a_scaled_workload_is_planned_from_its_statements_not_the_original_spans(
    tmp_path: Path,
) -> None:
    """Copies move and multiply statements: the spans capture wrote no longer hold, so
    replay scans the scaled file statement by statement (and sees every copy)."""
    stmts = [stmt("a", 0, 0, "SELECT 1"), stmt("a", 1, 5, "SELECT 2"), stmt("b", 0, 2, "SELECT 3")]
    source = write(
        tmp_path / "w.pgtw",
        stmts,
        0,
        a={"first_us": 0, "last_us": 5000},
        b={"first_us": 2000, "last_us": 2000},
    )
    assert all(s.first_us is not None for s in source.sessions.values())
    scaled = read_workload(scale_workload(source, tmp_path / "x3.pgtw", Scale(3)).path)
    assert all(s.first_us is None for s in scaled.sessions.values())
    assert quick_scan(scaled) is None
    assert full_scan(scaled).statements == 9 and len(full_scan(scaled).spans) == 6
