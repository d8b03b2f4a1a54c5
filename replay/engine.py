"""The asyncio replayer: one task per original session, fed by one dispatcher.

The dispatcher streams the workload in offset order and hands each statement to
its session's queue shortly before it is due (``lookahead_s``). Queues are per
session, so one session stuck on a lock never stalls another; memory is bounded
by a global budget of dispatched-but-not-started statements rather than per
session, because a per-session bound can deadlock the replay (a session waiting
for a lock fills its queue while the statement that releases the lock sits
behind it in the stream). If the budget stays exhausted with no progress, the
dispatcher overdraws it rather than hang, and counts it.

Each session task opens its connection at the original connect time, runs its
statements in order at their intended times, records every outcome, and closes at
the original disconnect time. Failures are data: a statement error, a refused
connection, a connection lost or a restarted server is recorded with its
SQLSTATE and the replay goes on, reconnecting at most once per
``reconnect_interval_s`` for a session that lost its connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from capture.errors import UsageError, WorkloadFormatError
from capture.records import Session, StatementKind
from capture.workload import READ_ERRORS, Workload, loads_record, open_text, read_workload
from replay.connection import (
    ConnectSpec,
    ReplayConnection,
    TypeEntry,
    connect,
    rows_from_status,
)
from replay.conninfo import ConnInfo
from replay.protocol import ChannelLost
from replay.results import ResultsWriter
from replay.safety import READ_ONLY_SETTINGS
from replay.schedule import Schedule, session_worker
from replay.sqlstates import CLIENT_ERROR, CONNECT_FAILED, CONNECTION_LOST, NO_CONNECTION
from replay.sync import (
    DEFAULT_SYNC_TIMEOUT_S,
    CycleBreaker,
    Outcome,
    SyncMode,
    SyncTable,
    effective_mode,
    map_flags,
    shared_flags,
    sync_counts,
)


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay: target, timing, mappings, resource limits."""

    dsn: str
    schedule: Schedule = field(default_factory=Schedule)
    conninfo: ConnInfo | None = None
    """``dsn`` resolved once (replay.connection.resolve_target); None: at each connect."""
    map_user: Mapping[str, str] = field(default_factory=dict)
    map_database: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1
    lookahead_s: float = 1.0
    budget: int = 20_000
    reconnect_interval_s: float = 1.0
    connect_timeout_s: float = 10.0
    flush_interval_s: float = 0.25
    default_user: str | None = None
    default_database: str | None = None
    event_loop: str = "auto"
    """"auto" (uvloop when installed), "uvloop" or "asyncio"."""
    direct_simple: bool = True
    """Send statements on the wire directly (replay.protocol), simple and
    extended alike; False: through asyncpg's query paths (``--via-asyncpg``)."""
    sync: SyncMode = SyncMode.NONE
    """Which happens-before edges of the capture to keep (``--sync``)."""
    sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
    sync_in_blocks: bool = False
    """Also wait inside a transaction block. Off by default: a statement in a block may
    hold row locks, and waiting there for another session's commit closes a cycle
    whenever the target grants a lock in another order than the source did; the
    block's first statement (its BEGIN) waits for everything before it instead."""
    """How long one sync wait may last before the statement goes ahead anyway."""
    sync_flags: str | None = None
    """With several workers: the file mapped as their shared sync table
    (:func:`shared_sync` sets it)."""
    read_only: bool = False
    """``--read-only``: every connection starts with ``default_transaction_read_only=on``."""
    skip_fingerprints: frozenset[str] = frozenset()
    """Query classes not sent (``--read-only``: those that may write); counted."""
    rows_tied: tuple[str, ...] = ()
    """Relations the target ties to others (replay/tied.py): ``--sync rows`` keeps
    commit order when there are any."""

    def connect_spec(self, session: Session) -> ConnectSpec:
        user = session.user or self.default_user
        database = session.database or self.default_database
        if user is not None:
            user = self.map_user.get(user, user)
        if database is not None:
            database = self.map_database.get(database, database)
        return ConnectSpec(
            dsn=self.dsn,
            user=user,
            database=database,
            application=session.application,
            timeout_s=self.connect_timeout_s,
            conninfo=self.conninfo,
            settings=READ_ONLY_SETTINGS if self.read_only else {},
        )


@dataclass(slots=True)
class Progress:
    """Live counters of one worker, read by the progress display."""

    statements: int = 0
    errors: int = 0
    dispatched_offset_us: int = 0
    max_offset_us: int = 0
    """Largest capture offset of a statement replayed so far."""
    replayed_capture_us: int = 0
    """Capture time covered so far (gaps skipped by --jump-idle removed)."""
    last_lag_us: int = 0
    open_connections: int = 0
    done: bool = False

    def snapshot(self) -> dict[str, int | bool]:
        return {
            "statements": self.statements,
            "errors": self.errors,
            "replayed_capture_us": self.replayed_capture_us,
            "last_lag_us": self.last_lag_us,
            "open_connections": self.open_connections,
            "done": self.done,
        }


@dataclass(slots=True)
class Counters:
    """What happened besides statements: connections, skips, budget overdrafts."""

    connections_opened: int = 0
    connect_failures: Counter[str] = field(default_factory=Counter)
    connections_lost: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    read_only_skipped: Counter[str] = field(default_factory=Counter)
    """Statements ``--read-only`` did not send, per fingerprint."""
    login_failures: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """Failed connection attempts per (user, database, SQLSTATE, the server's message)."""
    login_failed_sessions: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """Sessions whose first connection failed so, per the same key."""
    sessions: int = 0
    budget_overdrafts: int = 0
    sync: str = SyncMode.NONE.value
    """The sync mode replayed (``none`` when the workload has no sync members)."""
    sync_requested: str = SyncMode.NONE.value
    rows_tied: tuple[str, ...] = ()
    """Why ``--sync rows`` kept commit order: the relations the target ties."""
    sync_waits: int = 0
    """Statements that waited for another session's commit."""
    sync_wait_us: int = 0
    sync_timeouts: Counter[str] = field(default_factory=Counter)
    """Waits that reached ``sync_timeout_s``, per fingerprint of the waiting statement."""
    sync_released: int = 0
    """Waits ended early because they closed a cycle with a row lock."""
    cycles_broken: int = 0
    connect_sync_waits: int = 0
    """Connections that waited for earlier disconnections or commits."""
    connect_sync_wait_us: int = 0
    connect_sync_timeouts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "sync_requested": self.sync_requested,
            "rows_tied": list(self.rows_tied),
            "sync_waits": self.sync_waits,
            "sync_wait_us": self.sync_wait_us,
            "sync_timeouts": dict(self.sync_timeouts),
            "sync_released": self.sync_released,
            "cycles_broken": self.cycles_broken,
            "connect_sync_waits": self.connect_sync_waits,
            "connect_sync_wait_us": self.connect_sync_wait_us,
            "connect_sync_timeouts": self.connect_sync_timeouts,
            "connections_opened": self.connections_opened,
            "connect_failures": dict(self.connect_failures),
            "connections_lost": dict(self.connections_lost),
            "reconnects": self.reconnects,
            "skipped": dict(self.skipped),
            "read_only_skipped": dict(self.read_only_skipped),
            "login_failures": [
                {
                    "user": user,
                    "database": database,
                    "sqlstate": state,
                    "message": message,
                    "attempts": attempts,
                    "sessions": self.login_failed_sessions[(user, database, state, message)],
                }
                for (user, database, state, message), attempts in self.login_failures.items()
            ],
            "sessions": self.sessions,
            "budget_overdrafts": self.budget_overdrafts,
        }


class Dispatched:
    """One statement handed to its session: what to send, and what it waits for."""

    __slots__ = (
        "after",
        "after_objects",
        "commit",
        "fingerprint",
        "kind",
        "name",
        "offset_us",
        "params",
        "seq",
        "sql",
        "sqlstate",
    )

    def __init__(
        self,
        seq: int,
        offset_us: int,
        kind: str,
        sql: str,
        fingerprint: str,
        params: Sequence[str | None] | None,
        name: str | None,
        sqlstate: str | None,
        commit: int = 0,
        after: int = 0,
        after_objects: int = 0,
    ) -> None:
        self.seq = seq
        self.offset_us = offset_us
        self.kind = kind
        self.sql = sql
        self.fingerprint = fingerprint
        self.params = params
        self.name = name
        self.sqlstate = sqlstate
        """The original outcome (None: it succeeded)."""
        self.commit = commit
        """Its completion is this commit of the capture's clock (0: none)."""
        self.after = after
        """Commits 1..after completed before it in the capture (``--sync commit``)."""
        self.after_objects = after_objects
        """The same, only those that wrote what it touches: by relation (``--sync
        objects``, the workload's ``after_objects``) or by row (``--sync rows``, its
        ``after_rows``), as the dispatcher chose."""


_END: Dispatched | None = None
_NARROW = frozenset({SyncMode.OBJECTS.value, SyncMode.ROWS.value})
"""Modes that wait for ``Dispatched.after_objects`` (and a connection for its global
commits only) instead of every commit."""


_SESSION_RE = re.compile(r'\{"type":"statement","session":"((?:[^"\\]|\\.)*)"')


def _statement_lines(workload: Workload) -> Iterator[str]:
    """The raw JSON lines of the statements (the file layout is in capture.workload)."""
    skip = workload.preamble_size
    try:
        with open_text(workload.path) as fh:
            yield from itertools.islice(fh, skip, None)
    except READ_ERRORS as exc:
        raise WorkloadFormatError(
            f"{workload.path}: the statements are not readable ({exc})",
            hint="the file is truncated or damaged; capture it again",
        ) from exc


_loads = loads_record


def _sqlstate_of(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and state:
        return state
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        return CONNECT_FAILED
    return CLIENT_ERROR


class _Clock:
    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns

    def now_us(self) -> int:
        return (time.monotonic_ns() - self.start_ns) // 1000

    async def sleep_until(self, t_us: int) -> None:
        # Loop: event loop timers have millisecond granularity and may fire early.
        delay = t_us - self.now_us()
        while delay > 0:
            await asyncio.sleep(delay / 1e6)
            delay = t_us - self.now_us()


class _Inbox:
    """A session's statements waiting to start: an unbounded FIFO with one reader."""

    __slots__ = ("drop", "items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[Dispatched | None] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.drop: Callable[[Dispatched | None], None] | None = None
        """Set once the reader has ended: what becomes of statements put after that."""

    def put(self, item: Dispatched | None) -> None:
        if self.drop is not None:
            self.drop(item)
            return
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Dispatched | None:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class _Budget:
    """Counts dispatched statements not yet started; the dispatcher waits on it.

    Once full, the dispatcher sleeps until the count is back under three quarters
    of the limit, so it wakes once per few thousand statements, not per statement.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.resume_at = max(1, limit * 3 // 4)
        self.pending = 0
        self.started = 0
        self._room = asyncio.Event()
        self._room.set()

    def take(self) -> None:
        self.pending += 1
        if self.pending >= self.limit:
            self._room.clear()

    def give(self) -> None:
        self.pending -= 1
        self.started += 1
        if self.pending <= self.resume_at:
            self._room.set()

    async def wait(self, counters: Counters) -> None:
        while self.pending >= self.limit:
            before = self.started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 1.0)
            if self.pending >= self.limit and self.started == before:
                counters.budget_overdrafts += 1  # nothing moves: overdraw, never hang
                return


_COPY = StatementKind.COPY_FROM_STDIN.value
_EXECUTE = StatementKind.EXECUTE.value


class _Sender(Protocol):
    """Sends a session's statement in flight (:attr:`_SessionRunner.item`) on ``conn``
    and records its outcome with :meth:`_SessionRunner.complete`; a sender may go on
    with the session's next statements while they are due. Raises when the
    connection fails, the statement then in flight being the runner's ``item``."""

    async def send(self, runner: _SessionRunner, conn: ReplayConnection) -> None: ...


class _WireSender:
    """Statements on :mod:`replay.protocol`'s channel: the channel calls the runner's
    :meth:`~_SessionRunner.step` at each completion, which records the statement
    and hands over the next one if it is due, without a coroutine switch."""

    __slots__ = ()

    async def send(self, runner: _SessionRunner, conn: ReplayConnection) -> None:
        channel = conn.channel
        assert channel is not None
        item = runner.item
        message = conn.message(item.kind == _EXECUTE, item.sql, item.params, item.name)
        runner.start = (time.monotonic_ns() - runner.start_ns) // 1000
        try:
            await channel.run(message, runner.step)
        except asyncio.CancelledError:
            channel.abandon()
            raise


class _AsyncpgSender:
    """Statements through asyncpg's query paths (``--via-asyncpg``), one per call: the
    oracle the wire channel is tested against."""

    __slots__ = ()

    async def send(self, runner: _SessionRunner, conn: ReplayConnection) -> None:
        item = runner.item
        runner.start = (time.monotonic_ns() - runner.start_ns) // 1000
        if item.kind == _EXECUTE:
            rows = await conn.execute(item.sql, item.params or (), item.name)
        else:
            rows = rows_from_status(await conn.query(item.sql, None))
        runner.complete((time.monotonic_ns() - runner.start_ns) // 1000, rows, None)


_WIRE = _WireSender()
_ASYNCPG = _AsyncpgSender()


class _SessionRunner:
    """Replays one original session: connect, statements in order at their intended
    times (after the commits they wait for), record every outcome, disconnect.

    The statement in flight is :attr:`item`, with its intended start, actual start
    and sync wait; :meth:`complete` records it. Every commit this session owes the
    sync table is marked done however its statement ended, also when the task is
    cancelled or fails (``finally`` in :meth:`run`).
    """

    __slots__ = (
        "budget",
        "conn",
        "counters",
        "intended",
        "item",
        "last_attempt_us",
        "narrow",
        "pending",
        "pid",
        "progress",
        "queue",
        "replayer",
        "sender",
        "session",
        "session_ref",
        "skips",
        "spec",
        "start",
        "start_ns",
        "sync_wait",
        "table",
        "timed",
        "wait_in_blocks",
        "writer",
    )

    def __init__(self, replayer: Replayer, session: Session, queue: _Inbox) -> None:
        self.replayer = replayer
        self.session = session
        self.queue = queue
        self.pending = queue.items
        self.spec = replayer.options.connect_spec(session)
        self.timed = not replayer.schedule.max_speed
        self.start_ns = replayer.clock.start_ns
        self.budget = replayer.budget
        self.counters = replayer.counters
        self.progress = replayer.progress
        self.writer = replayer.writer
        self.session_ref = replayer.writer.intern(session.id)
        self.table = replayer.table
        self.narrow = replayer.counters.sync in _NARROW
        self.wait_in_blocks = replayer.options.sync_in_blocks
        self.skips = replayer.options.skip_fingerprints
        self.conn: ReplayConnection | None = None
        self.sender: _Sender = _WIRE
        self.pid: int | None = None
        """The backend replaying this session now (for the cycle breaker)."""
        self.last_attempt_us: int | None = None
        self.item: Dispatched = _NOTHING
        self.intended = self.start = self.sync_wait = 0

    # --- the session's life ------------------------------------------------------

    async def run(self) -> None:
        replayer, session = self.replayer, self.session
        clock, schedule = replayer.clock, replayer.schedule
        try:
            if session.connect_us is not None:
                if self.timed:
                    await clock.sleep_until(schedule.intended_us(session.connect_us))
                await self._first_connect()
            while True:
                item = await self._next()
                if item is None:
                    break
                if item.kind == _COPY:
                    self.counters.skipped[item.kind] += 1
                    self._commit_done(item)
                    continue
                if item.fingerprint in self.skips:
                    self.counters.read_only_skipped[item.fingerprint] += 1
                    self._commit_done(item)
                    continue
                await self._ready(item)
                await self._send(item)
            if self.timed and session.disconnect_us is not None:
                await clock.sleep_until(schedule.intended_us(session.disconnect_us))
        finally:
            await self._end()

    async def _end(self) -> None:
        """Close the connection and settle the session's debts to the sync table."""
        table = self.table
        if table is not None:
            self._commit_done(self.item)  # cancelled in flight; harmless when recorded
            self.queue.drop = self._drop
            while self.pending:
                self._drop(self.pending.popleft())
        conn, self.conn = self.conn, None
        try:
            if conn is not None:
                self.progress.open_connections -= 1
                await conn.close()
        finally:
            if table is not None:
                table.disconnect_done(getattr(self.session, "disconnect_order", 0) or 0)

    def _drop(self, item: Dispatched | None) -> None:
        """A statement the session will never send (it has ended)."""
        if item is not None:
            self.budget.give()
            self._commit_done(item)

    async def _next(self) -> Dispatched | None:
        pending = self.pending
        item = pending.popleft() if pending else await self.queue.get()
        if item is not None:
            self.budget.give()
        return item

    async def _ready(self, item: Dispatched) -> None:
        """Wait until ``item`` is due and the commits it came after are done."""
        if self.timed:
            intended = self.replayer.schedule.intended_us(item.offset_us)
            if intended > (time.monotonic_ns() - self.start_ns) // 1000:
                await self.replayer.clock.sleep_until(intended)
        else:
            intended = 0
        self.intended = intended
        self.sync_wait = 0
        table = self.table
        if table is not None and (self.wait_in_blocks or not self.in_transaction):
            number = item.after_objects if self.narrow else item.after
            if number and not table.commit_reached(number):
                self.sync_wait = await self._sync_wait(table, number, item.fingerprint)

    async def _sync_wait(self, table: SyncTable, number: int, fingerprint: str) -> int:
        began = time.monotonic_ns()
        outcome = await table.wait_commits(number, self.replayer.options.sync_timeout_s, self)
        waited = (time.monotonic_ns() - began) // 1000
        counters = self.counters
        counters.sync_waits += 1
        counters.sync_wait_us += waited
        if outcome is Outcome.TIMEOUT:
            counters.sync_timeouts[fingerprint] += 1
        elif outcome is Outcome.RELEASED:
            counters.sync_released += 1
        return waited

    # --- connections ---------------------------------------------------------------

    async def _first_connect(self) -> None:
        """Connect once the disconnections and commits the capture shows before this
        connection are done."""
        table, session = self.table, self.session
        if table is not None:
            timeout = self.replayer.options.sync_timeout_s
            began = time.monotonic_ns()
            outcomes = []
            disconnects = getattr(session, "after_disconnects", 0) or 0
            if disconnects:
                outcomes.append(await table.wait_disconnects(disconnects, timeout, self))
            name = "connect_after_objects" if self.narrow else "connect_after"
            commits = getattr(session, name, 0) or 0
            if commits and not table.commit_reached(commits):
                outcomes.append(await table.wait_commits(commits, timeout, self))
            waited = (time.monotonic_ns() - began) // 1000
            if waited > 100 or outcomes:
                self.counters.connect_sync_waits += 1
                self.counters.connect_sync_wait_us += waited
                self.counters.connect_sync_timeouts += outcomes.count(Outcome.TIMEOUT)
        await self._connect()

    async def _connect(self) -> None:
        first = self.last_attempt_us is None
        self.last_attempt_us = self.replayer.clock.now_us()
        try:
            conn = await ReplayConnection.open(
                self.spec, self.replayer.types, direct_simple=self.replayer.options.direct_simple
            )
        except Exception as exc:  # any failure to connect is a recorded outcome
            self._connect_failed(exc, first)
            return
        self.counters.connections_opened += 1
        self.progress.open_connections += 1
        self.conn = conn
        self.sender = _WIRE if conn.channel is not None else _ASYNCPG
        self.pid = conn.conn.get_server_pid()

    def _connect_failed(self, exc: Exception, first: bool) -> None:
        """Count a refused login by SQLSTATE, and by login and the server's message
        (the session too, when this was its first attempt)."""
        state = _sqlstate_of(exc)
        counters = self.counters
        counters.connect_failures[state] += 1
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        key = (self.spec.user or "", self.spec.database or "", state, message)
        counters.login_failures[key] += 1
        if first:
            counters.login_failed_sessions[key] += 1

    async def _send(self, item: Dispatched) -> None:
        if self.conn is None:
            last = self.last_attempt_us
            if last is None:
                await self._first_connect()
            elif self.replayer.clock.now_us() - last >= self.replayer.reconnect_us:
                self.counters.reconnects += 1
                await self._connect()
        conn = self.conn
        self.item = item
        if conn is None:
            now = (time.monotonic_ns() - self.start_ns) // 1000
            self.start = now
            self.complete(now, -1, NO_CONNECTION)
            return
        try:
            await self.sender.send(self, conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(conn, exc)

    def _failed(self, conn: ReplayConnection, exc: Exception) -> None:
        """The statement in flight failed on the client side or lost its connection."""
        state = exc.sqlstate if isinstance(exc, ChannelLost) else _sqlstate_of(exc)
        if conn.is_closed():
            if state in (CLIENT_ERROR, NO_CONNECTION):
                # NO_CONNECTION: asyncpg's ConnectionDoesNotExistError, but this
                # statement was sent; 08003 means "not sent" in a results file
                state = CONNECTION_LOST
            self.counters.connections_lost[state] += 1
            self.progress.open_connections -= 1
            conn.conn.terminate()
            self.conn = None
            self.pid = None
        self.complete((time.monotonic_ns() - self.start_ns) // 1000, -1, state)

    # --- outcomes --------------------------------------------------------------------

    def complete(self, end: int, rows: int, state: str | None) -> None:
        """Record the statement in flight, ended at ``end`` (µs after the start)."""
        item = self.item
        writer = self.writer
        intern = writer.intern
        start = self.start
        intended = self.intended
        writer.add_interned(
            (
                self.session_ref,
                item.seq,
                writer.ids.get(item.fingerprint) or intern(item.fingerprint),
                intended,
                start,
                end - start,
                rows,
                0 if state is None else intern(state),
                0 if item.sqlstate is None else intern(item.sqlstate),
                self.sync_wait,
            )
        )
        progress = self.progress
        if state is not None:
            progress.errors += 1
        progress.statements += 1
        progress.last_lag_us = start - intended
        if item.offset_us > progress.max_offset_us:
            progress.max_offset_us = item.offset_us
        if item.commit and self.table is not None:
            self.table.commit_done(item.commit)

    def _commit_done(self, item: Dispatched) -> None:
        if item.commit and self.table is not None:
            self.table.commit_done(item.commit)

    def step(self, tag: bytes | None, state: str | None) -> bytes | None:
        """The wire channel's completion callback: record the statement in flight;
        return the next one's messages when it is due and its sync satisfied, else
        None (the session's coroutine then waits for it)."""
        end = (time.monotonic_ns() - self.start_ns) // 1000
        conn = self.conn
        assert conn is not None
        if state is not None and self.item.kind == _EXECUTE:
            conn.failed(self.item.name)
        self.complete(end, -1 if state is not None else rows_from_status(tag), state)
        pending = self.pending
        if not pending:
            return None
        item = pending[0]
        if item is None or item.kind == _COPY or item.fingerprint in self.skips:
            return None
        intended = self.replayer.schedule.intended_us(item.offset_us) if self.timed else 0
        if intended > end:
            return None  # not due yet: the session sleeps first
        table = self.table
        if table is not None and (self.wait_in_blocks or not conn.in_transaction()):
            number = item.after_objects if self.narrow else item.after
            if number and not table.commit_reached(number):
                return None  # the session's coroutine waits for the commit
        pending.popleft()
        self.budget.give()
        self.item = item
        self.intended = intended
        self.sync_wait = 0
        message = conn.message(item.kind == _EXECUTE, item.sql, item.params, item.name)
        self.start = (time.monotonic_ns() - self.start_ns) // 1000
        return message

    @property
    def in_transaction(self) -> bool:
        """Inside a transaction block on the target: a wait may hold locks (a cycle)."""
        conn = self.conn
        return conn is not None and conn.in_transaction()

    def owns(self, commit: int) -> bool:
        """This session's statement in flight or one waiting to start is ``commit``."""
        if self.item.commit == commit:
            return True
        return any(item is not None and item.commit == commit for item in self.pending)


_NOTHING = Dispatched(-1, 0, "", "", "", None, None, None)
"""The statement "in flight" of a session that has sent none yet."""


class Replayer:
    """Replays the sessions of one worker; :meth:`run` until the workload is done."""

    def __init__(
        self,
        workload: Workload,
        options: ReplayOptions,
        writer: ResultsWriter,
        *,
        types: Sequence[TypeEntry],
        start_ns: int,
        worker: int = 0,
    ) -> None:
        self.workload = workload
        self.options = options
        self.schedule = options.schedule
        self.writer = writer
        self.types = tuple(types)
        self.clock = _Clock(start_ns)
        self.worker = worker
        self.progress = Progress()
        mode = effective_mode(options.sync, workload.header, options.rows_tied)
        self.counters = Counters(
            sync=mode.value, sync_requested=options.sync.value, rows_tied=options.rows_tied
        )
        self.budget = _Budget(options.budget)
        self.reconnect_us = int(options.reconnect_interval_s * 1e6)
        self.table = _sync_table(workload, options) if mode is not SyncMode.NONE else None
        self._queues: dict[str, _Inbox] = {}
        self._remaining: dict[str, int] = {}
        self._ended: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: dict[str, _SessionRunner] = {}

    # --- the statement stream ----------------------------------------------------

    def _mine(self) -> Iterator[dict[str, Any]]:
        """This worker's statements, decoded, in offset order.

        With several workers only this worker's lines are decoded: the session id
        is read from the raw line first (statement records start with the type,
        then the session).
        """
        workers = self.options.workers
        loads = _loads
        if workers <= 1:
            yield from map(loads, _statement_lines(self.workload))
            return
        mine: dict[str, bool] = {}
        for line in _statement_lines(self.workload):
            match = _SESSION_RE.match(line) if workers > 1 else None
            if match is not None:
                sid = match.group(1)
                ours = mine.get(sid)
                if ours is None:
                    ours = session_worker(json.loads(f'"{sid}"'), workers) == self.worker
                    mine[sid] = ours
                if not ours:
                    continue
            obj = loads(line)
            if (
                workers > 1
                and match is None
                and session_worker(obj["session"], workers) != self.worker
            ):
                continue
            yield obj

    def _start_session(self, session_id: str) -> _Inbox:
        queue = _Inbox()
        self._queues[session_id] = queue
        session = self.workload.sessions.get(session_id) or Session(
            id=session_id, user=None, database=None
        )
        self._remaining[session_id] = session.statements
        self.counters.sessions += 1
        runner = self._runners[session_id] = _SessionRunner(self, session, queue)
        if session_id in self.workload.sessions and session.statements == 0:
            # a connection that ran nothing (pgbench's first): it ends now, not when
            # the whole workload is dispatched; later connections wait for it
            queue.put(_END)
            self._ended.add(session_id)
        task = asyncio.create_task(runner.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queue

    async def _open_due(self, connects: list[tuple[int, str]], index: int, offset: int) -> int:
        """Start the sessions that connect (in the capture) up to ``offset``, at their
        time less the lookahead; returns the index of the next one."""
        timed = not self.schedule.max_speed
        lookahead_us = int(self.options.lookahead_s * 1e6)
        while index < len(connects) and connects[index][0] <= offset:
            connect_us, sid = connects[index]
            if timed:
                await self.clock.sleep_until(self.schedule.intended_us(connect_us) - lookahead_us)
            if sid not in self._queues:
                self._start_session(sid)
            index += 1
        return index

    async def _dispatch(self) -> None:
        schedule = self.schedule
        timed = not schedule.max_speed
        lookahead_us = int(self.options.lookahead_s * 1e6)
        workers = self.options.workers
        connects = sorted(
            (s.connect_us, s.id)
            for s in self.workload.sessions.values()
            if s.connect_us is not None and session_worker(s.id, workers) == self.worker
        )
        next_connect = 0
        next_connect_us = connects[0][0] if connects else None
        budget = self.budget
        limit = budget.limit
        room = budget._room
        queues = self._queues
        remaining = self._remaining
        progress = self.progress
        narrow = "after_rows" if self.counters.sync == SyncMode.ROWS.value else "after_objects"
        for n, obj in enumerate(self._mine(), start=1):
            offset = obj["offset_us"]
            if next_connect_us is not None and next_connect_us <= offset:
                next_connect = await self._open_due(connects, next_connect, offset)
                next_connect_us = (
                    connects[next_connect][0] if next_connect < len(connects) else None
                )
            if timed:
                due = schedule.intended_us(offset) - lookahead_us
                if due > self.clock.now_us():
                    await self.clock.sleep_until(due)
            if budget.pending >= limit:
                await budget.wait(self.counters)
            if not n & 511:
                await asyncio.sleep(0)
            sid = obj["session"]
            queue = queues.get(sid) or self._start_session(sid)
            budget.pending += 1  # budget.take(), inlined
            if budget.pending >= limit:
                room.clear()
            get = obj.get
            queue.put(
                Dispatched(
                    obj["seq"],
                    offset,
                    obj["kind"],
                    obj["sql"],
                    obj["fingerprint"],
                    get("params"),
                    get("name"),
                    get("sqlstate"),
                    get("commit", 0),
                    get("after", 0),
                    get(narrow, 0),
                )
            )
            progress.dispatched_offset_us = offset
            left = remaining.get(sid, 0) - 1
            remaining[sid] = left
            if left == 0:
                queue.put(_END)
                self._ended.add(sid)
        if connects:
            await self._open_due(connects, next_connect, connects[-1][0])
        for sid, queue in self._queues.items():
            if sid not in self._ended:
                queue.put(_END)
                self._ended.add(sid)

    # --- the whole run -------------------------------------------------------------

    async def _flusher(self, on_progress: Callable[[Progress], None] | None) -> None:
        while True:
            await asyncio.sleep(self.options.flush_interval_s)
            self.writer.flush()
            self._update_replayed()
            if on_progress is not None:
                on_progress(self.progress)

    def _update_replayed(self) -> None:
        progress = self.progress
        progress.replayed_capture_us = self.schedule.capture_time(progress.max_offset_us)

    def _owner_of(self, commit: int) -> _SessionRunner | None:
        """The session that replays ``commit``, if this worker has dispatched it."""
        for runner in self._runners.values():
            if runner.owns(commit):
                return runner
        return None

    async def _monitor(self) -> asyncpg.Connection:
        """The cycle breaker's own connection to the target."""
        options = self.options
        return await connect(
            options.conninfo or options.dsn,
            user=options.default_user,
            database=options.default_database,
            timeout_s=options.connect_timeout_s,
            fallback_application="pgtraffic sync monitor",
        )

    async def run(self, on_progress: Callable[[Progress], None] | None = None) -> Counters:
        flusher = asyncio.create_task(self._flusher(on_progress))
        breaker: CycleBreaker | None = None
        watcher: asyncio.Task[None] | None = None
        if self.table is not None:
            breaker = CycleBreaker(self.table, self._monitor, self._owner_of)
            watcher = asyncio.create_task(breaker.run())
        try:
            await self._dispatch()
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            flusher.cancel()
            if watcher is not None and breaker is not None:
                watcher.cancel()
                with contextlib.suppress(BaseException):
                    await watcher
                self.counters.cycles_broken = breaker.cycles_broken
            if self.table is not None:
                self.table.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(BaseException):
                await flusher
            self.progress.done = True
            self.writer.flush()
            self._update_replayed()
            if on_progress is not None:
                on_progress(self.progress)
        return self.counters


_COMMIT_RE = re.compile(r'"commit":(\d+)')


def sync_totals(workload: Workload) -> tuple[int, int] | None:
    """(commits K, disconnections J) of a workload with sync members, else None.

    From the header; a header without the totals (a hand-made file) has them
    found: J from the session records, K from the statements (one pass).
    """
    counts = sync_counts(workload.header)
    if counts is None:
        return None
    totals = getattr(workload.header, "sync", None) or {}
    commits = counts[0]
    if "commits" not in totals:
        found = (_COMMIT_RE.search(line) for line in _statement_lines(workload))
        commits = max((int(m.group(1)) for m in found if m is not None), default=0)
    orders = (getattr(s, "disconnect_order", 0) or 0 for s in workload.sessions.values())
    return commits, max(counts[1], *orders, 0)


def _sync_table(workload: Workload, options: ReplayOptions) -> SyncTable:
    """This worker's view of the replay's sync table (shared with the other workers
    through ``options.sync_flags``). Disconnection numbers no session of the file
    will mark (absent, or sessions that never run) are done from the start."""
    counts = sync_totals(workload)
    commits, disconnects = counts if counts is not None else (0, 0)
    flags = None
    if options.sync_flags is not None:
        flags = map_flags(options.sync_flags, commits, disconnects)
    table = SyncTable(commits, disconnects, flags, shared=flags is not None)
    owed = {
        getattr(s, "disconnect_order", 0) or 0
        for s in workload.sessions.values()
        if s.connect_us is not None or s.statements
    }
    for number in range(1, disconnects + 1):
        if number not in owed:
            table.disconnect_done(number)
    return table


@contextlib.contextmanager
def shared_sync(workload: Workload, options: ReplayOptions) -> Iterator[ReplayOptions]:
    """The options for the workers of a multi-process replay: with a sync mode, they
    name one shared sync table, which exists until the context ends."""
    counts = sync_totals(workload)
    mode = effective_mode(options.sync, workload.header)
    if options.workers <= 1 or mode is SyncMode.NONE or counts is None:
        yield options
        return
    with shared_flags(*counts) as path:
        yield replace(options, sync_flags=path)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to replay on: uvloop when installed (about twice the throughput
    per core), else asyncio's own. ``choice`` is "auto", "uvloop" or "asyncio"."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError(
                "uvloop is not installed", hint="pip install uvloop, or use --loop asyncio"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_worker(
    workload_path: Path,
    results_path: Path,
    options: ReplayOptions,
    *,
    types: Sequence[TypeEntry],
    start_ns: int,
    worker: int = 0,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Replay this worker's share of the sessions; returns its summary (also written)."""
    workload = read_workload(workload_path)
    writer = ResultsWriter(results_path, worker=worker)
    replayer = Replayer(workload, options, writer, types=types, start_ns=start_ns, worker=worker)
    completed = False
    # The hot path allocates a few short-lived objects per statement: collect the
    # youngest generation less often, and keep what exists now (the workload's
    # sessions and classes, the imports) out of every collection.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 20_000), *thresholds[1:])
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(options.event_loop)) as runner:
            runner.run(replayer.run(on_progress))
        completed = True
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        summary = {
            "worker": worker,
            "completed": completed,
            "statements": replayer.progress.statements,
            "errors": replayer.progress.errors,
            **replayer.counters.to_json(),
        }
        writer.write_summary(summary)
        writer.close()
    return json.loads(json.dumps(summary))  # type: ignore[no-any-return]
