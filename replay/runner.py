"""Coordinating a replay: check the target, plan, start workers on one clock, finish the file.

With ``workers == 1`` the replay runs in this process. With more, each worker is
a separate process replaying the sessions :func:`replay.schedule.session_worker`
gives it; all of them wait for one shared start instant (``CLOCK_MONOTONIC`` is
system-wide on Linux) and append to the same results file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import queue as queue_mod
import resource
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from capture.errors import UsageError
from capture.fields import field_dict
from capture.records import QueryClass, Session, StatementKind
from capture.version import __version__
from capture.workload import Workload, read_workload
from replay.connection import TargetInfo, TypeEntry, connect, probe_target, resolve_target
from replay.conninfo import ConnInfo
from replay.engine import Progress, ReplayOptions, run_worker, shared_sync
from replay.errors import ReplayError, TargetError, TargetRefusedError
from replay.planner_stats import StatisticsGap, statistics_gap, workload_relations
from replay.results import append_final_summary, create_results_file
from replay.safety import (
    MARKER,
    MissingLogin,
    ServerIdentity,
    WriteClasses,
    created_names,
    missing_logins,
    read_identity,
    write_classes,
)
from replay.schedule import Schedule, idle_gaps, peak_concurrency
from replay.sync import DEFAULT_SYNC_TIMEOUT_S, SyncMode, effective_mode
from replay.target_contents import DatabaseContents, read_databases
from replay.tied import tied_relations

START_DELAY_S = 0.3
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """How to replay, as a user chooses it: the CLI's options, rehearse's, the tests'.

    :func:`replay_workload` turns these, the workload and the target into the
    engine's :class:`~replay.engine.ReplayOptions`.
    """

    speed: float = 1.0
    max_speed: bool = False
    jump_idle: bool = False
    workers: int = 1
    map_user: Mapping[str, str] = field(default_factory=dict)
    map_database: Mapping[str, str] = field(default_factory=dict)
    reconnect_interval_s: float = 1.0
    event_loop: str = "auto"
    direct_simple: bool = True
    sync: SyncMode = SyncMode.ROWS
    sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
    sync_in_blocks: bool = False
    read_only: bool = False
    """Send only the statements that cannot write, on read-only connections."""
    allow_missing_logins: bool = False
    """Replay even though some logins (user@database) do not exist on the target."""
    target_is_copy: bool = False
    """The target has the source's system_identifier because it is a physical copy."""
    allow_writes: bool = False
    """Replay writes onto a server not marked as a replay target without asking."""

    def check(self) -> None:
        """UsageError when a setting is out of range."""
        problem = hint = None
        if self.speed <= 0:
            problem = f"--speed must be positive, not {self.speed:g}"
            hint = "use --max-speed for no waiting at all"
        elif not 1 <= self.workers <= MAX_WORKERS:
            problem = f"--workers must be between 1 and {MAX_WORKERS}, not {self.workers}"
        elif self.event_loop not in EVENT_LOOPS:
            problem = f"--loop must be auto, uvloop or asyncio, not {self.event_loop!r}"
        elif self.sync_timeout_s <= 0:
            problem = f"--sync-timeout must be positive, not {self.sync_timeout_s:g}"
        elif self.reconnect_interval_s <= 0:
            problem = f"--reconnect-interval must be positive, not {self.reconnect_interval_s:g}"
        if problem:
            raise UsageError(problem, hint=hint)

    def options(self, dsn: str, schedule: Schedule) -> ReplayOptions:
        """The engine's options for this target and schedule (no target defaults yet)."""
        return ReplayOptions(
            dsn=dsn,
            schedule=schedule,
            map_user=dict(self.map_user),
            map_database=dict(self.map_database),
            workers=self.workers,
            reconnect_interval_s=self.reconnect_interval_s,
            event_loop=self.event_loop,
            direct_simple=self.direct_simple,
            sync=self.sync,
            sync_timeout_s=self.sync_timeout_s,
            sync_in_blocks=self.sync_in_blocks,
            read_only=self.read_only,
        )


@dataclass(frozen=True, slots=True)
class WorkloadScan:
    """One pass over a workload: per-session activity spans and statement kinds."""

    statements: int
    kinds: dict[str, int]
    spans: dict[str, tuple[int, int]]
    first_offset_us: int
    """The offset of the first statement."""
    last_end_us: int
    """The latest end of a session's last statement (its offset plus its logged
    duration)."""
    truncated_params: int = 0
    unlisted: dict[str, QueryClass] = field(default_factory=dict)
    """Classes of statements whose fingerprint the workload's class records lack
    (hand-made files), from their first statement."""

    @property
    def replayable(self) -> int:
        return sum(n for k, n in self.kinds.items() if StatementKind(k).replayable)


def scan_workload(workload: Workload) -> WorkloadScan:
    """What replay needs to know of the statements before sending any: from the
    preamble when the sessions carry their spans (checking the statements' bytes
    against the header, without decoding them), else from one pass over them."""
    return quick_scan(workload) or full_scan(workload)


def quick_scan(workload: Workload) -> WorkloadScan | None:
    """The scan from the header and the session spans capture writes (None: the file
    lacks them). Every class of a captured workload is listed, and the statements are
    the ones the header describes (:meth:`Workload.verify_body`)."""
    sessions, counts = workload.sessions.values(), workload.header.counts
    total = counts.get("statements")
    kinds = {k.removeprefix("kind_"): n for k, n in counts.items() if k.startswith("kind_") and n}
    if (
        total is None
        or any(s.statements and s.first_us is None for s in sessions)
        or sum(s.statements for s in sessions) != total
        or sum(kinds.values()) != total
    ):
        return None
    workload.verify_body()
    first = {s.id: s.first_us for s in sessions if s.first_us is not None}
    last = {s.id: s.last_us for s in sessions if s.last_us is not None}
    return WorkloadScan(
        statements=total,
        kinds=kinds,
        spans=_spans(workload, first, last),
        first_offset_us=min(first.values(), default=0),
        last_end_us=max(last.values(), default=0),
        truncated_params=counts.get("params_truncated", 0),
    )


def full_scan(workload: Workload) -> WorkloadScan:
    """Stream the statements once, keeping only per-session first/last times."""
    kinds: Counter[str] = Counter()
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    count = truncated = 0
    listed = workload.classes
    unlisted: dict[str, list[Any]] = {}
    for obj in workload.statement_dicts():
        count += 1
        kinds[obj["kind"]] += 1
        if obj["fingerprint"] not in listed:
            unlisted.setdefault(obj["fingerprint"], [obj["sql"], 0])[1] += 1
        sid, off = obj["session"], obj["offset_us"]
        first.setdefault(sid, off)
        last[sid] = off + int(obj.get("duration_us") or 0)
        if obj.get("params_truncated"):
            truncated += 1
    return WorkloadScan(
        statements=count,
        kinds=dict(kinds),
        spans=_spans(workload, first, last),
        first_offset_us=min(first.values(), default=0),
        last_end_us=max(last.values(), default=0),
        truncated_params=truncated,
        unlisted={fp: QueryClass(fp, sql, True, n) for fp, (sql, n) in unlisted.items()},
    )


def _spans(
    workload: Workload, first: dict[str, int], last: dict[str, int]
) -> dict[str, tuple[int, int]]:
    """Each session's activity span: from its connection (else its first statement's
    offset ``first``) to its disconnection (else its last statement's end ``last``)."""
    spans: dict[str, tuple[int, int]] = {}
    for sid, session in workload.sessions.items():
        start = session.connect_us if session.connect_us is not None else first.get(sid)
        end = session.disconnect_us if session.disconnect_us is not None else last.get(sid)
        if start is not None:
            spans[sid] = (start, end if end is not None else start)
    for sid, off in first.items():  # statements of sessions the preamble lacks
        spans.setdefault(sid, (off, last[sid]))
    return spans


def build_schedule(
    scan: WorkloadScan, *, speed: float, max_speed: bool, jump_idle: bool
) -> Schedule:
    """The schedule for these options: replay time 0 is the first session's start."""
    starts = [s for s, _ in scan.spans.values()]
    origin = min(starts) if starts else scan.first_offset_us
    gaps = idle_gaps(scan.spans.values()) if jump_idle else ()
    return Schedule(speed=None if max_speed else speed, gaps=gaps, origin_us=origin)


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What a replay will do, known without connecting (``--dry-run``)."""

    sessions: int
    statements: int
    replayable: int
    unreplayable: dict[str, int]
    peak_sessions: int
    capture_span_us: int
    intended_duration_us: int | None
    skipped_idle_us: int
    truncated_params: int
    logins: dict[str, int] = field(default_factory=dict)
    """Sessions per ``user@database`` they will log in as (after --map-*)."""
    sync: str = SyncMode.NONE.value
    """The --sync mode the replay will keep."""
    sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
    max_speed: bool = False
    replay_peak_sessions: int = 0
    """How many sessions may be open at once at this pace: the captured peak, except
    at --max-speed without causal order (--sync none, or a workload without sync
    members), where every session may connect at once."""
    writes: int = 0
    """Statements in the classes that may write (by pglast's parse)."""
    write_classes: int = 0
    read_only: bool = False
    """--read-only: those classes are not sent."""

    def to_json(self) -> dict[str, Any]:
        return field_dict(self, rename={"truncated_params": "statements_with_truncated_params"})

    @property
    def concurrency_note(self) -> str:
        """Why the replay's peak is what it is (for the max_connections warning)."""
        if self.replay_peak_sessions <= self.peak_sessions:
            return "as captured"
        if self.sync == SyncMode.NONE.value:
            return "at --max-speed with --sync none every session may connect at once"
        return (
            "at --max-speed the workload's sessions do not wait for the disconnections "
            "before them (no such order in the file)"
        )


def replay_peak(
    scan: WorkloadScan, schedule: Schedule, sync: SyncMode, sessions: Iterable[Session] = ()
) -> int:
    """Sessions open at once at this pace. In time, sessions connect and disconnect at
    their captured times: the captured peak. At --max-speed with --sync none each
    session opens as soon as the dispatcher reaches it: all of them at once. With
    --sync commit/objects a connection waits for the disconnections the log shows
    before it (``after_disconnects``), so two sessions are open together only if
    neither's disconnection preceded the other's connection: the peak of the
    intervals (after_disconnects, disconnect_order] on the log's disconnection count."""
    if not schedule.max_speed:
        return peak_concurrency(scan.spans.values())
    if sync is SyncMode.NONE:
        return len(scan.spans)
    steps: Counter[float] = Counter()
    for session in sessions:
        if session.id not in scan.spans:
            continue
        after = getattr(session, "after_disconnects", 0) or 0
        order = getattr(session, "disconnect_order", 0) or 0
        steps[after + 1] += 1
        if order:
            steps[order + 1] -= 1
    peak = open_now = 0
    for _, delta in sorted(steps.items()):
        open_now += delta
        peak = max(peak, open_now)
    return peak


def plan_replay(
    scan: WorkloadScan,
    schedule: Schedule,
    workload: Workload | None = None,
    options: ReplayOptions | None = None,
) -> ReplayPlan:
    """What the replay will do; with ``workload`` and ``options``, also as whom."""
    ends = [e for _, e in scan.spans.values()] or [scan.last_end_us]
    end = max(ends)
    logins: Counter[str] = Counter()
    sync = SyncMode.NONE
    if workload is not None and options is not None:
        sync = effective_mode(options.sync, workload.header)
        for session in workload.sessions.values():
            spec = options.connect_spec(session)
            logins[f"{spec.user or '(target user)'}@{spec.database or '(target database)'}"] += 1
    writes = writes_of(workload, scan) if workload is not None else WriteClasses({}, {})
    return ReplayPlan(
        sessions=len(scan.spans),
        statements=scan.statements,
        replayable=scan.replayable,
        unreplayable={k: n for k, n in scan.kinds.items() if not StatementKind(k).replayable},
        peak_sessions=peak_concurrency(scan.spans.values()),
        capture_span_us=end - schedule.origin_us,
        intended_duration_us=None if schedule.max_speed else schedule.intended_us(end),
        skipped_idle_us=sum(b - a for a, b in schedule.gaps),
        truncated_params=scan.truncated_params,
        logins=dict(logins.most_common()),
        sync=SyncMode.NONE.value if options is None else SyncMode(options.sync).value,
        sync_timeout_s=DEFAULT_SYNC_TIMEOUT_S if options is None else options.sync_timeout_s,
        max_speed=schedule.max_speed,
        replay_peak_sessions=replay_peak(
            scan, schedule, sync, () if workload is None else workload.sessions.values()
        ),
        writes=writes.statements,
        write_classes=len(writes.writes),
        read_only=options is not None and options.read_only,
    )


def writes_of(workload: Workload, scan: WorkloadScan) -> WriteClasses:
    """The workload's classes that may write (its class records and the unlisted ones)."""
    return write_classes([*workload.classes.values(), *scan.unlisted.values()])


def raise_open_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (up to the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def inspect_target(dsn: str | ConnInfo, timeout_s: float = 10.0) -> TargetInfo:
    """Connect once and read the target's identity; TargetError when that fails (a
    malformed DSN: the ConninfoError, a UsageError, naming the part)."""
    info = resolve_target(dsn)
    try:
        return asyncio.run(probe_target(info, timeout_s))
    except Exception as exc:
        notes = "".join(f"; {note}" for note in info.notes)
        raise TargetError(
            f"cannot reach the replay target ({info.describe()}): {exc}",
            hint="check --target (a libpq URI such as postgresql://user@host:5432/db, or "
            "key=value pairs such as 'host=/var/run/postgresql dbname=db'); passwords come "
            f"from the DSN, PGPASSWORD or the password file ({info.passfile}){notes}",
        ) from exc


@dataclass(slots=True)
class LiveStatus:
    """Aggregated progress of all workers, handed to the progress callback."""

    statements: int = 0
    errors: int = 0
    replayed_capture_us: int = 0
    last_lag_us: int = 0
    open_connections: int = 0
    done: bool = False
    """Every worker has finished."""
    per_worker: dict[int, dict[str, Any]] = field(default_factory=dict)

    def update(self, worker: int, snap: dict[str, Any]) -> None:
        self.per_worker[worker] = snap
        values = self.per_worker.values()
        self.statements = sum(int(s["statements"]) for s in values)
        self.errors = sum(int(s["errors"]) for s in values)
        self.replayed_capture_us = min(int(s["replayed_capture_us"]) for s in values)
        self.last_lag_us = max(int(s["last_lag_us"]) for s in values)
        self.open_connections = sum(int(s["open_connections"]) for s in values)
        self.done = all(bool(s.get("done")) for s in values)


@dataclass(frozen=True, slots=True)
class ResultsHeader:
    """The header chunk of a results file: what was replayed, where, and how."""

    pgtraffic_version: str
    workload_id: str
    workload_path: str
    workload_capture_start: str
    source_server_version: str | None
    target: Mapping[str, Any]
    """:meth:`TargetInfo.to_json` of the target."""
    speed: float | None
    """None with --max-speed."""
    max_speed: bool
    jump_idle: bool
    workers: int
    map_user: Mapping[str, str]
    map_database: Mapping[str, str]
    start_time: str
    """ISO 8601 UTC wall-clock time the replay started."""
    target_identity: Mapping[str, Any] = field(default_factory=dict)
    """:meth:`ServerIdentity.to_json` of the target ({}: not read)."""
    read_only: bool = False
    """--read-only: the classes that may write were not sent."""
    unanalyzed_tables: tuple[str, ...] = ()
    """Tables the workload uses that had data but no planner statistics on the target."""
    databases: Mapping[str, Any] | None = None
    """Each database the sessions log in to: :meth:`DatabaseContents.to_json` (its
    size and extensions), read before the start (None: not read, as in files written
    before pgtraffic read them)."""

    @classmethod
    def for_run(
        cls,
        workload: Workload,
        target: TargetInfo,
        options: ReplayOptions,
        *,
        workload_path: Path,
        start: dt.datetime,
        identity: ServerIdentity | None = None,
        unanalyzed: tuple[str, ...] = (),
        databases: Mapping[str, DatabaseContents] | None = None,
    ) -> ResultsHeader:
        schedule = options.schedule
        return cls(
            pgtraffic_version=__version__,
            workload_id=workload.header.workload_id,
            workload_path=str(workload_path.resolve()),
            workload_capture_start=workload.header.capture_start,
            source_server_version=workload.header.source_server_version,
            target=target.to_json(),
            speed=schedule.speed,
            max_speed=schedule.max_speed,
            jump_idle=bool(schedule.gaps),
            workers=options.workers,
            map_user=dict(options.map_user),
            map_database=dict(options.map_database),
            start_time=start.isoformat(),
            target_identity={} if identity is None else identity.to_json(),
            read_only=options.read_only,
            unanalyzed_tables=unanalyzed,
            databases=None
            if databases is None
            else {name: db.to_json() for name, db in databases.items()},
        )

    def to_json(self) -> dict[str, Any]:
        return field_dict(
            self,
            target=dict(self.target),
            map_user=dict(self.map_user),
            map_database=dict(self.map_database),
            target_identity=dict(self.target_identity),
            unanalyzed_tables=list(self.unanalyzed_tables),
            databases=None if self.databases is None else dict(self.databases),
        )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ResultsHeader:
        """Read a header chunk (as :func:`replay.results.read_results` loads it)."""
        speed = obj.get("speed")
        return cls(
            pgtraffic_version=str(obj.get("pgtraffic_version", "")),
            workload_id=str(obj.get("workload_id", "")),
            workload_path=str(obj.get("workload_path", "")),
            workload_capture_start=str(obj.get("workload_capture_start", "")),
            source_server_version=obj.get("source_server_version"),
            target=dict(obj.get("target") or {}),
            speed=None if speed is None else float(speed),
            max_speed=bool(obj.get("max_speed", False)),
            jump_idle=bool(obj.get("jump_idle", False)),
            workers=int(obj.get("workers", 1)),
            map_user=dict(obj.get("map_user") or {}),
            map_database=dict(obj.get("map_database") or {}),
            start_time=str(obj.get("start_time", "")),
            target_identity=dict(obj.get("target_identity") or {}),
            read_only=bool(obj.get("read_only", False)),
            unanalyzed_tables=tuple(str(t) for t in obj.get("unanalyzed_tables") or ()),
            databases=dict(dbs) if isinstance(dbs := obj.get("databases"), Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class FinalSummary:
    """The final summary chunk the coordinating process appends to a results file."""

    completed: bool
    """Every worker replayed all its sessions (False after Ctrl-C or a failure)."""
    run_time_us: int
    start_time: str
    end_time: str
    workers: int

    def to_json(self) -> dict[str, Any]:
        return field_dict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FinalSummary:
        return cls(
            completed=bool(obj.get("completed", False)),
            run_time_us=int(obj.get("run_time_us", 0)),
            start_time=str(obj.get("start_time", "")),
            end_time=str(obj.get("end_time", "")),
            workers=int(obj.get("workers", 0)),
        )


def run_replay(
    workload: Workload,
    results_path: Path,
    options: ReplayOptions,
    target: TargetInfo,
    *,
    on_status: Callable[[LiveStatus], None] | None = None,
    identity: ServerIdentity | None = None,
    unanalyzed: tuple[str, ...] = (),
    databases: Mapping[str, DatabaseContents] | None = None,
) -> FinalSummary:
    """Replay ``workload`` onto the target; returns the final summary (also in the file).

    The lower-level step of :func:`replay_workload`, for options already complete."""
    if options.workers < 1 or options.workers > MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
    raise_open_file_limit(65536)
    start_wall = dt.datetime.now(dt.UTC)
    header = ResultsHeader.for_run(
        workload,
        target,
        options,
        workload_path=workload.path,
        start=start_wall,
        identity=identity,
        unanalyzed=unanalyzed,
        databases=databases,
    )
    create_results_file(results_path, header.to_json())
    status = LiveStatus()
    summaries: list[dict[str, Any]] = []
    completed = False
    t0 = time.monotonic_ns()
    try:
        if options.workers == 1:
            t0 = time.monotonic_ns() + int(START_DELAY_S * 1e9)

            def local_progress(p: Progress) -> None:
                status.update(0, p.snapshot())
                if on_status is not None:
                    on_status(status)

            summaries.append(
                run_worker(
                    workload.path,
                    results_path,
                    options,
                    types=target.types,
                    start_ns=t0,
                    on_progress=local_progress,
                )
            )
        else:
            with shared_sync(workload, options) as shared:  # one sync table for all workers
                t0 = _run_processes(
                    workload.path, results_path, shared, target.types, status, on_status, summaries
                )
        completed = all(s.get("completed") for s in summaries)
    finally:
        final = _final_summary(summaries, t0, completed, start_wall)
        append_final_summary(results_path, final.to_json())
    return final


def _final_summary(
    summaries: list[dict[str, Any]], t0: int, completed: bool, start_wall: dt.datetime
) -> FinalSummary:
    return FinalSummary(
        completed=completed,
        run_time_us=max(0, (time.monotonic_ns() - t0) // 1000),
        start_time=start_wall.isoformat(),
        end_time=dt.datetime.now(dt.UTC).isoformat(),
        workers=len(summaries),
    )


def _worker_entry(
    workload_path: str,
    results_path: str,
    options: ReplayOptions,
    types: tuple[TypeEntry, ...],
    worker: int,
    messages: Any,
    go: Any,
    start_ns: Any,
) -> None:
    messages.put(("ready", worker, None))
    go.wait()

    def report(p: Progress) -> None:
        with contextlib.suppress(Exception):
            messages.put_nowait(("progress", worker, p.snapshot()))

    summary: dict[str, Any] = {"worker": worker, "completed": False}
    try:
        summary = run_worker(
            Path(workload_path),
            Path(results_path),
            options,
            types=types,
            start_ns=int(start_ns.value),
            worker=worker,
            on_progress=report,
        )
    except KeyboardInterrupt:
        pass
    finally:
        messages.put(("summary", worker, summary))


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Spawned workers re-import the parent's ``__main__`` (the whole CLI, with every
    command's imports: seconds and tens of MB per worker). The worker entry point
    lives in this module, so hide ``__main__`` while the workers start."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def spawned(procs: Sequence[BaseProcess], *, join_timeout_s: float) -> Iterator[None]:
    """Start ``procs`` (made by a ``spawn`` context, so without the parent's
    ``__main__``: :func:`_without_main_module`) for the block; however the block
    ends, wait up to ``join_timeout_s`` for each and kill those still running."""
    with _without_main_module():
        for proc in procs:
            proc.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.join(timeout=join_timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _run_processes(
    workload_path: Path,
    results_path: Path,
    options: ReplayOptions,
    types: tuple[TypeEntry, ...],
    status: LiveStatus,
    on_status: Callable[[LiveStatus], None] | None,
    summaries: list[dict[str, Any]],
) -> int:
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    go = ctx.Event()
    start_ns = ctx.Value("q", 0)
    procs = [
        ctx.Process(
            target=_worker_entry,
            args=(str(workload_path), str(results_path), options, types, w, messages, go, start_ns),
            name=f"pgtraffic-replay-{w}",
        )
        for w in range(options.workers)
    ]
    with spawned(procs, join_timeout_s=30):
        try:
            ready = 0
            while ready < len(procs):
                try:
                    kind, _, _ = messages.get(timeout=0.5)
                except queue_mod.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise ReplayError(
                            "a replay worker process died before the start",
                            hint="run with --workers 1 to see its error",
                        ) from None
                    continue
                ready += kind == "ready"
            t0 = time.monotonic_ns() + int(START_DELAY_S * 1e9)
            start_ns.value = t0
            go.set()
            done: set[int] = set()
            while len(done) < len(procs):
                try:
                    kind, worker, payload = messages.get(timeout=0.5)
                except queue_mod.Empty:
                    if all(not p.is_alive() for p in procs):
                        break
                    continue
                if kind == "progress":
                    status.update(worker, payload)
                    if on_status is not None:
                        on_status(status)
                elif kind == "summary":
                    done.add(worker)
                    summaries.append(payload)
            return t0
        finally:
            for w in range(len(procs)):
                if not any(s.get("worker") == w for s in summaries):
                    summaries.append({"worker": w, "completed": False})


def with_defaults(options: ReplayOptions, target: TargetInfo) -> ReplayOptions:
    """Fill the user and database for sessions whose log did not name them."""
    return replace(
        options,
        default_user=options.default_user or target.user,
        default_database=options.default_database or target.database,
    )


@dataclass(frozen=True, slots=True)
class PreparedReplay:
    """A workload scanned and scheduled for one set of settings, before any connection."""

    workload: Workload
    scan: WorkloadScan
    schedule: Schedule
    plan: ReplayPlan
    options: ReplayOptions
    """The engine's options, without the target's default user and database."""
    writes: WriteClasses = field(default_factory=lambda: WriteClasses({}, {}))


def prepare_replay(
    workload: Workload | Path, settings: ReplaySettings, dsn: str = ""
) -> PreparedReplay:
    """Check the settings, scan and schedule the workload, plan the replay (``--dry-run``)."""
    settings.check()
    wl = workload if isinstance(workload, Workload) else read_workload(workload)
    scan = scan_workload(wl)
    schedule = build_schedule(
        scan, speed=settings.speed, max_speed=settings.max_speed, jump_idle=settings.jump_idle
    )
    options = settings.options(dsn, schedule)
    writes = writes_of(wl, scan)
    if settings.read_only:
        options = replace(options, skip_fingerprints=writes.skipped_by_read_only)
    plan = plan_replay(scan, schedule, wl, options)
    return PreparedReplay(wl, scan, schedule, plan, options, writes)


def target_warnings(target: TargetInfo, plan: ReplayPlan) -> tuple[str, ...]:
    """What about the target will make the replay fail in ways the capture did not."""
    out = []
    max_conn = target.settings.get("max_connections")
    peak = max(plan.replay_peak_sessions, plan.peak_sessions)
    if max_conn and max_conn.isdigit() and peak > int(max_conn):
        how = (
            f"the workload peaks at {peak} sessions"
            if peak == plan.peak_sessions
            else f"the replay may open {peak} sessions at once ({plan.concurrency_note}; "
            f"{plan.peak_sessions} at the captured peak)"
        )
        hint = ""
        if peak != plan.peak_sessions:
            hint = "; replay in time (without --max-speed)"
            if plan.sync == SyncMode.NONE.value:
                hint += " or with --sync commit, which keeps the captured concurrency"
        out.append(
            f"{how} but the target allows max_connections={max_conn}: expect SQLSTATE 53300{hint}"
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """What the target is and whether this workload may be replayed onto it."""

    identity: ServerIdentity
    missing: tuple[MissingLogin, ...]
    """Logins (after --map-*) the target lacks, from pg_roles and pg_database."""
    writes: WriteClasses
    read_only: bool
    source: Mapping[str, Any]
    """The workload header's ``source`` ({}: the capture did not record it)."""
    statistics: StatisticsGap = field(default_factory=lambda: StatisticsGap(()))
    """Tables the workload uses that have no planner statistics on the target."""
    databases: Mapping[str, DatabaseContents] = field(default_factory=dict)
    """Size and extensions of each database the sessions log in to."""
    tied: tuple[str, ...] = ()
    """Relations the workload uses that the target ties to others (replay/tied.py)."""

    @property
    def is_source(self) -> bool:
        """The target has the system_identifier of the server the workload was captured on."""
        sid = self.source.get("system_identifier")
        return sid is not None and str(sid) == self.identity.system_identifier

    @property
    def unprepared_writes(self) -> bool:
        """The replay would write onto a server not marked ``pgtraffic.replay_target``."""
        return not self.read_only and self.writes.statements > 0 and not self.identity.prepared


def session_logins(workload: Workload, options: ReplayOptions) -> Counter[tuple[str, str]]:
    """Sessions per (user, database) they will log in as (target defaults filled in)."""
    logins: Counter[tuple[str, str]] = Counter()
    for session in workload.sessions.values():
        if session.connect_us is None and not session.statements:
            continue  # never connects
        spec = options.connect_spec(session)
        logins[(spec.user or "", spec.database or "")] += 1
    return logins


def check_target(
    dsn: str | ConnInfo, prepared: PreparedReplay, options: ReplayOptions, timeout_s: float = 10.0
) -> TargetCheck:
    """Read the target's identity and the logins it lacks (one connection, reads only)."""
    logins = session_logins(prepared.workload, options)
    created = created_names([*prepared.workload.classes.values(), *prepared.scan.unlisted.values()])

    relations = workload_relations(prepared.workload.classes.values())

    async def go() -> tuple[
        ServerIdentity,
        tuple[MissingLogin, ...],
        StatisticsGap,
        dict[str, DatabaseContents],
        tuple[str, ...],
    ]:
        conn = await connect(dsn, timeout_s=timeout_s, fallback_application="pgtraffic")
        try:
            identity = await read_identity(conn)
            missing = await missing_logins(conn, logins, created)
            gap = await statistics_gap(conn, relations)
            used = {database for _, database in logins if database}
            databases = await read_databases(conn, used, dsn, timeout_s)
            tied = await tied_relations(conn, relations) if options.sync is SyncMode.ROWS else ()
            return identity, missing, gap, databases, tied
        finally:
            await conn.close()

    try:
        identity, missing, gap, databases, tied = asyncio.run(go())
    except Exception as exc:
        raise TargetError(
            f"cannot read the replay target's identity: {exc}",
            hint="check --target; the check reads pg_control_system(), pg_roles and pg_database",
        ) from exc
    source = getattr(prepared.workload.header, "source", None) or {}
    return TargetCheck(
        identity, missing, prepared.writes, options.read_only, dict(source), gap, databases, tied
    )


def refuse_unsafe(check: TargetCheck, settings: ReplaySettings) -> None:
    """TargetRefusedError when the target is the capture's source (and the replay may
    write), or when logins are missing (unless the settings allow it)."""
    ident = check.identity
    if check.is_source and not settings.read_only and not settings.target_is_copy:
        raise TargetRefusedError(
            f"the target is the server the workload was captured on (system_identifier "
            f"{ident.system_identifier}: {ident.describe()}); replaying there would run the "
            f"workload's {check.writes.statements} writes on the source",
            hint="replay onto another server; --read-only sends only the statements that "
            "cannot write; if the target is a physical copy of the source (a restored base "
            "backup keeps the system_identifier), add --target-is-copy",
        )
    if check.missing and not settings.allow_missing_logins:
        sessions = sum(m.sessions for m in check.missing)
        raise TargetRefusedError(
            f"{sessions} sessions log in as users or databases the target lacks: "
            + "; ".join(m.describe() for m in check.missing),
            hint="map them with --map-user OLD=NEW / --map-database OLD=NEW, create them on "
            "the target (CREATE ROLE name LOGIN; CREATE DATABASE name), or add "
            "--allow-missing-logins to replay anyway (their statements are recorded as not sent)",
        )


def unprepared_refusal(check: TargetCheck) -> TargetRefusedError:
    """The error for writes onto an unprepared target that were not confirmed."""
    writes = check.writes
    database = check.identity.database or "DB"
    return TargetRefusedError(
        f"not replaying {writes.statements} statements that may write ({len(writes.writes)} "
        f"query classes) onto {check.identity.describe()}: it is not marked as a replay target",
        hint=f"mark it: ALTER DATABASE {database} SET {MARKER} = on (or ALTER SYSTEM SET "
        f"{MARKER} = on; SELECT pg_reload_conf()), or add --allow-writes, "
        "or --read-only to send only the statements that cannot write",
    )


@dataclass(frozen=True, slots=True)
class ReplayRun:
    """What :func:`replay_workload` did."""

    results_path: Path
    target: TargetInfo
    plan: ReplayPlan
    options: ReplayOptions
    """The options the engine ran with (target defaults filled in)."""
    final: FinalSummary
    check: TargetCheck | None = None


def replay_workload(
    workload: Workload | Path,
    results_path: Path,
    dsn: str,
    settings: ReplaySettings,
    *,
    on_target: Callable[[TargetInfo, ReplayPlan], None] | None = None,
    on_status: Callable[[LiveStatus], None] | None = None,
    approve: Callable[[TargetCheck], bool] | None = None,
) -> ReplayRun:
    """The one way to replay: prepare, inspect and check the target, fill defaults, run.

    Before anything is sent: a target that is the capture's source, or lacks logins
    the workload uses, is refused (:func:`refuse_unsafe`); then ``approve``, when
    given, sees the target's identity and what the workload writes and says whether
    to go on (the CLI asks before writing onto an unprepared server); without it,
    writes onto an unprepared server are refused unless ``settings.allow_writes``. ``on_target`` is
    called once the target answered, before the first session starts (to show what is
    about to happen); ``on_status`` with live progress. The results file is complete
    when this returns, and readable when it raises.
    """
    prepared = prepare_replay(workload, settings, dsn)
    conninfo = resolve_target(dsn)
    target = inspect_target(conninfo)
    options = with_defaults(replace(prepared.options, conninfo=conninfo), target)
    check = check_target(conninfo, prepared, options)
    refuse_unsafe(check, settings)
    if check.tied:
        options = replace(options, rows_tied=check.tied)
    if approve is not None:
        if not approve(check):
            raise unprepared_refusal(check)
    elif check.unprepared_writes and not settings.allow_writes:
        raise unprepared_refusal(check)  # nobody to ask (rehearse, capacity, the API)
    if on_target is not None:
        on_target(target, prepared.plan)
    final = run_replay(
        prepared.workload,
        results_path,
        options,
        target,
        on_status=on_status,
        identity=check.identity,
        unanalyzed=check.statistics.tables,
        databases=check.databases,
    )
    return ReplayRun(results_path, target, prepared.plan, options, final, check)
