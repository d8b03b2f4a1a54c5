"""The workload file: the contract between capture and replay.

A workload file is gzip-compressed JSON Lines (``zcat w.pgtw | jq`` reads it):

1. one ``header`` record (format version, tool versions, capture window, counts);
2. one ``class`` record per query class (fingerprint, normalized text, count);
3. one ``session`` record per original connection;
4. ``statement`` records, in order of ``offset_us``.

The file is two concatenated gzip members (preamble, then statements), so the
statements can be streamed to disk while capture runs and the preamble, which
needs the final counts, written at the end. Any gzip reader sees one stream.
The statements are compressed with zlib-ng when it is installed (a dependency:
about 2.5 times faster than zlib at level 1, same gzip format).

``workload_id`` is the first 16 bytes (hex) of the SHA-256 of the statement
lines exactly as stored (each with its newline): results files name it, so
two replays of one workload can be told apart from replays of different ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gzip
import hashlib
import json
import queue
import shutil
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pglast

from capture.errors import WorkloadFormatError
from capture.records import QueryClass, Session, Statement, WorkloadHeader
from capture.version import __version__

READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, UnicodeDecodeError, zlib.error)
"""What reading a damaged or truncated workload file can raise."""
_fast_gzip: Any = gzip
try:
    from zlib_ng import gzip_ng, zlib_ng

    _fast_gzip = gzip_ng

    _ZLIB_NG_ERROR: Any = zlib_ng.error  # its stub types the class as an instance
    READ_ERRORS += (_ZLIB_NG_ERROR,)
except ImportError:  # pragma: no cover - zlib-ng is a dependency; stdlib gzip works too
    pass


def open_text(path: Path) -> IO[str]:
    """A workload file opened for reading its JSON lines (see ``READ_ERRORS``)."""
    fh: IO[str] = _fast_gzip.open(path, "rt", encoding="utf-8")
    return fh


FORMAT = "pgtraffic-workload"
FORMAT_VERSION = 2
READS_VERSIONS = frozenset({1, 2})
"""Version 1 files lack the commit clock (see :attr:`Workload.has_sync`)."""
SUFFIX = ".pgtw"


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class WorkloadWriter:
    """Write a workload file: stream statements, then :meth:`close` with the rest.

    Statements must come in non-decreasing ``offset_us`` order.
    """

    def __init__(self, path: Path, *, compresslevel: int = 1, background: bool = False) -> None:
        """``background``: compress and hash batches (:meth:`write_batch`) in a thread.

        zlib and SHA-256 release the GIL on large buffers, so the caller keeps
        working meanwhile; errors surface at the next call or at :meth:`close`.
        """
        self.path = path
        self._body_path = path.with_name(path.name + ".body.tmp")
        self._body: IO[bytes] = _fast_gzip.open(  # closed in close()/abort()
            self._body_path, "wb", compresslevel=compresslevel
        )
        self._compresslevel = compresslevel
        self._digest = hashlib.sha256()
        self._last_offset = -(2**63)
        self.statements = 0
        self._queue: queue.Queue[list[str] | None] | None = None
        self._drainer: threading.Thread | None = None
        self._failure: BaseException | None = None
        if background:
            self._queue = queue.Queue(maxsize=8)
            self._drainer = threading.Thread(
                target=self._drain, name="workload-writer", daemon=True
            )
            self._drainer.start()

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            lines = self._queue.get()
            if lines is None:
                return
            if self._failure is not None:
                continue
            try:
                self._write_lines(lines)
            except BaseException as exc:  # re-raised in the caller's thread
                self._failure = exc

    def _write_lines(self, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        self._digest.update(data)
        self._body.write(data)

    def _stop(self) -> None:
        """Wait for the background thread (if any) to write what it was given."""
        if self._drainer is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._drainer.join()
            self._drainer = None
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def write(self, statement: Statement) -> None:
        self.write_encoded(statement.offset_us, _dumps(statement.to_json()))

    def write_encoded(self, offset_us: int, line: str) -> None:
        """Write one statement already encoded as a JSON object without newline."""
        if self._drainer is not None:
            self.write_batch([offset_us], [line])
            return
        if offset_us < self._last_offset:
            raise ValueError(
                "statements must be written in offset order "
                f"({offset_us} after {self._last_offset})"
            )
        self._last_offset = offset_us
        data = (line + "\n").encode()
        self._digest.update(data)
        self._body.write(data)
        self.statements += 1

    def write_batch(self, offsets: list[int], lines: list[str]) -> None:
        """Write statements already encoded (as :meth:`write_encoded`), many at once."""
        if not lines:
            return
        previous = self._last_offset
        for offset in offsets:
            if offset < previous:
                raise ValueError(
                    f"statements must be written in offset order ({offset} after {previous})"
                )
            previous = offset
        self._last_offset = previous
        self.statements += len(lines)
        if self._queue is not None:
            self._raise_failure()
            self._queue.put(list(lines))
        else:
            self._write_lines(lines)

    def close(
        self,
        *,
        capture_start: dt.datetime,
        capture_end: dt.datetime,
        sessions: Iterable[Session],
        classes: Iterable[QueryClass],
        source_server_version: str | None = None,
        sources: Iterable[str] = (),
        filters: Mapping[str, Any] | None = None,
        counts: Mapping[str, int] | None = None,
        sync: Mapping[str, int] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> WorkloadHeader:
        """Finish the file atomically and return its header."""
        try:
            self._stop()
        except BaseException:
            self.abort()
            raise
        self._body.close()
        session_list = list(sessions)
        class_list = list(classes)
        lines = [_dumps(c.to_json()) for c in class_list]
        lines.extend(_dumps(s.to_json()) for s in session_list)
        preamble = "".join(line + "\n" for line in lines).encode()
        header = WorkloadHeader(
            format_version=FORMAT_VERSION,
            pgtraffic_version=__version__,
            pglast_version=pglast.__version__.lstrip("v"),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            capture_start=capture_start.isoformat(),
            capture_end=capture_end.isoformat(),
            source_server_version=source_server_version,
            sources=tuple(sources),
            filters=dict(filters or {}),
            counts={
                "statements": self.statements,
                "sessions": len(session_list),
                "classes": len(class_list),
                **dict(counts or {}),
            },
            workload_id=self._digest.hexdigest()[:32],
            sync=dict(sync or {}),
            source=dict(source or {}),
            preamble_digest=hashlib.sha256(preamble).hexdigest()[:32],
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as out:
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as pre:
                pre.write((_dumps(header.to_json()) + "\n").encode() + preamble)
            with self._body_path.open("rb") as body:
                shutil.copyfileobj(body, out, 1 << 20)
        self._body_path.unlink()
        tmp.replace(self.path)
        return header

    def abort(self) -> None:
        """Drop the partial file."""
        with contextlib.suppress(Exception):
            self._stop()
        self._body.close()
        self._body_path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload file opened for reading: preamble in memory, statements streamed."""

    path: Path
    header: WorkloadHeader
    classes: Mapping[str, QueryClass]
    sessions: Mapping[str, Session]
    preamble_lines: int = -1
    """Lines before the first statement (-1: one header, then one per class and session)."""
    notices: tuple[str, ...] = ()
    """What the reader could not check (a file written before the preamble digest)."""

    @property
    def preamble_size(self) -> int:
        """How many lines come before the first statement."""
        if self.preamble_lines >= 0:
            return self.preamble_lines
        return 1 + len(self.classes) + len(self.sessions)

    @property
    def has_sync(self) -> bool:
        """Whether the file records causal order (format version 2 and later).

        A version 1 file does not: replay it with ``--sync none``.
        """
        return self.header.format_version >= 2

    @property
    def capture_start(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.header.capture_start)

    @property
    def duration_us(self) -> int:
        end = dt.datetime.fromisoformat(self.header.capture_end)
        return int((end - self.capture_start).total_seconds() * 1_000_000)

    def statements(self) -> Iterator[Statement]:
        """Every statement, in offset order."""
        for obj in self.statement_dicts():
            yield Statement.from_json(obj)

    def statement_dicts(self) -> Iterator[dict[str, Any]]:
        """Every statement as its raw JSON object (faster than :meth:`statements`).

        Read to the end, the statements are checked against the header (their count,
        and their digest, the ``workload_id``): an edited or cut file raises
        :class:`WorkloadFormatError` after its last statement."""
        skip = self.preamble_size
        check = _BodyCheck(self)
        with _open(self.path) as fh:
            for number, line in enumerate(fh, start=1):
                if number <= skip:
                    continue
                check.add(line)
                obj = _decode(self.path, number, line)
                if obj.get("type") != "statement":
                    raise WorkloadFormatError(
                        f"{self.path}:{number}: expected a statement record, "
                        f"got {obj.get('type')!r}"
                    )
                yield obj
        check.finish()

    def verify_body(self) -> int:
        """The statements checked against the header as :meth:`statement_dicts` does
        (count, digest), from their bytes without decoding them: several times faster,
        for checking a file before using it. Returns how many there are."""
        skip = self.preamble_size
        check = _BodyCheck(self)
        try:
            with _fast_gzip.open(self.path, "rb") as fh:
                for block in iter(functools.partial(fh.read, 1 << 20), b""):
                    start = 0  # where the statements begin in this block
                    while skip:
                        end = block.find(b"\n", start)
                        if end < 0:
                            start = len(block)
                            break
                        start = end + 1
                        skip -= 1
                    check.add_bytes(block[start:] if start else block)
        except READ_ERRORS as exc:
            raise WorkloadFormatError(
                f"{self.path}: not a readable pgtraffic workload ({exc})",
                hint="the file is truncated or not gzip; capture it again with pgtraffic capture",
            ) from exc
        check.finish()
        return check.count


_EDITED_HINT = (
    "the file was edited or damaged after capture wrote it; capture the logs again "
    "(pgtraffic capture LOG... -o workload.pgtw), or use the copy you made it from"
)


class _BodyCheck:
    """The statement lines as read, checked against the header at the end."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.count = 0
        self.digest = hashlib.sha256()
        self.pending: list[str] = []
        self.tail = b""
        """The last byte given to :meth:`add_bytes`."""

    def add(self, line: str) -> None:
        self.count += 1
        pending = self.pending
        pending.append(line)
        if len(pending) >= 4096:
            self.digest.update("".join(pending).encode())
            pending.clear()

    def add_bytes(self, block: bytes) -> None:
        """Some bytes of the statement lines, as stored (``add`` or this, not both)."""
        if block:
            self.digest.update(block)
            self.count += block.count(b"\n")
            self.tail = block[-1:]

    def finish(self) -> None:
        header, path = self.workload.header, self.workload.path
        self.digest.update("".join(self.pending).encode())
        self.pending.clear()
        if self.tail not in (b"", b"\n"):  # bytes after the last newline: one more line
            self.count += 1
            self.tail = b""
        expected = header.counts.get("statements")
        if expected is not None and expected != self.count:
            raise WorkloadFormatError(
                f"{path} holds {self.count} statements but its header says {expected}",
                hint=_EDITED_HINT,
            )
        # workload_id is checked only in files that have a preamble digest: older
        # writers computed it differently (see docs/workload-format.md)
        if header.preamble_digest and self.digest.hexdigest()[:32] != header.workload_id:
            raise WorkloadFormatError(
                f"{path}: its statements are not the ones it was written with (their "
                f"digest {self.digest.hexdigest()[:12]}... is not the workload_id "
                f"{header.workload_id[:12]}... of its header)",
                hint=_EDITED_HINT,
            )


def _open(path: Path) -> _GuardedText:
    if not path.is_file():
        raise WorkloadFormatError(f"{path}: no such file")
    return _GuardedText(open_text(path), path)


class _GuardedText:
    """Turns gzip/encoding failures while iterating into WorkloadFormatError."""

    def __init__(self, fh: IO[str], path: Path) -> None:
        self._fh = fh
        self._path = path

    def __enter__(self) -> _GuardedText:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._fh
        except READ_ERRORS as exc:
            raise WorkloadFormatError(
                f"{self._path}: not a readable pgtraffic workload ({exc})",
                hint="the file is truncated or not gzip; capture it again with pgtraffic capture",
            ) from exc


def _json_loads() -> Callable[[str], Any]:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency
        return json.loads
    loads: Callable[[str], Any] = orjson.loads
    return loads


loads_record = _json_loads()
"""Decode one JSON line: orjson (a dependency, about four times faster), else json.
Both raise ``json.JSONDecodeError`` (orjson's error is a subclass)."""


def _decode(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        obj = loads_record(line)
    except json.JSONDecodeError as exc:
        raise WorkloadFormatError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise WorkloadFormatError(f"{path}:{number}: expected a JSON object")
    return obj


def read_workload(path: Path | str) -> Workload:
    """Open a workload file, checking its format and version, and its preamble (the
    class and session records) against the header; the statements are checked when
    they are read (:meth:`Workload.statement_dicts`)."""
    path = Path(path)
    header: WorkloadHeader | None = None
    classes: dict[str, QueryClass] = {}
    sessions: dict[str, Session] = {}
    digest = hashlib.sha256()
    preamble = 0
    with _open(path) as fh:
        for number, line in enumerate(fh, start=1):
            obj = _decode(path, number, line)
            kind = obj.get("type")
            if number == 1:
                header = _header(path, obj)
            elif kind == "class":
                cls = QueryClass.from_json(obj)
                classes[cls.fingerprint] = cls
            elif kind == "session":
                session = Session.from_json(obj)
                sessions[session.id] = session
            else:
                break
            preamble = number
            if number > 1:
                digest.update(line.encode())
    if header is None:
        raise WorkloadFormatError(f"{path} is empty")
    notices = _check_preamble(path, header, digest.hexdigest()[:32], classes, sessions)
    return Workload(path, header, classes, sessions, preamble, notices)


def _header(path: Path, obj: dict[str, Any]) -> WorkloadHeader:
    if obj.get("type") != "header" or obj.get("format") != FORMAT:
        raise WorkloadFormatError(
            f"{path} is not a pgtraffic workload file",
            hint="create one with: pgtraffic capture LOG... -o workload.pgtw",
        )
    if obj.get("format_version") not in READS_VERSIONS:
        raise WorkloadFormatError(
            f"{path} has workload format version {obj.get('format_version')}; "
            f"this pgtraffic ({__version__}) reads versions 1 to {FORMAT_VERSION}",
            hint="use the pgtraffic version that wrote it, or capture the logs again",
        )
    return WorkloadHeader.from_json(obj)


def _check_preamble(
    path: Path,
    header: WorkloadHeader,
    digest: str,
    classes: Mapping[str, QueryClass],
    sessions: Mapping[str, Session],
) -> tuple[str, ...]:
    """Raise when the class and session records are not those the header was written
    with; the notices to show for a file too old to be checked."""
    for what, held in (("classes", len(classes)), ("sessions", len(sessions))):
        expected = header.counts.get(what)
        if expected is not None and expected != held:
            raise WorkloadFormatError(
                f"{path} holds {held} {what} but its header says {expected}",
                hint=_EDITED_HINT,
            )
    if not header.preamble_digest:
        return (
            f"{path} was written by pgtraffic {header.pgtraffic_version}, before workload "
            "files recorded a digest of their content: only its counts can be checked",
        )
    if digest != header.preamble_digest:
        raise WorkloadFormatError(
            f"{path}: its class and session records are not the ones it was written with "
            "(their digest does not match the header's preamble_digest)",
            hint=_EDITED_HINT,
        )
    return ()


def check_workload_id(workload: Workload, expected: str, what: str) -> None:
    """Refuse to use ``workload`` with a file (``what``) that names another workload."""
    if expected and workload.header.workload_id and expected != workload.header.workload_id:
        raise WorkloadFormatError(
            f"{workload.path} is not the workload {what} was replayed from (workload_id "
            f"{workload.header.workload_id[:12]}... there, {expected[:12]}... in {what})",
            hint="name the workload file the replay read (it is in the results header)",
        )
