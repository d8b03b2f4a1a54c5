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
import datetime as dt
import gc
import marshal
import multiprocessing
import operator
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.csvlog import CsvChunker
from capture.csvlog import parse_chunk as parse_csv
from capture.decode import RecordDecoder
from capture.errors import InputError, LogParseError
from capture.events import ChunkResult, Problem, SessionInfo
from capture.filters import Filters
from capture.jsonlog import JsonChunker
from capture.jsonlog import parse_chunk as parse_json
from capture.normalize import normalized_text
from capture.records import QueryClass, StatementKind, WorkloadHeader
from capture.sessions import OpenStatement, StatementTracker
from capture.settings import capture_recipe
from capture.sources import LogFormat, SourceInfo, describe, detect_format, read_blocks
from capture.timestamps import to_datetime
from capture.workload import WorkloadWriter

ProgressCallback = Callable[[int, int | None], None]

HINTS = {
    "not a csvlog record": "the line is not a csvlog record (garbage, or another log format "
    "mixed in); capture skipped it",
    "not a jsonlog record": "the line is not a jsonlog record; capture skipped it",
    "truncated record at end of file": "the file ends in the middle of a record (copied while "
    "PostgreSQL was writing it?); capture skipped that record",
    "not UTF-8": "capture reads UTF-8 logs; set the database encoding to UTF8, or convert the "
    "file with iconv -f LATIN1 -t UTF-8",
    "unreadable log time": "set log_timezone = 'UTC' in postgresql.conf",
    "unreadable csv": "the csv quoting of this record is damaged",
}


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """How to run a capture."""

    format: LogFormat | None = None
    """None: detect from each file's first bytes."""
    filters: Filters = field(default_factory=Filters)
    strict: bool = False
    """Stop at the first record capture cannot use, instead of skipping it."""
    jobs: int = 0
    """Decoding processes; 0 picks one per CPU, 1 decodes in this process."""
    chunk_bytes: int = 256 << 10
    """Measured on a 2-core machine: 256 KiB chunks keep both cores busy and the
    process tree under 200 MB; 4 MiB chunks were slower and used 680 MB."""
    examples_per_reason: int = 5


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

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _decode_bytes(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


_WORKER_DECODER: RecordDecoder | None = None


def parse_job(
    fmt: LogFormat, data: bytes, source: str, first_line: int, truncated: bool
) -> ChunkResult:
    """Decode one chunk (runs in a worker process; also callable in-process)."""
    global _WORKER_DECODER
    if _WORKER_DECODER is None:
        _WORKER_DECODER = RecordDecoder()

    decoder = _WORKER_DECODER
    text, dirty = _decode_bytes(data)
    parse = parse_csv if fmt is LogFormat.CSVLOG else parse_json
    parse(
        decoder,
        text,
        source=source,
        first_line=first_line,
        truncated_tail=truncated,
        check_encoding=dirty,
    )
    return decoder.take()


def parse_job_packed(
    fmt: LogFormat, data: bytes, source: str, first_line: int, truncated: bool
) -> bytes:
    """:func:`parse_job` for a worker process: the result as one marshal blob.

    One bytes object crosses the process boundary instead of a pickled graph of
    many tuples; marshal writes and reads plain tuples, ints and strings faster.
    Decoding makes no reference cycles, so the cyclic GC is off meanwhile: it
    would only walk the chunk's rows (2 % of a worker's instructions).
    """
    with _no_cyclic_gc():
        r = parse_job(fmt, data, source, first_line, truncated)
    return marshal.dumps(
        (
            r.events,
            [(sid, tuple(info)) for sid, info in r.sessions.items()],
            [(p.source, p.line, p.reason, p.detail) for p in r.problems],
            r.records,
            r.lines,
            r.server_version,
            r.non_english,
            r.first_ts_us,
            r.last_ts_us,
        )
    )


def _unpack(blob: bytes) -> ChunkResult:
    events, sessions, problems, records, lines, version, non_english, first, last = marshal.loads(
        blob
    )
    make_info = SessionInfo._make
    return ChunkResult(
        events=events,
        sessions={sid: make_info(info) for sid, info in sessions},
        problems=[Problem(*p) for p in problems],
        records=records,
        lines=lines,
        server_version=version,
        non_english=non_english,
        first_ts_us=first,
        last_ts_us=last,
    )


_Job = tuple[LogFormat, bytes, str, int, bool, int]
"""format, data, source, first line, truncated tail, offset of data in the source file
(-1 when the data is not a plain byte range of it: stdin, gzip)."""


class _Chunks:
    """Every source cut into decode jobs, in order; tracks bytes for progress."""

    def __init__(
        self,
        infos: Sequence[SourceInfo],
        fmt: LogFormat | None,
        chunk_bytes: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.infos = infos
        self.fmt = fmt
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.formats: list[str] = []
        self.bytes_read = 0
        sizes = [i.size for i in infos]
        self.total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    def __iter__(self) -> Iterator[_Job]:
        done_before = 0
        if self.progress is not None:
            self.progress(0, self.total)
        for info in self.infos:
            fmt: LogFormat | None = self.fmt
            chunker: CsvChunker | JsonChunker | None = None
            consumed = 0
            offset = 0
            ranged = info.name != "-" and not info.gzipped
            for data, consumed in read_blocks(info):
                if chunker is None:
                    if fmt is None:
                        fmt = detect_format(data[:4096], info.name)
                    self.formats.append(fmt.value)
                    chunker = (
                        CsvChunker(self.chunk_bytes)
                        if fmt is LogFormat.CSVLOG
                        else JsonChunker(self.chunk_bytes)
                    )
                assert fmt is not None
                for chunk, line in chunker.feed(data):
                    yield fmt, chunk, info.name, line, False, offset if ranged else -1
                    offset += len(chunk)
                self.bytes_read = done_before + consumed
                if self.progress is not None:
                    self.progress(self.bytes_read, self.total)
            if chunker is None:
                raise InputError(f"{info.name} is empty", hint="point capture at a csvlog file")
            assert fmt is not None
            rest = chunker.finish()
            if rest is not None:
                yield fmt, rest[0], info.name, rest[1], rest[2], offset if ranged else -1
            done_before += consumed


def _results(jobs: Iterator[_Job], workers: int, ranged: bool) -> Iterator[ChunkResult]:
    """Decode jobs, in order, with at most a few in flight (bounded memory).

    ``ranged``: every source is a plain file, which workers can read themselves.
    """
    if workers <= 1:
        for job in jobs:
            yield parse_job(*job[:5])
        return
    context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":
        context.set_forkserver_preload(["capture.pipeline"])
    if not ranged:
        yield from _pool_results(jobs, workers, context)
        return
    with _without_main_module(), _Workers(context, workers) as pool:
        yield from pool.run(jobs)


def _pool_results(jobs: Iterator[_Job], workers: int, context: Any) -> Iterator[ChunkResult]:
    """Decode jobs whose data must be sent (stdin, gzip) in a process pool, in order."""
    with (
        _without_main_module(),
        futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
    ):
        pending: collections.deque[futures.Future[bytes]] = collections.deque()
        try:
            for job in jobs:
                pending.append(pool.submit(parse_job_packed, *job[:5]))
                if len(pending) >= workers * 4:
                    yield _unpack(pending.popleft().result())
            while pending:
                yield _unpack(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()


def _unit(job: _Job, paths: dict[str, str]) -> tuple[Any, ...] | None:
    """A job as a worker reads it itself: (format, path, offset, length, edges...)."""
    fmt, data, source, line, truncated, offset = job
    if offset < 0:
        return None
    path = paths.get(source)
    if path is None:  # resolved once per source, not per chunk (it costs syscalls)
        path = paths[source] = str(Path(source).resolve())
    return (
        fmt.value,
        source,
        path,
        offset,
        len(data),
        data[:_EDGE],
        data[-_EDGE:],
        line,
        truncated,
    )


_EDGE = 256
"""Bytes at each end of a chunk a worker compares with what the main process read."""


class _Workers:
    """Decoding processes fed through one pipe each, without threads in this process.

    A chunk of a plain file is not sent: the worker reads that byte range itself
    (``os.pread``) and checks its ends against what this process read, so the
    main process only cuts the input and merges results. Data of stdin or gzip
    sources, and a range whose bytes changed on disk, is sent or decoded here.
    Each worker answers its jobs in order, jobs go round-robin, so results come
    back in input order.
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

    def run(self, jobs: Iterator[_Job]) -> Iterator[ChunkResult]:
        conns = self._conns
        count = len(conns)
        pending: collections.deque[tuple[int, _Job]] = collections.deque()
        paths: dict[str, str] = {}
        n = 0
        for job in jobs:
            unit = _unit(job, paths)
            if unit is None:
                # not a byte range of a file: send the data, one job at a time, so
                # neither side can block writing while the other does
                while pending:
                    yield self._receive(*pending.popleft())
                conns[0].send(("data", *job[:5]))
                pending.append((0, job))
                yield self._receive(*pending.popleft())
                continue
            worker = n % count
            n += 1
            conns[worker].send(unit)
            pending.append((worker, job))
            if len(pending) >= count * 4:
                yield self._receive(*pending.popleft())
        while pending:
            yield self._receive(*pending.popleft())

    def _receive(self, worker: int, job: _Job) -> ChunkResult:
        try:
            reply = self._conns[worker].recv_bytes()
        except EOFError:
            raise RuntimeError(f"capture worker process {worker} died") from None
        tag = reply[:1]
        if tag == b"R":
            return _unpack(reply[1:])
        if tag == b"M":  # the file changed under us: decode what this process read
            return parse_job(*job[:5])
        raise pickle.loads(reply[1:])


def _serve(conn: Any) -> None:
    """A worker process: decode jobs from ``conn`` until it sends None."""
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


def _serve_one(unit: tuple[Any, ...], files: dict[str, int]) -> bytes:
    if unit[0] == "data":
        return b"R" + parse_job_packed(*unit[1:])
    fmt, source, path, offset, length, head, tail, line, truncated = unit
    fd = files.get(path)
    if fd is None:
        fd = files[path] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    if len(data) != length or data[:_EDGE] != head or data[-_EDGE:] != tail:
        return b"M"
    return b"R" + parse_job_packed(LogFormat(fmt), data, source, line, truncated)


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


class _Classes:
    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}
        """fingerprint: [count, total duration, first SQL, parsed]"""

    def add(self, stmt: OpenStatement) -> None:
        entry = self.data.get(stmt.fingerprint)
        if entry is None:
            self.data[stmt.fingerprint] = [1, stmt.duration_us or 0, stmt.sql, stmt.parsed]
        else:
            entry[0] += 1
            if stmt.duration_us:
                entry[1] += stmt.duration_us

    def records(self) -> list[QueryClass]:
        out = []
        for fp, (count, total, sql, parsed) in self.data.items():
            out.append(
                QueryClass(
                    fingerprint=fp,
                    normalized=normalized_text(str(sql)) if parsed else str(sql),
                    parsed=bool(parsed),
                    count=int(count),
                    total_duration_us=int(total),
                )
            )
        out.sort(key=lambda c: -c.count)
        return out


_KIND_OF = operator.attrgetter("kind")


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
    # Hundreds of thousands of live statements in the reorder buffer make each
    # cyclic-GC pass expensive, and capture creates no cycles worth collecting.
    with _no_cyclic_gc():
        return _capture(sources, output, options, progress)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _capture(
    sources: Sequence[str],
    output: Path,
    options: CaptureOptions | None,
    progress: ProgressCallback | None,
) -> CaptureSummary:
    options = options or CaptureOptions()
    if not sources:
        raise InputError("no log files given", hint="pgtraffic capture postgresql.csv -o w.pgtw")
    infos = [describe(name) for name in sources]
    if sum(1 for i in infos if i.name == "-") > 1:
        raise InputError("stdin (-) can be read only once")
    workers = options.jobs or os.cpu_count() or 1
    chunks = _Chunks(infos, options.format, options.chunk_bytes, progress)
    if not options.jobs and chunks.total is not None and chunks.total < 8 << 20:
        workers = 1  # starting worker processes costs more than decoding a small log
    tracker = StatementTracker(options.filters)
    classes = _Classes()
    writer = WorkloadWriter(output, background=workers > 1)
    skipped: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = {}
    by_kind: collections.Counter[str] = collections.Counter()
    lines = records = non_english = failed = unparsed = truncated = 0
    first_ts: int | None = None
    last_ts: int | None = None
    server_version: str | None = None
    start_us: int | None = None
    last_offset = 0
    reordered = 0
    chunk_count = 0
    batch_offsets: list[int] = []
    batch_lines: list[str] = []
    kind_counts: collections.Counter[StatementKind] = collections.Counter()
    count_kinds = kind_counts.update

    def write(stmts: list[OpenStatement]) -> None:
        nonlocal start_us, last_offset, reordered, failed, unparsed, truncated
        if not stmts:
            return
        if start_us is None:
            first = stmts[0].start_us
            start_us = min(first, first_ts if first_ts is not None else first)
        origin, last = start_us, last_offset
        add_offset, add_line = batch_offsets.append, batch_lines.append
        count_kinds(map(_KIND_OF, stmts))  # counted in C, in the order written
        class_data = classes.data
        find_class = class_data.get
        for stmt in stmts:
            offset = stmt.start_us - origin
            if offset < last:
                offset = last
                reordered += 1
            last = offset
            add_offset(offset)
            add_line(stmt.encode(offset))
            # _Classes.add, inlined
            duration = stmt.duration_us
            entry = find_class(stmt.fingerprint)
            if entry is None:
                class_data[stmt.fingerprint] = [1, duration or 0, stmt.sql, stmt.parsed]
            else:
                entry[0] += 1
                if duration:
                    entry[1] += duration
            if stmt.sqlstate is not None:
                failed += 1
            if not stmt.parsed:
                unparsed += 1
            if stmt.params_truncated:
                truncated += 1
        last_offset = last

    try:
        ranged = all(i.name != "-" and not i.gzipped for i in infos)
        # Only the process pool (stdin, gzip) makes reference cycles; elsewhere a
        # collection would just walk every buffered statement (0.2 us each).
        collect_young = workers > 1 and not ranged
        for result in _results(iter(chunks), workers, ranged):
            lines += result.lines
            records += result.records
            non_english += result.non_english
            if result.server_version and server_version is None:
                server_version = result.server_version
            if result.first_ts_us is not None and first_ts is None:
                first_ts = result.first_ts_us
            if result.last_ts_us is not None:
                last_ts = result.last_ts_us
            for problem in result.problems:
                if options.strict:
                    raise _strict_error(problem)  # noqa: TRY301
                skipped[problem.reason] += 1
                where = examples.setdefault(problem.reason, [])
                if len(where) < options.examples_per_reason:
                    where.append(f"{problem.source}:{problem.line}")
            # The cyclic GC is off (see capture()); now and then collect the youngest
            # objects, where the executor's short-lived reference cycles are.
            chunk_count += 1
            if collect_young and chunk_count % 64 == 0:
                gc.collect(0)
            tracker.add_sessions(result.sessions)
            tracker.feed_all(result.events)
            write(tracker.pop_ready())
            writer.write_batch(batch_offsets, batch_lines)
            batch_offsets.clear()
            batch_lines.clear()
        write(list(tracker.drain()))
        writer.write_batch(batch_offsets, batch_lines)
        for kind, n in kind_counts.items():
            by_kind[kind._value_] += n
        if tracker.statements == 0 and tracker.counts.filtered_statements == 0:
            raise _no_statements(sources, records, non_english, skipped)  # noqa: TRY301
        origin = start_us if start_us is not None else (first_ts or 0)
        end_us = max(last_ts or origin, origin + last_offset)
        class_records = classes.records()
        sessions = list(tracker.session_records(origin))
        counts = tracker.counts
        header = writer.close(
            capture_start=to_datetime(origin),
            capture_end=to_datetime(end_us),
            sessions=sessions,
            classes=class_records,
            source_server_version=server_version,
            sources=[i.name for i in infos],
            filters=options.filters.to_json(),
            counts={
                "failed": failed,
                "unparsed": unparsed,
                "params_truncated": truncated,
                "skipped_records": sum(skipped.values()),
                "filtered_statements": counts.filtered_statements,
                **{f"kind_{k}": v for k, v in by_kind.items()},
            },
        )
    except BaseException:
        writer.abort()
        raise
    return CaptureSummary(
        output=str(output),
        header=header,
        sources=tuple(i.name for i in infos),
        formats=tuple(chunks.formats),
        bytes_read=chunks.bytes_read,
        lines=lines,
        records=records,
        statements=writer.statements,
        statements_by_kind=dict(by_kind),
        sessions=len(sessions),
        failed_statements=failed,
        classes=len(class_records),
        unparsed_statements=unparsed,
        params_truncated=truncated,
        durations_attached=counts.durations_attached,
        statements_from_errors=counts.statements_from_errors,
        late_outcomes=counts.late_outcomes,
        reordered=reordered,
        skipped=dict(skipped),
        skipped_examples={k: tuple(v) for k, v in examples.items()},
        filtered=dict(tracker.filter_reasons),
        first_time=to_datetime(first_ts).isoformat() if first_ts is not None else None,
        last_time=to_datetime(last_ts).isoformat() if last_ts is not None else None,
        server_version=server_version,
    )


def _no_statements(
    sources: Sequence[str], records: int, non_english: int, skipped: collections.Counter[str]
) -> InputError:
    names = ", ".join(sources)
    recipe = capture_recipe(include_optional=False)
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


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
