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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.errors import UsageError, WorkloadFormatError
from capture.records import Session, StatementKind
from capture.workload import READ_ERRORS, Workload, loads_record, open_text, read_workload
from replay.connection import ConnectSpec, ReplayConnection, TypeEntry, rows_from_status
from replay.protocol import ChannelLost
from replay.results import ResultsWriter
from replay.schedule import Schedule, session_worker

# Pseudo-SQLSTATEs for failures the server did not report itself (class 08 is
# PostgreSQL's own "connection exception" class).
CONNECT_FAILED = "08001"
"""Could not connect (refused, unreachable, timed out)."""
NO_CONNECTION = "08003"
"""Not sent: the session had no connection (lost earlier, reconnect not yet due)."""
CONNECTION_LOST = "08006"
"""The connection broke while the statement ran."""
CLIENT_ERROR = "PT001"
"""pgtraffic could not send the statement (a client-side failure, not the server's)."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay: target, timing, mappings, resource limits."""

    dsn: str
    schedule: Schedule = field(default_factory=Schedule)
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
    sessions: int = 0
    budget_overdrafts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "connections_opened": self.connections_opened,
            "connect_failures": dict(self.connect_failures),
            "connections_lost": dict(self.connections_lost),
            "reconnects": self.reconnects,
            "skipped": dict(self.skipped),
            "sessions": self.sessions,
            "budget_overdrafts": self.budget_overdrafts,
        }


# A dispatched statement: (seq, offset_us, kind, sql, fingerprint, params, name, sqlstate)
_Item = tuple[int, int, str, str, str, Any, Any, Any]
_END: _Item | None = None


_SESSION_RE = re.compile(r'\{"type":"statement","session":"((?:[^"\\]|\\.)*)"')


def _statement_lines(workload: Workload) -> Iterator[str]:
    """The raw JSON lines of the statements (the file layout is in capture.workload)."""
    skip = 1 + len(workload.classes) + len(workload.sessions)
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

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[_Item | None] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: _Item | None) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> _Item | None:
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
        self.counters = Counters()
        self._budget = _Budget(options.budget)
        self._queues: dict[str, _Inbox] = {}
        self._remaining: dict[str, int] = {}
        self._ended: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

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
        task = asyncio.create_task(self._run_session(session, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queue

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
        budget = self._budget
        limit = budget.limit
        room = budget._room
        queues = self._queues
        remaining = self._remaining
        progress = self.progress
        for n, obj in enumerate(self._mine(), start=1):
            offset = obj["offset_us"]
            while next_connect_us is not None and next_connect_us <= offset:
                connect_us, sid = connects[next_connect]
                if timed:
                    await self.clock.sleep_until(schedule.intended_us(connect_us) - lookahead_us)
                if sid not in queues:
                    self._start_session(sid)
                next_connect += 1
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
            queue.put(
                (
                    obj["seq"],
                    offset,
                    obj["kind"],
                    obj["sql"],
                    obj["fingerprint"],
                    obj.get("params"),
                    obj.get("name"),
                    obj.get("sqlstate"),
                )
            )
            progress.dispatched_offset_us = offset
            left = remaining.get(sid, 0) - 1
            remaining[sid] = left
            if left == 0:
                queue.put(_END)
                self._ended.add(sid)
        for connect_us, sid in connects[next_connect:]:
            if timed:
                await self.clock.sleep_until(schedule.intended_us(connect_us) - lookahead_us)
            if sid not in self._queues:
                self._start_session(sid)
        for sid, queue in self._queues.items():
            if sid not in self._ended:
                queue.put(_END)
                self._ended.add(sid)

    # --- one session ---------------------------------------------------------------

    async def _connect(self, spec: ConnectSpec) -> ReplayConnection | None:
        try:
            conn = await ReplayConnection.open(
                spec, self.types, direct_simple=self.options.direct_simple
            )
        except Exception as exc:  # any failure to connect is a recorded outcome
            self.counters.connect_failures[_sqlstate_of(exc)] += 1
            return None
        self.counters.connections_opened += 1
        self.progress.open_connections += 1
        return conn

    async def _close(self, conn: ReplayConnection) -> None:
        self.progress.open_connections -= 1
        await conn.close()

    async def _run_session(self, session: Session, queue: _Inbox) -> None:
        schedule, clock, writer = self.schedule, self.clock, self.writer
        timed = not schedule.max_speed
        spec = self.options.connect_spec(session)
        reconnect_us = int(self.options.reconnect_interval_s * 1e6)
        conn: ReplayConnection | None = None
        last_attempt_us: int | None = None
        progress = self.progress
        counters = self.counters
        if session.connect_us is not None:
            if timed:
                await clock.sleep_until(schedule.intended_us(session.connect_us))
            last_attempt_us = clock.now_us()
            conn = await self._connect(spec)
        mono = time.monotonic_ns
        start_ns = clock.start_ns
        intended_us = schedule.intended_us
        budget = self._budget
        resume_at = budget.resume_at
        room_set = budget._room.set
        # Records go in with their strings already interned: the session's id once,
        # fingerprints and SQLSTATEs through the writer's table (a dict lookup).
        add = writer.add_interned
        intern = writer.intern
        ids = writer.ids
        session_ref = intern(session.id)
        pending = queue.items
        copy_kind = StatementKind.COPY_FROM_STDIN.value
        execute_kind = StatementKind.EXECUTE.value

        def record(
            item: _Item, intended: int, start: int, end: int, rows: int, state: str | None
        ) -> None:
            seq, offset, _, _, fingerprint, _, _, original = item
            add(
                (
                    session_ref,
                    seq,
                    ids.get(fingerprint) or intern(fingerprint),
                    intended,
                    start,
                    end - start,
                    rows,
                    0 if state is None else intern(state),
                    0 if original is None else intern(original),
                )
            )
            if state is not None:
                progress.errors += 1
            progress.statements += 1
            progress.last_lag_us = start - intended
            if offset > progress.max_offset_us:
                progress.max_offset_us = offset

        # The statement in flight on the direct channel: (item, intended start,
        # actual start, connection). The channel's step callback records it when
        # it completes and starts the session's next statement if it is due.
        flight: list[Any] = [None, 0, 0, None]

        def step(tag: bytes | None, state: str | None) -> bytes | None:
            end = (mono() - start_ns) // 1000
            done: _Item = flight[0]
            on: ReplayConnection = flight[3]
            if state is not None and done[2] == execute_kind:
                on.failed(done[6])
            record(
                done,
                flight[1],
                flight[2],
                end,
                -1 if state is not None else rows_from_status(tag),
                state,
            )
            if not pending:
                return None
            item = pending[0]
            if item is None or item[2] == copy_kind:
                return None
            intended = intended_us(item[1]) if timed else 0
            if intended > end:
                return None  # not due yet: the session sleeps first
            pending.popleft()
            budget.pending -= 1  # budget.give(), inlined
            budget.started += 1
            if budget.pending <= resume_at:
                room_set()
            flight[0], flight[1] = item, intended
            message = on.message(item[2] == execute_kind, item[3], item[5], item[6])
            flight[2] = (mono() - start_ns) // 1000
            return message

        try:
            while True:
                item = pending.popleft() if pending else await queue.get()
                if item is None:
                    break
                budget.pending -= 1  # budget.give(), inlined
                budget.started += 1
                if budget.pending <= resume_at:
                    room_set()
                kind = item[2]
                if kind == copy_kind:
                    counters.skipped[kind] += 1
                    continue
                if timed:
                    intended = intended_us(item[1])
                    if intended > (mono() - start_ns) // 1000:
                        await clock.sleep_until(intended)
                else:
                    intended = 0
                if conn is None and (
                    last_attempt_us is None or clock.now_us() - last_attempt_us >= reconnect_us
                ):
                    if last_attempt_us is not None:
                        counters.reconnects += 1
                    last_attempt_us = clock.now_us()
                    conn = await self._connect(spec)
                start = (mono() - start_ns) // 1000
                if conn is None:
                    record(item, intended, start, start, -1, NO_CONNECTION)
                    continue
                channel = conn.channel
                rows = -1
                state: str | None = None
                try:
                    if channel is not None:
                        flight[0], flight[1], flight[2], flight[3] = item, intended, start, conn
                        message = conn.message(kind == execute_kind, item[3], item[5], item[6])
                        try:
                            await channel.run(message, step)
                        except asyncio.CancelledError:
                            channel.abandon()
                            raise
                        continue  # step() recorded every statement of the run
                    if kind == execute_kind:
                        rows = await conn.execute(item[3], item[5] or (), item[6])
                    else:
                        rows = rows_from_status(await conn.query(item[3], None))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if channel is not None:
                        item, intended, start, _ = flight  # the statement then in flight
                    state = exc.sqlstate if isinstance(exc, ChannelLost) else _sqlstate_of(exc)
                    if conn.is_closed():
                        if state == CLIENT_ERROR:
                            state = CONNECTION_LOST
                        counters.connections_lost[state] += 1
                        progress.open_connections -= 1
                        conn.conn.terminate()
                        conn = None
                record(item, intended, start, (mono() - start_ns) // 1000, rows, state)
            if timed and session.disconnect_us is not None:
                await clock.sleep_until(schedule.intended_us(session.disconnect_us))
        finally:
            if conn is not None:
                await self._close(conn)

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

    async def run(self, on_progress: Callable[[Progress], None] | None = None) -> Counters:
        flusher = asyncio.create_task(self._flusher(on_progress))
        try:
            await self._dispatch()
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            flusher.cancel()
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
