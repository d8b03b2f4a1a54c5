"""The session runner (replay.engine._SessionRunner) on its own, against a real server.

Each test hands one runner a few statements directly (no dispatcher), on both of
its senders: pgtraffic's wire channel and asyncpg's query paths.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from capture.records import Session, StatementKind
from pgtraffic.servers import Cluster
from replay.engine import Counters, Dispatched, Replayer, ReplayOptions, _Inbox, _SessionRunner
from replay.results import ResultsWriter, create_results_file, read_results
from replay.runner import inspect_target
from replay.schedule import Schedule
from replay.sqlstates import CONNECT_FAILED, NO_CONNECTION
from replay.sync import SyncMode, SyncTable
from tests.replay_helpers import write_workload

SENDERS = pytest.mark.parametrize("direct", [True, False], ids=["wire", "asyncpg"])


def stmt(seq: int, offset_ms: int, sql: str, **kw: Any) -> Dispatched:
    kind = StatementKind.EXECUTE.value if "params" in kw else StatementKind.SIMPLE.value
    return Dispatched(
        seq,
        offset_ms * 1000,
        kw.pop("kind", kind),
        sql,
        f"fp:{sql[:30]}",
        kw.pop("params", None),
        kw.pop("name", "" if kind == StatementKind.EXECUTE.value else None),
        None,
        **kw,
    )


def run_one(
    cluster: Cluster,
    tmp_path: Path,
    items: Sequence[Dispatched],
    *,
    direct: bool = True,
    speed: float | None = None,
    database: str = "postgres",
    table: SyncTable | None = None,
    cancel_after_s: float | None = None,
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
    **options: Any,
) -> tuple[list[tuple[Any, ...]], Counters, float]:
    """Run one session of ``items``; returns its records (as tuples with the sync
    wait last), the counters and the wall time it took."""
    info = inspect_target(cluster.dsn())
    workload = write_workload(tmp_path / "w.pgtw", [], connect={"s": 0})
    out = tmp_path / "r.pgtr"
    create_results_file(out, {"workload_id": workload.header.workload_id})
    opts = ReplayOptions(
        dsn=cluster.dsn(),
        schedule=Schedule(speed=speed),
        default_user="postgres",
        default_database="postgres",
        direct_simple=direct,
        **options,
    )
    writer = ResultsWriter(out)
    session = Session(id="s", user="postgres", database=database, connect_us=0)

    async def main() -> float:
        replayer = Replayer(workload, opts, writer, types=info.types, start_ns=time.monotonic_ns())
        if table is not None:
            replayer.table = table
            replayer.counters.sync = SyncMode.COMMIT.value
        inbox = _Inbox()
        for item in items:
            replayer.budget.take()
            inbox.put(item)
        inbox.put(None)
        runner = _SessionRunner(replayer, session, inbox)
        began = time.monotonic()
        side = None if alongside is None else asyncio.create_task(alongside())
        task = asyncio.create_task(runner.run())
        if cancel_after_s is None:
            await task
        else:
            await asyncio.sleep(cancel_after_s)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        if side is not None:
            await side
        assert replayer.budget.pending == 0
        counters.append(replayer.counters)
        return time.monotonic() - began

    counters: list[Counters] = []
    took = asyncio.run(main())
    writer.close()
    res = read_results(out)
    waits = res.records["sync_wait_us"].tolist()
    rows = [(*row, wait) for row, wait in zip(res.rows(), waits, strict=True)]
    return rows, counters[0], took


@SENDERS
def test_statements_run_in_order_with_their_outcomes(
    pg16: Cluster, tmp_path: Path, direct: bool
) -> None:
    """In order, one at a time; an error is recorded with its SQLSTATE and the
    session goes on; rows come from the command tags; a COPY FROM STDIN is skipped."""
    items = [
        stmt(0, 0, "CREATE TEMP TABLE t (a int)"),
        stmt(1, 0, "INSERT INTO t VALUES ($1), ($2)", params=["1", "2"]),
        stmt(2, 0, "SELECT 1/0"),
        stmt(3, 0, "INSERT INTO t VALUES ($1)", params=["x"]),
        stmt(4, 0, "COPY t FROM STDIN", kind=StatementKind.COPY_FROM_STDIN.value),
        stmt(5, 0, "INSERT INTO t SELECT a + 10 FROM t"),
        stmt(6, 0, "SELECT a FROM t"),
    ]
    rows, counters, _ = run_one(pg16, tmp_path, items, direct=direct)
    assert [(r[1], r[6], r[7]) for r in rows] == [
        (0, -1, None),
        (1, 2, None),
        (2, -1, "22012"),
        (3, -1, "22P02"),
        (5, 2, None),
        (6, 4, None),
    ]
    assert counters.skipped == {"copy_from_stdin": 1}
    for before, after in itertools.pairwise(rows):
        assert after[4] >= before[4] + before[5]  # sent after the previous one ended


@SENDERS
def test_intended_times_are_honoured(pg16: Cluster, tmp_path: Path, direct: bool) -> None:
    items = [stmt(i, ms, "SELECT 1") for i, ms in enumerate((0, 150, 300, 300, 450))]
    rows, _, took = run_one(pg16, tmp_path, items, direct=direct, speed=1.0)
    assert [r[3] for r in rows] == [0, 150_000, 300_000, 300_000, 450_000]
    for row in rows:
        assert 0 <= row[4] - row[3] < 100_000  # never early, not much late
    assert took >= 0.45


@SENDERS
def test_a_lost_connection_is_recorded_and_the_session_reconnects(
    pg16: Cluster, tmp_path: Path, direct: bool
) -> None:
    """The statement that loses the connection is recorded with the server's last
    word or 08006; the next ones are not sent (08003) until the reconnect is due."""
    items = [
        stmt(0, 0, "SELECT 1"),
        stmt(1, 10, "SELECT pg_terminate_backend(pg_backend_pid())"),
        stmt(2, 20, "SELECT 2"),
        stmt(3, 400, "SELECT 3"),
    ]
    rows, counters, _ = run_one(
        pg16, tmp_path, items, direct=direct, speed=1.0, reconnect_interval_s=0.3
    )
    states = [r[7] for r in rows]
    assert states[0] is None
    assert states[1] in {"57P01", "08006"}
    assert states[2] == NO_CONNECTION
    assert states[3] is None  # reconnected
    assert counters.reconnects == 1
    assert sum(counters.connections_lost.values()) == 1
    assert counters.connections_opened == 2


def test_statements_of_a_session_that_cannot_connect_are_not_sent(
    pg16: Cluster, tmp_path: Path
) -> None:
    items = [stmt(0, 0, "SELECT 1"), stmt(1, 0, "SELECT 2")]
    rows, counters, _ = run_one(pg16, tmp_path, items, database="no_such_database")
    assert [r[7] for r in rows] == [NO_CONNECTION, NO_CONNECTION]
    assert [r[5] for r in rows] == [0, 0]
    assert counters.connections_opened == 0
    assert sum(counters.connect_failures.values()) == 1
    assert CONNECT_FAILED not in counters.connect_failures  # the server's 3D000


@SENDERS
def test_commits_are_marked_however_their_statements_end(
    pg16: Cluster, tmp_path: Path, direct: bool
) -> None:
    """Success, error and skip mark their commits; so does the end of a cancelled
    session for the statement in flight and those never started; the session's
    disconnection is marked when it ends."""
    table = SyncTable(6, 1)
    items = [
        stmt(0, 0, "SELECT 1", commit=1),
        stmt(1, 0, "SELECT 1/0", commit=2),
        stmt(2, 0, "COPY t FROM STDIN", kind=StatementKind.COPY_FROM_STDIN.value, commit=3),
        stmt(3, 0, "SELECT pg_sleep(30)", commit=4),
        stmt(4, 0, "SELECT 5", commit=5),
    ]
    rows, _, took = run_one(pg16, tmp_path, items, direct=direct, table=table, cancel_after_s=0.5)
    assert [r[1] for r in rows] == [0, 1]
    assert took < 5
    assert table.commits.mark == 5  # 6 belongs to no one here
    assert not table.commit_reached(6)
    assert table.disconnects.mark == 0  # this session has no disconnect_order
    assert table.flags[table.disconnects.base + 1] == 0


def test_a_statement_waits_for_the_commits_it_came_after(pg16: Cluster, tmp_path: Path) -> None:
    """The runner does not send a statement before the commits it came after are
    done, also on the wire channel's fast path; its wait is recorded."""
    table = SyncTable(2, 0)
    items = [
        stmt(0, 0, "SELECT 1"),
        stmt(1, 0, "SELECT 2", after=1),  # due at once: would go on the fast path
        stmt(2, 0, "SELECT 3", after=2),  # times out
    ]

    async def commit_elsewhere() -> None:
        await asyncio.sleep(0.3)
        table.commit_done(1)  # as another session would

    rows, counters, took = run_one(
        pg16, tmp_path, items, table=table, sync_timeout_s=0.4, alongside=commit_elsewhere
    )
    waits = {r[1]: r[9] for r in rows}
    assert waits[0] == 0
    assert 200_000 < waits[1] < 1_000_000
    assert 300_000 < waits[2] < 1_000_000
    assert counters.sync_waits == 2
    assert counters.sync_timeouts == {"fp:SELECT 3": 1}
    assert took > 0.6
