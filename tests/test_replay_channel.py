"""The replay's own wire channel: behaviour against real servers, and its parser
fed by hand (partial messages, rows that are dropped, not held)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgtraffic.servers import Cluster
from replay.connection import ConnectSpec, ReplayConnection, probe_target
from replay.protocol import (
    IDLE,
    ChannelLost,
    WireChannel,
    error_sqlstate,
    query_message,
)
from tests.replay_helpers import execute, replay, simple, write_workload

pytestmark = pytest.mark.pg


async def _open(cluster: Cluster) -> ReplayConnection:
    info = await probe_target(cluster.socket_dsn())
    spec = ConnectSpec(dsn=cluster.socket_dsn(), user=None, database=None)
    conn = await ReplayConnection.open(spec, info.types)
    assert conn.channel is not None
    return conn


async def _run(
    conn: ReplayConnection, sqls: Sequence[str]
) -> list[tuple[bytes | None, str | None]]:
    """Run ``sqls`` back to back on the channel; (tag, sqlstate) of each."""
    assert conn.channel is not None
    results: list[tuple[bytes | None, str | None]] = []
    rest: Iterator[str] = iter(sqls[1:])

    def step(tag: bytes | None, state: str | None) -> bytes | None:
        results.append((tag, state))
        sql = next(rest, None)
        return None if sql is None else query_message(sql)

    await conn.channel.run(query_message(sqls[0]), step)
    return results


@pytest.fixture(params=[16, 18], ids=lambda m: f"pg{m}")
def server(request: pytest.FixtureRequest) -> Cluster:
    cluster: Cluster = request.getfixturevalue(f"pg{request.param}")
    return cluster


def test_statements_errors_copy_and_big_rows(server: Cluster) -> None:
    async def main() -> list[tuple[bytes | None, str | None]]:
        conn = await _open(server)
        try:
            return await _run(
                conn,
                [
                    "SELECT 1",
                    "SELECT 1/0",
                    "SELECT 1; SELECT 2 FROM generate_series(1, 3)",
                    "SELECT 1; SELECT nope; SELECT 3",
                    "",
                    "CREATE TEMP TABLE t (a int)",
                    "COPY t FROM STDIN",
                    "COPY (SELECT 1) TO STDOUT",
                    "SELECT repeat('x', 3000000) FROM generate_series(1, 4)",
                    "DO $$BEGIN RAISE NOTICE 'hello'; END$$",
                    "INSERT INTO t VALUES (1), (2)",
                ],
            )
        finally:
            await conn.close()

    results = asyncio.run(main())
    assert results == [
        (b"SELECT 1", None),
        (None, "22012"),
        (b"SELECT 3", None),  # the last command's tag, as asyncpg reports it
        (None, "42703"),
        (None, None),  # empty query: no tag
        (b"CREATE TABLE", None),
        (None, "57014"),  # COPY FROM STDIN: the data is not in the log; refused
        (b"COPY 1", None),
        (b"SELECT 4", None),  # 12 MB of rows dropped as they arrived
        (b"DO", None),
        (b"INSERT 0 2", None),
    ]


def test_switching_to_asyncpg_and_back_keeps_session_state(server: Cluster) -> None:
    async def main() -> tuple[list[Any], int, str, str, int]:
        conn = await _open(server)
        try:
            first = await _run(
                conn,
                [
                    "CREATE TEMP TABLE t (a int)",
                    "SET TimeZone = 'Asia/Tokyo'",
                    "BEGIN",
                    "INSERT INTO t VALUES (1)",
                ],
            )
            # extended protocol (asyncpg) inside the transaction the channel opened
            inside = await conn.execute("SELECT count(*) FROM t WHERE a = $1", ["1"], None)
            second = await _run(conn, ["INSERT INTO t VALUES (2)", "ROLLBACK"])
            after = await conn.use_asyncpg().fetchval("SELECT count(*) FROM t")
            # asyncpg saw the ParameterStatus message the channel received
            zone = conn.conn.get_settings().TimeZone
            third = await _run(conn, ["INSERT INTO t VALUES (3)"])
            return [*first, *second, *third], inside, after, zone, len(third)
        finally:
            await conn.close()

    results, inside, after, zone, _ = asyncio.run(main())
    assert [state for _, state in results] == [None] * 7
    assert inside == 1  # one row: the insert of the open transaction is visible
    assert after == "0"  # rolled back (replay connections read every type as text)
    assert zone == "Asia/Tokyo"


def _terminate_later(cluster: Cluster, pid: int, delay_s: float) -> asyncio.Task[Any]:
    async def kill() -> None:
        await asyncio.sleep(delay_s)
        other = await asyncpg.connect(cluster.socket_dsn())
        try:
            await other.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await other.close()

    return asyncio.ensure_future(kill())


def test_connection_terminated_mid_statement_and_while_idle(server: Cluster) -> None:
    async def main() -> tuple[str, bool, str, bool]:
        conn = await _open(server)
        pid = int(await conn.use_asyncpg().fetchval("SELECT pg_backend_pid()"))
        killer = _terminate_later(server, pid, 0.2)
        try:
            await _run(conn, ["SELECT 1", "SELECT pg_sleep(5)", "SELECT 2"])
        except ChannelLost as exc:
            mid = exc.sqlstate
        else:
            raise AssertionError("the statement survived pg_terminate_backend")
        await killer
        closed_mid = conn.is_closed() and conn.conn.is_closed()
        await conn.close()  # no error, nothing left behind

        conn = await _open(server)
        pid = int(await conn.use_asyncpg().fetchval("SELECT pg_backend_pid()"))
        await _run(conn, ["SELECT 1"])  # the channel now owns the idle connection
        await _terminate_later(server, pid, 0)
        for _ in range(100):
            if conn.is_closed():
                break
            await asyncio.sleep(0.02)
        try:
            await _run(conn, ["SELECT 1"])
        except ChannelLost as exc:
            idle = exc.sqlstate
        else:
            raise AssertionError("a statement ran on a terminated connection")
        closed_idle = conn.conn.is_closed()
        await conn.close()
        return mid, closed_mid, idle, closed_idle

    mid, closed_mid, idle, closed_idle = asyncio.run(main())
    assert mid == "57P01"  # the server's own reason, admin_shutdown
    assert closed_mid  # asyncpg was told: the replayer reconnects
    assert idle == "57P01"
    assert closed_idle


def test_connection_lost_while_asyncpg_had_it(server: Cluster) -> None:
    """Lost during an extended-protocol statement's turn: the next simple one fails
    at once with ChannelLost, it does not wait for a reply that cannot come."""

    async def main() -> str:
        conn = await _open(server)
        await _run(conn, ["SELECT 1"])
        pid = int(await conn.use_asyncpg().fetchval("SELECT pg_backend_pid()"))
        await _terminate_later(server, pid, 0)
        for _ in range(100):
            if conn.conn.is_closed():
                break
            await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(_run(conn, ["SELECT 1"]), 5)
        except ChannelLost as exc:
            state = exc.sqlstate
        else:
            raise AssertionError("a statement ran on a terminated connection")
        assert conn.is_closed()
        await conn.close()
        return state

    assert asyncio.run(main()) == "08006"


# --- the parser alone ----------------------------------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def is_closing(self) -> bool:
        return False


class _Owner:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.received.append(bytes(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def test_parser_handles_any_split_and_never_holds_rows() -> None:
    row = _message(b"D", struct.pack("!hI", 1, 200_000) + b"x" * 200_000)
    reply = (
        _message(b"T", b"\x00\x01a\x00" + b"\x00" * 18)
        + row * 3
        + _message(b"S", b"TimeZone\x00UTC\x00")
        + _message(b"C", b"SELECT 3\x00")
        + _message(b"Z", b"I")
    )
    error = _message(b"E", b"SERROR\x00C42P01\x00Mno such table\x00\x00") + _message(b"Z", b"I")

    async def main(piece: int) -> tuple[list[Any], list[bytes], int, _Owner]:
        transport, owner = _Transport(), _Owner()
        channel = WireChannel(transport, owner)
        transport.protocol = owner
        seen: list[Any] = []
        largest = 0
        queue = ["SELECT b"]

        def step(tag: bytes | None, state: str | None) -> bytes | None:
            seen.append((tag, state))
            return query_message(queue.pop()) if queue else None

        done = channel.run(query_message("SELECT a"), step)
        assert transport.get_protocol() is channel
        for stream in (reply, error):
            for start in range(0, len(stream), piece):
                channel.data_received(stream[start : start + piece])
                largest = max(largest, len(channel._pending))
        assert done.done()
        done.result()
        channel.release()
        assert transport.protocol is owner
        return seen, transport.written, largest, owner

    for piece in (1, 7, 4096, 1 << 20):
        seen, written, largest, owner = asyncio.run(main(piece))
        assert seen == [(b"SELECT 3", None), (None, "42P01")]
        assert written == [query_message("SELECT a"), query_message("SELECT b")]
        assert owner.received == [_message(b"S", b"TimeZone\x00UTC\x00")]
        assert largest < 64  # rows are skipped as they arrive, never buffered


def test_error_sqlstate_field() -> None:
    assert error_sqlstate(b"SERROR\x00VERROR\x00C23505\x00Mdup\x00\x00") == "23505"
    assert error_sqlstate(b"SERROR\x00Mno code\x00\x00") == "XX000"


def test_release_refused_mid_statement_and_lost_connection_reported() -> None:
    async def main() -> tuple[bool, str, bool]:
        transport, owner = _Transport(), _Owner()
        channel = WireChannel(transport, owner)
        done = channel.run(query_message("SELECT pg_sleep(1)"), lambda tag, state: None)
        with pytest.raises(RuntimeError):
            channel.release()
        channel.data_received(_message(b"E", b"SFATAL\x00C57P01\x00Mbye\x00\x00"))
        channel.connection_lost(None)
        try:
            await done
        except ChannelLost as exc:
            state = exc.sqlstate
        with pytest.raises(ChannelLost):
            channel.run(query_message("SELECT 1"), lambda tag, state: None)
        return channel.lost, state, owner.lost

    lost, state, owner_lost = asyncio.run(main())
    assert lost
    assert state == "57P01"
    assert owner_lost


def test_extended_statements_on_the_channel(server: Cluster, tmp_path: Path) -> None:
    """Named statements keep their names across a failure, a DEALLOCATE ALL and a
    new text under an old name, and are prepared again after a failed Parse; NULL
    and non-ASCII text parameters arrive intact."""
    stmts = [
        simple("s", 0, 0, "CREATE TEMP TABLE t (a int, b text)"),
        execute("s", 1, 10, "INSERT INTO t VALUES ($1, $2)", ["1", "é ✓"], name="ins"),
        execute("s", 2, 20, "INSERT INTO t VALUES ($1, $2)", ["oops", "x"], name="ins"),
        execute("s", 3, 30, "INSERT INTO t VALUES ($1, $2)", ["2", None], name="ins"),
        simple("s", 4, 40, "DEALLOCATE ALL"),
        execute("s", 5, 50, "INSERT INTO t VALUES ($1, $2)", ["3", "three"], name="ins"),
        execute("s", 6, 60, "SELECT count(*) FROM t WHERE b IS NULL OR b = $1", ["é ✓"], "ins"),
        execute("s", 7, 70, "SELECT a FROM t WHERE a > $1", ["0"]),
        execute("s", 8, 80, "SELECT 1/$1::int", ["0"]),
        simple("s", 9, 90, "SELECT count(*) FROM t"),
        # Parse fails (no table yet), then the same named statement is prepared again
        execute("s", 10, 100, "SELECT count(*) FROM later WHERE a > $1", ["0"], "later"),
        simple("s", 11, 110, "CREATE TEMP TABLE later (a int)"),
        execute("s", 12, 120, "SELECT count(*) FROM later WHERE a > $1", ["0"], "later"),
        execute("s", 13, 130, "SELECT count(*) FROM later WHERE a > $1", ["1"], "later"),
    ]
    workload = write_workload(tmp_path / "w.pgtw", stmts)
    results = replay(workload, server, tmp_path / "r.pgtr", max_speed=True)
    got = {index: (rows, state) for _, index, _, _, _, _, rows, state, _ in results.rows()}
    assert got == {
        0: (-1, None),
        1: (1, None),
        2: (-1, "22P02"),  # "oops" is not an int: the server's own error
        3: (1, None),
        4: (-1, None),
        5: (1, None),  # prepared again after DEALLOCATE ALL
        6: (1, None),  # a new text under the name "ins"
        7: (3, None),
        8: (-1, "22012"),
        9: (1, None),
        10: (-1, "42P01"),  # its Parse failed: nothing named "later" exists
        11: (-1, None),
        12: (1, None),  # prepared again (Parse), now that the table exists
        13: (1, None),  # and then only bound and executed
    }


@pytest.mark.slow  # CI's time budget: the default run keeps a sibling
def test_a_statement_with_forty_thousand_parameters(server: Cluster, tmp_path: Path) -> None:
    """Bulk statements can carry more than 32,767 parameters (the protocol's count
    is unsigned): they go through as the original client sent them."""
    count = 40_000
    values = ", ".join(f"(${i}::int)" for i in range(1, count + 1))
    sql = f"SELECT count(*) FROM (VALUES {values}) AS v (a)"
    workload = write_workload(
        tmp_path / "w.pgtw", [execute("s", 0, 0, sql, ["1"] * count, name="bulk")]
    )
    results = replay(workload, server, tmp_path / "r.pgtr", max_speed=True)
    assert [(rows, state) for *_, rows, state, _ in results.rows()] == [(1, None)]


def test_the_channel_keeps_the_transaction_status() -> None:
    """ReadyForQuery's status tells the replayer whether its session is inside a
    transaction block (a sync wait there may hold locks)."""

    async def main() -> list[int]:
        channel = WireChannel(_Transport(), _Owner())
        seen = [channel.transaction_status]
        states = iter([query_message("COMMIT"), None])

        def step(tag: bytes | None, state: str | None) -> bytes | None:
            seen.append(channel.transaction_status)
            return next(states)

        done = channel.run(query_message("BEGIN"), step)
        channel.data_received(_message(b"C", b"BEGIN\x00") + _message(b"Z", b"T"))
        channel.data_received(_message(b"C", b"COMMIT\x00") + _message(b"Z", b"I"))
        await done
        return seen

    assert asyncio.run(main()) == [IDLE, ord("T"), IDLE]
