"""Causal order across sessions: the happens-before waits of a replay (``--sync``).

The capture records, from the log's record order, which commits and which
disconnections each statement and each connection came after (see
docs/workload-format.md and docs/replay.md): commits are numbered
1..K, disconnections 1..J. During a replay a :class:`SyncTable` keeps which of
those have happened on the target; its *watermark* is the largest n such that
all of 1..n are done, and a session waits until the watermark reaches the number
its next statement (or its connection) came after. Numbers the workload does not
hold are done from the start.

With several worker processes the table's flags live in one shared memory map
(one byte per number, each written by the one process that replays it); a
process that has waiters polls the map until they are satisfied.

Every wait has a timeout, so a replay always finishes; and because the target
may grant row locks in another order than the source did, a wait can close a
cycle with a lock (a session holds a lock and waits for a commit whose statement
waits for that lock). :class:`CycleBreaker` asks the target, when a wait has
lasted a while, whether the session owning the lowest incomplete commit is
blocked by a session that is itself waiting here, and releases those waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import mmap
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import asyncpg


class SyncMode(enum.StrEnum):
    """Which of the capture's happens-before edges a replay keeps."""

    COMMIT = "commit"
    """Every commit the log shows completed before a statement (Oracle's SCN order)."""
    OBJECTS = "objects"
    """Only commits of transactions that wrote a relation the statement touches."""
    ROWS = "rows"
    """Only commits that wrote rows the statement touches, where its key names them
    (an equality on one column), else by relation (``after_rows``)."""
    NONE = "none"
    """Independent sessions: only each session's own order and the timing."""


DEFAULT_SYNC_TIMEOUT_S = 10.0
"""A sync wait longer than this goes ahead (counted), so a replay always finishes."""

CYCLE_CHECK_AFTER_S = 0.1
"""A wait this old makes :class:`CycleBreaker` look for a lock cycle on the target."""
CYCLE_CHECK_FIRST_S = 0.002
"""How soon a wait of a session inside a transaction block makes it look for a cycle."""
CYCLE_CHECK_MAX_S = 1.6
"""The longest interval between two looks at the same lowest incomplete commit."""
POLL_INTERVAL_S = 0.001
"""How often a worker with waiters reads the shared flags of the other workers."""


class Outcome(enum.IntEnum):
    """How one sync wait ended."""

    DONE = 0
    """The watermark reached the number (at once, or after a wait)."""
    TIMEOUT = 1
    """``sync_timeout_s`` passed first: the statement goes ahead anyway."""
    RELEASED = 2
    """Released by :class:`CycleBreaker`: the wait closed a cycle with a row lock."""


def sync_counts(header: Any) -> tuple[int, int] | None:
    """(commits K, disconnects J) of a workload header, or None when the workload
    has no sync members (format version 1: no commit clock)."""
    sync = getattr(header, "sync", None)
    if int(getattr(header, "format_version", 1)) < 2 or not isinstance(sync, Mapping):
        return None
    return int(sync.get("commits") or 0), int(sync.get("disconnects") or 0)


def effective_mode(requested: SyncMode, header: Any, tied: tuple[str, ...] = ()) -> SyncMode:
    """The mode a replay can honour: ``none`` for workloads without sync members;
    ``commit`` for ``rows`` on workloads captured before ``after_rows`` existed, or
    when the target ties relations the workload uses to others (``tied``)."""
    if requested is SyncMode.NONE or sync_counts(header) is None:
        return SyncMode.NONE
    if requested is SyncMode.ROWS and (tied or not getattr(header, "sync", {}).get("rows")):
        return SyncMode.COMMIT
    return requested


class _Waits:
    """The waiters of one number line (commits, or disconnections) of a table."""

    __slots__ = ("base", "count", "heap", "mark", "moved_ns")

    def __init__(self, base: int, count: int) -> None:
        self.base = base
        """Index of number 0 in the table's flags."""
        self.count = count
        self.mark = 0
        """The watermark: 1..mark are done."""
        self.moved_ns = time.monotonic_ns()
        """When the watermark last moved: a wait times out only after a stall this long."""
        self.heap: list[tuple[int, int, asyncio.Future[Outcome]]] = []


class SyncTable:
    """Which commits and disconnections are done in the replay, and who waits for one.

    ``flags`` holds one byte per number (commits at 1..K, disconnections at
    K+2..K+J+1); pass a shared map (:func:`shared_flags`) to share the table with
    other processes, ``shared=True`` to poll it for their progress.
    """

    def __init__(
        self,
        commits: int,
        disconnects: int,
        flags: bytearray | mmap.mmap | None = None,
        *,
        shared: bool = False,
    ) -> None:
        size = table_size(commits, disconnects)
        self.flags: bytearray | mmap.mmap = bytearray(size) if flags is None else flags
        if len(self.flags) < size:
            raise ValueError(f"the sync table needs {size} bytes, got {len(self.flags)}")
        self.shared = shared
        self.commits = _Waits(0, commits)
        self.disconnects = _Waits(commits + 1, disconnects)
        self._serial = itertools.count()
        self._waiting: dict[object, tuple[asyncio.Future[Outcome], int]] = {}
        """Who waits now (one wait per session at a time): future, start (ns)."""
        self._poller: asyncio.Task[None] | None = None
        self.advance()

    # --- marking ----------------------------------------------------------------

    def commit_done(self, number: int) -> None:
        """Commit ``number`` finished in the replay (however it ended)."""
        self._done(self.commits, number)

    def disconnect_done(self, number: int) -> None:
        """Disconnection ``number`` happened in the replay."""
        self._done(self.disconnects, number)

    def _done(self, line: _Waits, number: int) -> None:
        if not 0 < number <= line.count:
            return
        self.flags[line.base + number] = 1
        if number == line.mark + 1 or self.shared:
            self._advance(line)

    def advance(self) -> None:
        """Read the flags again (other processes' progress) and wake whom it satisfies."""
        self._advance(self.commits)
        self._advance(self.disconnects)

    def _advance(self, line: _Waits) -> None:
        flags, base, count = self.flags, line.base, line.count
        mark = line.mark
        while mark < count and flags[base + mark + 1]:
            mark += 1
        if mark != line.mark:
            line.mark = mark
            line.moved_ns = time.monotonic_ns()
        heap = line.heap
        while heap and heap[0][0] <= mark:
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_result(Outcome.DONE)

    # --- waiting ----------------------------------------------------------------

    def commit_reached(self, number: int) -> bool:
        """Commits 1..number are done (no wait needed)."""
        if number <= self.commits.mark:
            return True
        if self.shared:
            self._advance(self.commits)
        return number <= self.commits.mark or number > self.commits.count

    async def wait_commits(self, number: int, timeout_s: float, party: object) -> Outcome:
        """Until commits 1..number are done, ``timeout_s`` passes, or the wait is released."""
        return await self._wait(self.commits, number, timeout_s, party)

    async def wait_disconnects(self, number: int, timeout_s: float, party: object) -> Outcome:
        """Until disconnections 1..number are done (or the timeout, or a release)."""
        return await self._wait(self.disconnects, number, timeout_s, party)

    async def _wait(self, line: _Waits, number: int, timeout_s: float, party: object) -> Outcome:
        if self.shared and number > line.mark:
            self._advance(line)
        if number <= line.mark or number > line.count:
            return Outcome.DONE
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        heapq.heappush(line.heap, (number, next(self._serial), future))
        timer = _StallTimer(loop, line, future, timeout_s)
        self._waiting[party] = (future, time.monotonic_ns())
        if self.shared and self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        try:
            return await future
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()
            if self._waiting.get(party, (None,))[0] is future:
                del self._waiting[party]

    def waiting_since(self, older_than_ns: int) -> list[object]:
        """The parties whose current wait began before ``older_than_ns`` (monotonic)."""
        return [party for party, (_, since) in self._waiting.items() if since < older_than_ns]

    @property
    def waiting(self) -> list[object]:
        """Every party waiting now."""
        return list(self._waiting)

    def release(self, parties: list[object]) -> int:
        """End the waits of ``parties`` at once; returns how many were waiting."""
        released = 0
        for party in parties:
            entry = self._waiting.get(party)
            if entry is not None and not entry[0].done():
                entry[0].set_result(Outcome.RELEASED)
                released += 1
        return released

    async def _poll(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(POLL_INTERVAL_S)
                self.advance()
        finally:
            self._poller = None

    def close(self) -> None:
        """Stop polling (the replay is over)."""
        if self._poller is not None:
            self._poller.cancel()


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


class _StallTimer:
    """Ends a wait with TIMEOUT once its line's watermark has not moved for
    ``timeout_s``: a long chain of dependencies that keeps completing (a thousand
    sessions, each after the previous one's disconnection) is waited for to its end,
    a stalled one (a lock cycle the breaker did not see, a statement that hangs)
    is not."""

    __slots__ = ("_future", "_handle", "_line", "_loop", "_timeout_ns")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        line: _Waits,
        future: asyncio.Future[Outcome],
        timeout_s: float,
    ) -> None:
        self._loop, self._line, self._future = loop, line, future
        self._timeout_ns = int(timeout_s * 1e9)
        self._handle = loop.call_later(timeout_s, self._fire)

    def _fire(self) -> None:
        if self._future.done():
            return
        quiet_ns = time.monotonic_ns() - self._line.moved_ns
        if quiet_ns >= self._timeout_ns:
            self._future.set_result(Outcome.TIMEOUT)
        else:
            self._handle = self._loop.call_later((self._timeout_ns - quiet_ns) / 1e9, self._fire)

    def cancel(self) -> None:
        self._handle.cancel()


def table_size(commits: int, disconnects: int) -> int:
    """Bytes of a table's flags: number 0 of each line is unused."""
    return commits + disconnects + 2


@contextlib.contextmanager
def shared_flags(commits: int, disconnects: int) -> Iterator[str]:
    """A zeroed file to map as a shared table's flags; yields its path, removed after."""
    where = "/dev/shm" if Path("/dev/shm").is_dir() else None
    fd, path = tempfile.mkstemp(prefix="pgtraffic-sync-", dir=where)
    try:
        os.ftruncate(fd, table_size(commits, disconnects))
        yield path
    finally:
        os.close(fd)
        Path(path).unlink(missing_ok=True)


def map_flags(path: str, commits: int, disconnects: int) -> mmap.mmap:
    """Map the shared flags made by :func:`shared_flags` into this process."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, table_size(commits, disconnects))
    finally:
        os.close(fd)


class Party(Protocol):
    """A session as the cycle breaker sees it: its backend on the target."""

    @property
    def pid(self) -> int | None: ...

    @property
    def in_transaction(self) -> bool: ...


_BLOCKERS_SQL = """
WITH RECURSIVE chain (pid) AS (
    SELECT unnest(pg_blocking_pids($1::int))
    UNION
    SELECT unnest(pg_blocking_pids(chain.pid)) FROM chain
)
SELECT array_agg(pid) FROM chain
"""
"""Every backend that blocks ``$1``, directly or through other blocked backends."""


class CycleBreaker:
    """Finds sync waits that close a cycle with a row lock on the target, and ends them.

    While some wait has lasted more than :data:`CYCLE_CHECK_AFTER_S`, it asks the
    target which backends block the one that owns the lowest incomplete commit
    (``pg_blocking_pids``, followed through backends that are blocked in turn).
    Waiting parties among those blockers are released: their next statement goes
    ahead (it is typically the one that ends the transaction holding the lock).
    """

    def __init__(
        self,
        table: SyncTable,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        owner: Callable[[int], Party | None],
    ) -> None:
        self.table = table
        self._connect = connect
        self._owner = owner
        """The party replaying commit n, when this process has dispatched it."""
        self._conn: asyncpg.Connection | None = None
        self._failed = False
        self.cycles_broken = 0
        self.checks = 0

    async def run(self) -> None:
        """Watch the table until cancelled.

        Only a session inside a transaction block can hold the lock of a cycle, so
        while one of them waits, the target is asked within milliseconds; any other
        wait is looked at once it has lasted :data:`CYCLE_CHECK_AFTER_S` (a session
        lock, say). While the same commit stays the lowest incomplete one and no
        cycle is found, the interval doubles up to :data:`CYCLE_CHECK_MAX_S`, so a
        long legitimate wait costs the target a handful of queries.
        """
        table = self.table
        slow_ns = int(CYCLE_CHECK_AFTER_S * 1e9)
        last_mark, due_ns, backoff_s = -1, 0, CYCLE_CHECK_FIRST_S
        try:
            while not self._failed:
                await asyncio.sleep(CYCLE_CHECK_FIRST_S)
                now = time.monotonic_ns()
                holding = any(getattr(p, "in_transaction", False) for p in table.waiting)
                if not holding and not table.waiting_since(now - slow_ns):
                    last_mark = -1
                    continue
                if table.commits.mark != last_mark:
                    last_mark, due_ns = table.commits.mark, now
                    backoff_s = CYCLE_CHECK_FIRST_S if holding else CYCLE_CHECK_AFTER_S
                if now < due_ns:
                    continue
                if await self.check():
                    last_mark = -1
                else:
                    due_ns = now + int(backoff_s * 1e9)
                    backoff_s = min(backoff_s * 2, CYCLE_CHECK_MAX_S)
        finally:
            if self._conn is not None:
                self._conn.terminate()

    async def check(self) -> int:
        """One look at the target; returns how many waits it released."""
        table = self.table
        owner = self._owner(table.commits.mark + 1)
        pid = None if owner is None else owner.pid
        if pid is None:
            return 0
        waiting: dict[int, object] = {}
        for party in table.waiting:
            party_pid = getattr(party, "pid", None)
            if party_pid:
                waiting[party_pid] = party
        if not waiting:
            return 0
        blockers = await self._blockers(pid)
        culprits: list[object] = [waiting[b] for b in blockers if b in waiting]
        released = table.release(culprits)
        if released:
            self.cycles_broken += 1
        return released

    async def _blockers(self, pid: int) -> list[int]:
        self.checks += 1
        try:
            if self._conn is None:
                self._conn = await self._connect()
            row = await self._conn.fetchval(_BLOCKERS_SQL, pid)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self._failed = True  # the timeout still breaks every cycle
            return []
        return [int(p) for p in row or ()]
