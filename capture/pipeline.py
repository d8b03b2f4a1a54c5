"""Capture: log files in, workload file out.

The orchestration layer: reads sources (I/O), cuts them into chunks at record
boundaries, has worker processes decode and fingerprint the chunks (the CPU-heavy
part), feeds the events in order to the session tracker and streams statements to
the :class:`~capture.workload.WorkloadWriter`. Memory stays bounded: a few chunks
in flight, the tracker's reorder buffer, one record per session and per class.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import gc
import marshal
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from capture.appstream import no_query_events, resolve_app_sessions
from capture.appstream import parse_chunk as parse_appstream
from capture.batches import BatchTally
from capture.chunking import Chunker, ChunkText, LineChunker
from capture.csvlog import CsvChunker
from capture.csvlog import parse_chunk as parse_csv
from capture.decode import RecordDecoder
from capture.errors import InputError, LogParseError
from capture.events import ChunkResult, Problem, SessionInfo
from capture.filters import Filters
from capture.jsonlog import JsonChunker
from capture.jsonlog import parse_chunk as parse_json
from capture.normalize import normalized_text
from capture.overlaps import InputOverlaps
from capture.platforms import WholeChunker
from capture.platforms import parse_chunk as parse_platform
from capture.prefix import compile_prefix
from capture.records import QueryClass, Session, WorkloadHeader
from capture.sessions import OpenStatement, StatementTracker
from capture.settings import recipe_for_formats
from capture.sources import (
    APPSTREAM_LABEL,
    HEAD,
    LogFormat,
    SourceInfo,
    describe,
    detect,
)
from capture.stderrlog import StderrChunker, resolve_sessions
from capture.stderrlog import parse_chunk as parse_stderr
from capture.syslog import SyslogChunker, SyslogOptions
from capture.syslog import parse_chunk as parse_syslog
from capture.timestamps import to_datetime
from capture.workload import WorkloadWriter

ProgressCallback = Callable[[int, int | None], None]

HINTS = {
    "not a csvlog record": "the line is not a csvlog record (garbage, or another log format "
    "mixed in); capture skipped it",
    "not a jsonlog record": "the line is not a jsonlog record; capture skipped it",
    "not a stderr log line": "the line does not begin with the log_line_prefix (another "
    "program's output, or a prefix that changed); capture skipped it",
    "truncated record at end of file": "the file ends in the middle of a record (copied while "
    "PostgreSQL was writing it?); capture skipped that record",
    "not UTF-8": "capture reads UTF-8 logs; set the database encoding to UTF8, or convert the "
    "file with iconv -f LATIN1 -t UTF-8",
    "unreadable log time": "set log_timezone = 'UTC' in postgresql.conf",
    "unreadable csv": "the csv quoting of this record is damaged",
    "not a syslog line": "the line has no syslog header in the file's layout; capture skipped it",
}


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """How to run a capture."""

    format: LogFormat | None = None
    """None: detect from each file's first bytes."""
    log_line_prefix: str | None = None
    """stderr logs: the server's log_line_prefix (None: detect it)."""
    filters: Filters = field(default_factory=Filters)
    strict: bool = False
    """Stop at the first record capture cannot use, instead of skipping it."""
    jobs: int = 0
    """Decoding processes; 0 picks one per CPU, 1 decodes in this process."""
    chunk_bytes: int = 256 << 10
    """Measured on a 2-core machine: 256 KiB chunks keep both cores busy and the
    process tree under 200 MB; 4 MiB chunks were slower and used 680 MB."""
    examples_per_reason: int = 5
    source: dict[str, Any] = field(default_factory=dict)
    """The source server's identity (``--source-dsn``), for the workload header."""


@dataclass(frozen=True, slots=True)
class CaptureSummary:
    """What a capture read and wrote."""

    output: str
    header: WorkloadHeader
    sources: tuple[str, ...]
    formats: tuple[str, ...]
    bytes_read: int
    lines: int
    records: int
    statements: int
    statements_by_kind: dict[str, int]
    sessions: int
    failed_statements: int
    classes: int
    unparsed_statements: int
    """Statements pglast could not parse (kept, with a fallback fingerprint)."""
    params_truncated: int
    durations_attached: int
    statements_from_errors: int
    late_outcomes: int
    reordered: int
    skipped: dict[str, int]
    """Records capture could not use, by reason."""
    skipped_examples: dict[str, tuple[str, ...]]
    """A few ``file:line`` locations per skip reason."""
    filtered: dict[str, int]
    first_time: str | None
    last_time: str | None
    server_version: str | None
    statements_with_duration: int = 0
    """Statements that carry their original duration (logged, or from an app stream)."""

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _decode_bytes(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


@dataclass(frozen=True, slots=True)
class Chunk:
    """One decode job: whole records of one source, in input order."""

    format: LogFormat
    data: bytes
    source: str
    first_line: int
    truncated: bool
    """The data ends inside a record (the last of a file that was cut short)."""
    offset: int
    """Where ``data`` starts in the source file; -1 when it is not a plain byte range of
    it (stdin, gzip)."""
    prefix: str = ""
    """stderr: the log_line_prefix of its lines; syslog: its encoded options."""


_READERS: dict[LogFormat, Callable[[RecordDecoder, ChunkText], None]] = {
    LogFormat.CSVLOG: parse_csv,
    LogFormat.JSONLOG: parse_json,
    LogFormat.STDERR: parse_stderr,
    LogFormat.SYSLOG: parse_syslog,
    LogFormat.CLOUDSQL: parse_platform,
    LogFormat.AZURE: parse_platform,
    LogFormat.CLOUDNATIVEPG: parse_platform,
    LogFormat.APPSTREAM: parse_appstream,
}
"""Each log format's ``parse_chunk``."""
_WORKER_DECODER: RecordDecoder | None = None


def parse_job(chunk: Chunk, data: bytes | None = None) -> ChunkResult:
    """Decode one chunk (runs in a worker process; also callable in-process).

    ``data``: the chunk's bytes when ``chunk.data`` does not carry them (a worker
    read them from the file).
    """
    global _WORKER_DECODER
    if _WORKER_DECODER is None:
        _WORKER_DECODER = RecordDecoder()

    decoder = _WORKER_DECODER
    text, dirty = _decode_bytes(chunk.data if data is None else data)
    _READERS[chunk.format](
        decoder,
        ChunkText(text, chunk.source, chunk.first_line, chunk.truncated, dirty, chunk.prefix),
    )
    return decoder.take()


_SCALARS = ("records", "lines", "server_version", "non_english", "first_ts_us", "last_ts_us")
"""The plain fields of a :class:`ChunkResult`, in the order a packed result holds them."""


def parse_job_packed(chunk: Chunk, data: bytes | None = None) -> bytes:
    """:func:`parse_job` for a worker process: the result as one marshal blob.

    One bytes object crosses the process boundary instead of a pickled graph of
    many tuples; marshal writes and reads plain tuples, ints and strings faster.
    Decoding makes no reference cycles, so the cyclic GC is off meanwhile: it
    would only walk the chunk's rows (2 % of a worker's instructions).
    """
    with _no_cyclic_gc():
        r = parse_job(chunk, data)
    return marshal.dumps(
        (
            r.events,
            [(sid, tuple(info)) for sid, info in r.sessions.items()],
            [(p.source, p.line, p.reason, p.detail) for p in r.problems],
            tuple(getattr(r, name) for name in _SCALARS),
        )
    )


def _unpack(blob: bytes) -> ChunkResult:
    events, sessions, problems, scalars = marshal.loads(blob)
    make_info = SessionInfo._make
    result = ChunkResult(
        events, {sid: make_info(info) for sid, info in sessions}, [Problem(*p) for p in problems]
    )
    for name, value in zip(_SCALARS, scalars, strict=True):
        setattr(result, name, value)
    return result


@dataclass(eq=False)
class _Chunks:
    """Every source cut into decode jobs, in order; tracks bytes for progress."""

    infos: Sequence[SourceInfo]
    fmt: LogFormat | None
    chunk_bytes: int
    progress: ProgressCallback | None
    prefix: str | None = None
    """stderr: the log_line_prefix the user gave (None: detect it)."""
    formats: list[str] = field(init=False, default_factory=list)
    """The format of each source, once its first bytes were read."""
    bytes_read: int = field(init=False, default=0)
    total: int | None = field(init=False)
    """Bytes of all sources (None when one is of unknown size: stdin, gzip)."""

    def __post_init__(self) -> None:
        sizes = [i.size for i in self.infos]
        self.total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        self.overlaps = InputOverlaps(self.infos)

    def __iter__(self) -> Iterator[Chunk]:
        done_before = 0
        if self.progress is not None:
            self.progress(0, self.total)
        for index, info in enumerate(self.infos):
            fmt: LogFormat | None = self.fmt
            prefix = ""
            chunker: Chunker | None = None
            consumed = 0
            offset = lines = 0
            ranged = info.name != "-" and not info.gzipped
            for data, consumed in self.overlaps.blocks(index, info):  # repeats skipped
                if chunker is None:
                    start = self.overlaps.start(index)
                    offset, lines = start.skip_bytes, start.skip_lines
                    found = detect(data[:HEAD], info.name, fmt=self.fmt, prefix=self.prefix)
                    fmt, prefix = found.format, found.prefix
                    self.formats.append(found.label)
                    chunker = (
                        CsvChunker(self.chunk_bytes)
                        if fmt is LogFormat.CSVLOG
                        else StderrChunker(self.chunk_bytes, compile_prefix(prefix))
                        if fmt is LogFormat.STDERR
                        else SyslogChunker(self.chunk_bytes, SyslogOptions.decode(prefix))
                        if fmt is LogFormat.SYSLOG
                        else _platform_chunker(data, self.chunk_bytes)
                        if fmt in (LogFormat.CLOUDSQL, LogFormat.AZURE, LogFormat.CLOUDNATIVEPG)
                        else JsonChunker(self.chunk_bytes)
                    )
                assert fmt is not None
                for chunk, line in chunker.feed(data):
                    yield Chunk(
                        fmt, chunk, info.name, line + lines, False, offset if ranged else -1, prefix
                    )
                    offset += len(chunk)
                self.bytes_read = done_before + consumed
                if self.progress is not None:
                    self.progress(self.bytes_read, self.total)
            if chunker is None:
                if self.overlaps.start(index).skipped:
                    continue  # all of it was read before
                raise InputError(f"{info.name} is empty", hint="point capture at a csvlog file")
            assert fmt is not None
            rest = chunker.finish()
            if rest is not None:
                line, truncated = rest[1] + lines, rest[2]
                yield Chunk(
                    fmt, rest[0], info.name, line, truncated, offset if ranged else -1, prefix
                )
            done_before += consumed


def _platform_chunker(head: bytes, chunk_bytes: int) -> Chunker:
    """A JSON array is read whole (its entries are sorted); JSON lines by lines."""
    return WholeChunker(1 << 62) if head.lstrip()[:1] == b"[" else LineChunker(chunk_bytes)


def _results(jobs: Iterator[Chunk], workers: int, ranged: bool) -> Iterator[ChunkResult]:
    """Decode jobs, in order, with at most a few in flight (bounded memory).

    ``ranged``: every source is a plain file, which workers can read themselves.
    """
    if workers <= 1:
        for job in jobs:
            yield parse_job(job)
        return
    context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":
        context.set_forkserver_preload(["capture.pipeline"])
    if not ranged:
        yield from _pool_results(jobs, workers, context)
        return
    with _without_main_module(), _Workers(context, workers) as pool:
        yield from pool.run(jobs)


def _pool_results(jobs: Iterator[Chunk], workers: int, context: Any) -> Iterator[ChunkResult]:
    """Decode jobs whose data must be sent (stdin, gzip) in a process pool, in order."""
    with (
        _without_main_module(),
        futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
    ):
        pending: collections.deque[futures.Future[bytes]] = collections.deque()
        try:
            for job in jobs:
                pending.append(pool.submit(parse_job_packed, job))
                if len(pending) >= workers * 4:
                    yield _unpack(pending.popleft().result())
            while pending:
                yield _unpack(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()


_EDGE = 256
"""Bytes at each end of a chunk a worker compares with what the main process read."""


@dataclass(frozen=True, slots=True)
class _Range:
    """A chunk of a plain file as a worker reads it itself (its data is not sent)."""

    chunk: Chunk
    """The chunk, with empty ``data``."""
    path: str
    length: int
    head: bytes
    """The first and last :data:`_EDGE` bytes the main process read."""
    tail: bytes

    @classmethod
    def of(cls, job: Chunk, paths: dict[str, str]) -> _Range:
        path = paths.get(job.source)
        if path is None:  # resolved once per source, not per chunk (it costs syscalls)
            path = paths[job.source] = str(Path(job.source).resolve())
        data = job.data
        return cls(replace(job, data=b""), path, len(data), data[:_EDGE], data[-_EDGE:])


class _Workers:
    """Decoding processes fed through one pipe each, without threads in this process.

    Only for plain files: a chunk is not sent, the worker reads that byte range
    itself (``os.pread``) and checks its ends against what this process read, so
    the main process only cuts the input and merges results. A range whose bytes
    changed on disk is decoded here. Each worker answers its jobs in order, jobs
    go round-robin, so results come back in input order.
    """

    def __init__(self, context: Any, count: int) -> None:
        self._context = context
        self._count = count
        self._conns: list[Any] = []
        self._procs: list[Any] = []

    def __enter__(self) -> _Workers:
        for _ in range(self._count):
            mine, theirs = self._context.Pipe(duplex=True)
            proc = self._context.Process(target=_serve, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        clean = kind is None
        if not clean:
            for proc in self._procs:
                proc.terminate()
        for conn in self._conns:
            if clean:
                with contextlib.suppress(OSError):
                    conn.send(None)
            conn.close()
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def run(self, jobs: Iterator[Chunk]) -> Iterator[ChunkResult]:
        conns = self._conns
        count = len(conns)
        pending: collections.deque[tuple[int, Chunk]] = collections.deque()
        paths: dict[str, str] = {}
        for n, job in enumerate(jobs):
            worker = n % count
            conns[worker].send(_Range.of(job, paths))
            pending.append((worker, job))
            if len(pending) >= count * 4:
                yield self._receive(*pending.popleft())
        while pending:
            yield self._receive(*pending.popleft())

    def _receive(self, worker: int, job: Chunk) -> ChunkResult:
        try:
            reply = self._conns[worker].recv_bytes()
        except EOFError:
            raise RuntimeError(f"capture worker process {worker} died") from None
        tag = reply[:1]
        if tag == b"R":
            return _unpack(reply[1:])
        if tag == b"M":  # the file changed under us: decode what this process read
            return parse_job(job)
        raise pickle.loads(reply[1:])


def _serve(conn: Any) -> None:
    """A worker process: decode ranges from ``conn`` until it sends None."""
    # Ctrl-C reaches the whole process group: the main process handles it and
    # stops the workers, which should not print tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    files: dict[str, int] = {}
    try:
        while True:
            try:
                unit = conn.recv()
            except EOFError:
                return
            if unit is None:
                return
            try:
                reply = _serve_one(unit, files)
            except Exception as exc:
                try:
                    reply = b"E" + pickle.dumps(exc)
                except Exception:
                    reply = b"E" + pickle.dumps(RuntimeError(repr(exc)))
            try:
                conn.send_bytes(reply)
            except OSError:  # the main process is gone or stopped reading
                return
    finally:
        for fd in files.values():
            os.close(fd)


def _serve_one(unit: _Range, files: dict[str, int]) -> bytes:
    path, length, offset = unit.path, unit.length, unit.chunk.offset
    fd = files.get(path)
    if fd is None:
        fd = files[path] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    if len(data) != length or data[:_EDGE] != unit.head or data[-_EDGE:] != unit.tail:
        return b"M"
    return b"R" + parse_job_packed(unit.chunk, data)


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Keep worker processes from re-importing the program's ``__main__`` module.

    multiprocessing prepares each worker by importing the parent's main module
    (for ``pgtraffic`` that is the whole CLI: typer, rich, replay, asyncpg, numpy),
    which tripled the memory of a capture. Workers only need capture.pipeline.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    namespace = main.__dict__
    saved: dict[str, Any] = {k: namespace[k] for k in ("__spec__", "__file__") if k in namespace}
    namespace["__spec__"] = None
    namespace.pop("__file__", None)
    try:
        yield
    finally:
        namespace.pop("__spec__", None)
        namespace.update(saved)


def _class_records(classes: dict[str, list[Any]]) -> list[QueryClass]:
    """The query classes, most frequent first, from the entries :meth:`_Capture._write`
    keeps per fingerprint: [count, total duration, first SQL, parsed]."""
    out = [
        QueryClass(
            fingerprint=fp,
            normalized=normalized_text(str(sql)) if parsed else str(sql),
            parsed=bool(parsed),
            count=int(count),
            total_duration_us=int(total),
        )
        for fp, (count, total, sql, parsed) in classes.items()
    ]
    out.sort(key=lambda c: -c.count)
    return out


def _strict_error(problem: Problem) -> LogParseError:
    hint = HINTS.get(problem.reason, "")
    if problem.detail:
        hint = f"{problem.detail}\n{hint}" if hint else problem.detail
    return LogParseError(
        problem.source,
        problem.line,
        problem.reason,
        hint=(hint + "\n" if hint else "") + "run without --strict to skip such records",
    )


def capture(
    sources: Sequence[str],
    output: Path,
    options: CaptureOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> CaptureSummary:
    """Read PostgreSQL logs (in the order given) and write a workload file."""
    if not sources:
        raise InputError("no log files given", hint="pgtraffic capture postgresql.csv -o w.pgtw")
    # Hundreds of thousands of live statements in the reorder buffer make each
    # cyclic-GC pass expensive, and capture creates no cycles worth collecting.
    with _no_cyclic_gc():
        return _Capture(sources, output, options or CaptureOptions(), progress).run()


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Capture:
    """One capture run: decoded chunks in, through the tracker, statements out.

    Steps: :meth:`_take` merges a chunk's counts and problems, :meth:`_write`
    numbers and encodes the statements the tracker released, :meth:`_close`
    writes the workload's preamble, :meth:`_summary` says what was done.
    """

    def __init__(
        self,
        sources: Sequence[str],
        output: Path,
        options: CaptureOptions,
        progress: ProgressCallback | None,
    ) -> None:
        self.sources = sources
        self.output = output
        self.options = options
        self.infos = [describe(name) for name in sources]
        if sum(1 for i in self.infos if i.name == "-") > 1:
            raise InputError("stdin (-) can be read only once")
        self.chunks = _Chunks(
            self.infos, options.format, options.chunk_bytes, progress, options.log_line_prefix
        )
        workers = options.jobs or os.cpu_count() or 1
        total = self.chunks.total
        if not options.jobs and total is not None and total < 8 << 20:
            workers = 1  # starting worker processes costs more than decoding a small log
        self.workers = workers
        self.tracker = StatementTracker(options.filters)
        self.writer = WorkloadWriter(output, background=workers > 1)
        self.tally = BatchTally()
        """What the statements written add up to: counts, classes, session spans."""
        self.skipped: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = {}
        self.lines = self.records = self.non_english = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.server_version: str | None = None
        self.start_us: int | None = None
        """Capture start: offsets count from it (set by the first statement written)."""
        self.batch_offsets: list[int] = []
        self.batch_lines: list[str] = []

    def run(self) -> CaptureSummary:
        tracker, writer = self.tracker, self.writer
        try:
            ranged = all(i.name != "-" and not i.gzipped for i in self.infos)
            # Only the process pool (stdin, gzip) makes reference cycles; elsewhere a
            # collection would just walk every buffered statement (0.2 us each).
            collect_young = self.workers > 1 and not ranged
            results = resolve_app_sessions(
                resolve_sessions(_results(iter(self.chunks), self.workers, ranged))
            )
            for n, result in enumerate(results, 1):
                self._take(result)
                # The cyclic GC is off (see capture()); now and then collect the youngest
                # objects, where the executor's short-lived reference cycles are.
                if collect_young and n % 64 == 0:
                    gc.collect(0)
                tracker.add_sessions(result.sessions)
                tracker.feed_all(result.events)
                self._write(tracker.pop_ready())
            self._write(list(tracker.drain()))
            for reason, count, where in self.chunks.overlaps.skipped():
                self.skipped[reason] += count
                self.examples.setdefault(reason, []).extend(
                    where[: self.options.examples_per_reason]
                )
            if tracker.statements == 0 and tracker.counts.filtered_statements == 0:
                raise _no_statements(  # noqa: TRY301
                    self.sources, self.records, self.non_english, self.skipped, self.chunks.formats
                )
            header, sessions, classes = self._close()
        except BaseException:
            writer.abort()
            raise
        return self._summary(header, sessions, classes)

    def _take(self, result: ChunkResult) -> None:
        """Add a decoded chunk's counts and problems to the run's."""
        self.lines += result.lines
        self.records += result.records
        self.non_english += result.non_english
        if result.server_version and self.server_version is None:
            self.server_version = result.server_version
        if result.first_ts_us is not None and self.first_ts is None:
            self.first_ts = result.first_ts_us
        if result.last_ts_us is not None:
            self.last_ts = result.last_ts_us
        options = self.options
        for problem in result.problems:
            if options.strict:
                raise _strict_error(problem)
            self.skipped[problem.reason] += 1
            where = self.examples.setdefault(problem.reason, [])
            if len(where) < options.examples_per_reason:
                where.append(f"{problem.source}:{problem.line}")

    def _write(self, stmts: list[OpenStatement]) -> None:
        """Give statements their offsets (never going back), count them, write them."""
        if not stmts:
            return
        if self.start_us is None:
            first = stmts[0].start_us
            self.start_us = min(first, self.first_ts if self.first_ts is not None else first)
        offsets, lines = self.batch_offsets, self.batch_lines
        self.tally.add(stmts, self.start_us, offsets, lines)
        self.writer.write_batch(offsets, lines)
        offsets.clear()
        lines.clear()

    def by_kind(self) -> dict[str, int]:
        by_kind: collections.Counter[str] = collections.Counter()
        for kind, n in self.tally.kinds.items():
            by_kind[kind._value_] += n
        return dict(by_kind)

    def _close(self) -> tuple[WorkloadHeader, list[Session], list[QueryClass]]:
        """Write the workload's preamble: capture window, sessions, classes, counts."""
        origin = self.start_us if self.start_us is not None else (self.first_ts or 0)
        end_us = max(self.last_ts or origin, origin + self.tally.last_offset)
        tracker = self.tracker
        classes = _class_records(self.tally.classes)
        spans = self.tally.spans
        sessions = [
            s if s.id not in spans else replace(s, first_us=spans[s.id][0], last_us=spans[s.id][1])
            for s in tracker.session_records(origin)
        ]
        header = self.writer.close(
            capture_start=to_datetime(origin),
            capture_end=to_datetime(end_us),
            sessions=sessions,
            classes=classes,
            source_server_version=self.server_version,
            sources=[i.name for i in self.infos],
            filters=self.options.filters.to_json(),
            counts={
                "failed": self.tally.failed,
                "unparsed": self.tally.unparsed,
                "params_truncated": self.tally.truncated,
                "skipped_records": sum(self.skipped.values()),
                "filtered_statements": tracker.counts.filtered_statements,
                **{f"kind_{k}": v for k, v in self.by_kind().items()},
            },
            sync=tracker.sync_header(),
            source=self.options.source,
        )
        return header, sessions, classes

    def _summary(
        self, header: WorkloadHeader, sessions: list[Session], classes: list[QueryClass]
    ) -> CaptureSummary:
        counts = self.tracker.counts
        first_ts, last_ts = self.first_ts, self.last_ts
        return CaptureSummary(
            output=str(self.output),
            header=header,
            sources=tuple(i.name for i in self.infos),
            formats=tuple(self.chunks.formats),
            bytes_read=self.chunks.bytes_read,
            lines=self.lines,
            records=self.records,
            statements=self.writer.statements,
            statements_by_kind=self.by_kind(),
            sessions=len(sessions),
            failed_statements=self.tally.failed,
            classes=len(classes),
            unparsed_statements=self.tally.unparsed,
            params_truncated=self.tally.truncated,
            durations_attached=counts.durations_attached,
            statements_from_errors=counts.statements_from_errors,
            late_outcomes=counts.late_outcomes,
            reordered=self.tally.reordered,
            skipped=dict(self.skipped),
            skipped_examples={k: tuple(v) for k, v in self.examples.items()},
            filtered=dict(self.tracker.filter_reasons),
            first_time=to_datetime(first_ts).isoformat() if first_ts is not None else None,
            last_time=to_datetime(last_ts).isoformat() if last_ts is not None else None,
            server_version=self.server_version,
            statements_with_duration=self.tally.timed,
        )


def _no_statements(
    sources: Sequence[str],
    records: int,
    non_english: int,
    skipped: collections.Counter[str],
    formats: Sequence[str] = (),
) -> InputError:
    names = ", ".join(sources)
    if formats and all(f == APPSTREAM_LABEL for f in formats):
        return no_query_events(names, skipped)
    recipe = recipe_for_formats(formats)
    if records == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in skipped.most_common(3))
        return InputError(
            f"{names}: no PostgreSQL log records found" + (f" ({reasons})" if reasons else ""),
            hint="is this a csvlog/jsonlog file? postgresql.conf for a capture:\n" + recipe,
        )
    if non_english:
        return InputError(
            f"{names}: {non_english} records have server messages that are not in English, "
            "and no statement was recognized",
            hint="capture reads messages written with lc_messages = 'C'; set it in "
            "postgresql.conf (it can be changed with a reload) and capture again",
        )
    return InputError(
        f"{names}: {records} log records but no statements in them",
        hint="the server did not log statements; set in postgresql.conf (then reload):\n" + recipe,
    )
