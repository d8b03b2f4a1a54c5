"""The results file: what one replay did, statement by statement, written as it runs.

Layout (little-endian)::

    b"PGTRES" u16 format_version
    chunk*

    chunk := u8 kind, u8 worker, u16 reserved, u32 length, u32 crc32(payload), payload

Chunk kinds:

``HEADER`` (JSON)
    target identity and settings, pgtraffic version, workload id, speed, start time.
``STRINGS`` (JSON list)
    strings appended to the writing worker's intern table; ids start at 1, 0 is "none".
    Sessions, fingerprints and SQLSTATEs are stored as ids into that table.
``RECORDS`` (zlib)
    u32 count, then each column of :data:`RECORD_DTYPE` as a packed array.
``SUMMARY`` (JSON)
    a worker's counters at its end (connections, skipped statements), or with worker
    255 the replay's final word (completed or interrupted, run time).

Every worker process appends whole chunks with one ``write`` on an ``O_APPEND``
descriptor, a STRINGS chunk always in the same write as the RECORDS chunk that
needs it. A replay killed with ``kill -9`` therefore leaves a file whose chunks are
all complete except perhaps the last, which the reader drops (and says so): at
most one flush interval of statements is lost.

The reader tells the two ways a file can be incomplete apart:

* its **tail is missing** (the last chunk is cut short, nothing valid follows): the
  writer was killed, or the file was cut short when copied. The chunks before are
  read; :attr:`Results.torn_tail` counts the bytes dropped, and without the final
  summary the run reads as interrupted.
* it is **damaged in the middle** (a chunk whose checksum fails, or bytes that are
  no chunk, with intact chunks after them): that is not an interruption, and the
  file is refused (:class:`~replay.errors.ResultsFormatError`) unless the caller
  accepts damage (``--accept-damaged``); then the intact chunks are read, the
  damaged regions are listed in :attr:`Results.damage`, and the records a lost
  STRINGS chunk would have named are dropped too (counted).

The file is written under its final name (a killed replay must leave it readable
there); the CLI refuses to replace an existing file without ``--force``.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.outputs import atomic_output
from replay.errors import ResultsFormatError

MAGIC = b"PGTRES"
FORMAT = "pgtraffic-results"
FORMAT_VERSION = 2
"""Version 2 added ``sync_wait_us``; version-1 files are still read (with zeros)."""
READABLE_VERSIONS = (1, 2)
SUFFIX = ".pgtr"
FINAL_WORKER = 255

_PREAMBLE = struct.Struct("<6sH")
_CHUNK = struct.Struct("<BBHII")


class ChunkKind:
    HEADER = 1
    STRINGS = 2
    RECORDS = 3
    SUMMARY = 4


RECORD_DTYPE = np.dtype(
    [
        ("session", "<u4"),
        ("index", "<u4"),
        ("fingerprint", "<u4"),
        ("intended_us", "<i8"),
        ("start_us", "<i8"),
        ("service_us", "<i8"),
        ("rows", "<i8"),
        ("sqlstate", "<u4"),
        ("original_sqlstate", "<u4"),
        ("sync_wait_us", "<i8"),
    ]
)
"""One replayed statement. String fields are ids into :attr:`Results.strings`.

``intended_us`` and ``start_us`` are microseconds after the replay's shared start;
``service_us`` is send to completion; ``rows`` is -1 when the command tag has no
count (or the statement failed); ``sqlstate`` 0 means it succeeded;
``sync_wait_us`` is how long it waited for other sessions' commits (``--sync``).
"""

CSV_COLUMNS = (
    "session",
    "index",
    "fingerprint",
    "intended_us",
    "start_us",
    "service_us",
    "rows",
    "sqlstate",
    "original_sqlstate",
    "sync_wait_us",
)
"""The record columns, in file order (the CSV export's columns too)."""

_V1_COLUMNS = CSV_COLUMNS[:9]
"""The columns of a version-1 file."""

Row = tuple[str, int, str, int, int, int, int, str | None, str | None]
"""A record's first nine columns as Python values (:meth:`Results.rows`)."""

InternedRow = tuple[int, int, int, int, int, int, int, int, int, int]
"""A record with its string fields already interned (:meth:`ResultsWriter.intern`)."""

_ARRAY_CODES = tuple({"<u4": "I", "<i8": "q"}[RECORD_DTYPE[name].str] for name in CSV_COLUMNS)
"""array.array type codes of the record columns, in file order."""
_NATIVE_LITTLE = (
    sys.byteorder == "little" and array.array("I").itemsize == 4 and array.array("q").itemsize == 8
)


def _chunk(kind: int, worker: int, payload: bytes) -> bytes:
    return _CHUNK.pack(kind, worker, 0, len(payload), zlib.crc32(payload)) + payload


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def create_results_file(path: Path, header: Mapping[str, Any]) -> None:
    """Start a results file (replacing any old one) with its header chunk."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **header}
    data = _PREAMBLE.pack(MAGIC, FORMAT_VERSION) + _chunk(
        ChunkKind.HEADER, FINAL_WORKER, _json_bytes(body)
    )
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class ResultsWriter:
    """Appends one worker's statement records to a results file.

    :meth:`add` buffers; the buffer goes to disk when ``capacity`` records are
    pending and whenever :meth:`flush` is called (the engine does so a few times a
    second), so an interrupted run loses at most that much.
    """

    def __init__(self, path: Path, *, worker: int = 0, capacity: int = 8192) -> None:
        if not 0 <= worker < FINAL_WORKER:
            raise ValueError(f"worker must be in [0, {FINAL_WORKER})")
        self.path = path
        self.worker = worker
        self.capacity = capacity
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._ids: dict[str, int] = {}
        self._new_strings: list[str] = []
        self._rows: list[InternedRow] = []
        self.written = 0
        self.ids = self._ids
        """The intern table (read-only for callers): ``ids.get(s) or intern(s)``."""

    def intern(self, value: str | None) -> int:
        if value is None:
            return 0
        ident = self._ids.get(value)
        if ident is None:
            ident = len(self._ids) + 1
            self._ids[value] = ident
            self._new_strings.append(value)
        return ident

    def add(
        self,
        session: str,
        index: int,
        fingerprint: str,
        intended_us: int,
        start_us: int,
        service_us: int,
        rows: int,
        sqlstate: str | None,
        original_sqlstate: str | None,
        sync_wait_us: int = 0,
    ) -> None:
        intern = self.intern
        self._rows.append(
            (
                intern(session),
                index,
                intern(fingerprint),
                intended_us,
                start_us,
                service_us,
                rows,
                intern(sqlstate),
                intern(original_sqlstate),
                sync_wait_us,
            )
        )
        if len(self._rows) >= self.capacity:
            self.flush()

    def add_interned(self, row: InternedRow) -> None:
        """:meth:`add` for a record whose strings are already ids from :meth:`intern`."""
        rows = self._rows
        rows.append(row)
        if len(rows) >= self.capacity:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        parts = [struct.pack("<I", len(self._rows))]
        if _NATIVE_LITTLE:
            parts.extend(
                array.array(code, column).tobytes()
                for code, column in zip(_ARRAY_CODES, zip(*self._rows, strict=True), strict=True)
            )
        else:
            records = np.array(self._rows, dtype=RECORD_DTYPE)
            parts.extend(np.ascontiguousarray(records[name]).tobytes() for name in CSV_COLUMNS)
        data = b""
        if self._new_strings:
            data += _chunk(ChunkKind.STRINGS, self.worker, _json_bytes(self._new_strings))
        data += _chunk(ChunkKind.RECORDS, self.worker, zlib.compress(b"".join(parts), 1))
        _write_all(self._fd, data)
        self.written += len(self._rows)
        self._rows.clear()
        self._new_strings = []

    def write_summary(self, summary: Mapping[str, Any], *, final: bool = False) -> None:
        """Append a summary chunk (this worker's counters, or the final word)."""
        self.flush()
        worker = FINAL_WORKER if final else self.worker
        _write_all(self._fd, _chunk(ChunkKind.SUMMARY, worker, _json_bytes(dict(summary))))

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1


def append_final_summary(path: Path, summary: Mapping[str, Any]) -> None:
    """Append the replay's final summary chunk (written by the coordinating process)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        _write_all(fd, _chunk(ChunkKind.SUMMARY, FINAL_WORKER, _json_bytes(dict(summary))))
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True, slots=True)
class Results:
    """A results file loaded into memory: header, records array, summaries."""

    path: Path
    header: dict[str, Any]
    records: npt.NDArray[Any]
    """Structured array of :data:`RECORD_DTYPE`, string fields as ids into ``strings``."""
    strings: tuple[str | None, ...]
    """The global string table; id 0 is None."""
    summaries: tuple[dict[str, Any], ...] = ()
    """Per-worker summaries, in the order written."""
    final: dict[str, Any] | None = None
    """The final summary; None when the replay was killed before writing it."""
    damaged_bytes: int = 0
    """Bytes at the end that did not form a complete chunk (the tail is missing: an
    interrupted write, or a file cut short)."""
    counts: dict[str, int] = field(default_factory=dict)
    damage: tuple[DamagedRegion, ...] = ()
    """Regions in the middle of the file that could not be read (only when the file
    was read with ``accept_damaged``; otherwise such a file is refused)."""
    lost_records: int = 0
    """Intact records dropped because the strings they name were in a damaged chunk."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def torn_tail(self) -> int:
        """Bytes at the end that did not form a complete chunk."""
        return self.damaged_bytes

    @property
    def incomplete(self) -> bool:
        """Whether the file holds less than the whole run: the replay did not finish,
        its tail is missing, or it is damaged."""
        return self.final is None or bool(self.damaged_bytes or self.damage)

    def incompleteness(self) -> list[str]:
        """Why the file holds less than the whole run, one sentence each ([]: complete)."""
        out = [region.describe() for region in self.damage]
        if self.lost_records:
            out.append(
                f"{self.lost_records} intact records were dropped: the strings they name "
                "were in a damaged chunk"
            )
        if self.damaged_bytes:
            out.append(
                f"the file ends inside a chunk ({self.damaged_bytes} bytes ignored): the "
                "replay was killed, or the file was cut short"
            )
        if self.final is None:
            out.append("the replay's final summary is missing: it did not finish")
        return out

    def strings_of(self, column: str) -> npt.NDArray[np.object_]:
        """A string column decoded into an object array (None where absent)."""
        table = np.array(self.strings, dtype=object)
        return table[self.records[column]]  # type: ignore[no-any-return]

    def string_id(self, value: str | None) -> int | None:
        """The id of ``value`` in the string table, or None when it never occurs."""
        try:
            return self.strings.index(value)
        except ValueError:
            return None

    def rows(self) -> Iterator[Row]:
        """Each record's first nine columns (:data:`CSV_COLUMNS` order, without
        ``sync_wait_us``, which ``records`` holds) as Python values."""
        strings = self.strings
        for rec in self.records.tolist():
            session, index, fp, intended, start, service, rows, state, orig, _ = rec
            yield (
                strings[session] or "",
                index,
                strings[fp] or "",
                intended,
                start,
                service,
                rows,
                strings[state],
                strings[orig],
            )


@dataclass(frozen=True, slots=True)
class DamagedRegion:
    """Bytes in the middle of a results file that are not an intact chunk."""

    offset: int
    length: int
    reason: str
    kind: int | None = None
    """The chunk kind its header names, when the header is readable."""
    worker: int | None = None

    def describe(self) -> str:
        return f"{self.length} damaged bytes at byte {self.offset} ({self.reason})"


_KINDS = frozenset({ChunkKind.HEADER, ChunkKind.STRINGS, ChunkKind.RECORDS, ChunkKind.SUMMARY})
_CHUNK_START = re.compile(rb"[\x01-\x04][\x00-\xff]\x00\x00", re.DOTALL)
"""Where a chunk header may begin: a known kind, any worker, the reserved zeros."""


def _chunk_at(data: bytes, pos: int) -> tuple[int, int, bytes] | str:
    """The chunk at ``pos``, or why there is none ("short": it runs past the end)."""
    end = len(data)
    if end - pos < _CHUNK.size:
        return "short"
    kind, worker, reserved, length, crc = _CHUNK.unpack_from(data, pos)
    if kind not in _KINDS or reserved != 0:
        return "not a chunk header"
    start = pos + _CHUNK.size
    if start + length > end:
        return "short"
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return "checksum mismatch"
    return kind, worker, payload


def _next_chunk(data: bytes, pos: int) -> int | None:
    """The offset of the next intact chunk after ``pos`` (a resynchronization)."""
    for match in _CHUNK_START.finditer(data, pos + 1):
        if not isinstance(_chunk_at(data, match.start()), str):
            return match.start()
    return None


def _iter_chunks(data: bytes) -> Iterator[tuple[int, int, bytes] | DamagedRegion | int]:
    """Yield (kind, worker, payload) per intact chunk and a :class:`DamagedRegion` per
    unreadable region followed by intact chunks; last, the count of bytes of a torn
    tail (bytes after the last intact chunk that hold none)."""
    pos = _PREAMBLE.size
    end = len(data)
    while pos < end:
        found = _chunk_at(data, pos)
        if not isinstance(found, str):
            yield found
            pos += _CHUNK.size + len(found[2])
            continue
        after = _next_chunk(data, pos)
        if after is None:
            if found == "short" or not data[pos:].strip(b"\0"):  # zeros: a crash's tail
                yield end - pos
                return
            yield DamagedRegion(pos, end - pos, found, *_header_of(data, pos))
            yield 0
            return
        yield DamagedRegion(pos, after - pos, found, *_header_of(data, pos))
        pos = after
    yield 0


def _header_of(data: bytes, pos: int) -> tuple[int | None, int | None]:
    """The kind and worker a damaged chunk's header names, when they look right."""
    if len(data) - pos < _CHUNK.size:
        return None, None
    kind, worker, reserved, _, _ = _CHUNK.unpack_from(data, pos)
    if kind not in _KINDS or reserved != 0:
        return None, None
    return kind, worker


def _refuse_damage(path: Path, damage: list[DamagedRegion], intact_after: int) -> None:
    first = damage[0]
    more = f" and {len(damage) - 1} more damaged regions" if len(damage) > 1 else ""
    raise ResultsFormatError(
        f"{path} is damaged: {first.describe()}{more}, with {intact_after} intact chunks "
        "after it. This is damage to the file, not an interrupted replay; its figures "
        "would describe only part of the run",
        hint="copy the file again from where the replay wrote it, or replay again; "
        "--accept-damaged reads the intact chunks, and every output then says the "
        "results are incomplete",
    )


def read_results(path: Path | str, *, accept_damaged: bool = False) -> Results:
    """Load a results file, tolerating a torn last chunk (an interrupted replay).

    A file damaged in the middle is refused (:class:`ResultsFormatError`) unless
    ``accept_damaged``: then what is intact is read and the damage listed
    (:attr:`Results.damage`, :meth:`Results.incompleteness`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ResultsFormatError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ResultsFormatError(f"{path} is a folder, not a results file") from exc
    except OSError as exc:
        raise ResultsFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(data) < _PREAMBLE.size or data[: len(MAGIC)] != MAGIC:
        raise ResultsFormatError(
            f"{path} is not a pgtraffic results file",
            hint="create one with: pgtraffic replay WORKLOAD --target DSN -o run.pgtr",
        )
    (_, version) = _PREAMBLE.unpack_from(data, 0)
    if version not in READABLE_VERSIONS:
        raise ResultsFormatError(
            f"{path} has results format version {version}; this pgtraffic reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}",
            hint="use the pgtraffic version that wrote it",
        )
    loader = _Loader(path, version)
    items = list(_iter_chunks(data))
    torn = items.pop()
    assert isinstance(torn, int)
    damage = [item for item in items if isinstance(item, DamagedRegion)]
    if damage and not accept_damaged:
        first = items.index(damage[0])
        _refuse_damage(path, damage, sum(1 for i in items[first:] if isinstance(i, tuple)))
    for item in items:
        if isinstance(item, DamagedRegion):
            loader.lose(item)
        elif not isinstance(item, int):
            kind, worker, payload = item
            loader.take(kind, worker, payload)
    if loader.header is None:
        raise ResultsFormatError(f"{path}: the header chunk is missing or damaged")
    records = np.concatenate(loader.parts) if loader.parts else np.zeros(0, dtype=RECORD_DTYPE)
    return Results(
        path=path,
        header=loader.header,
        records=records,
        strings=tuple(loader.strings),
        summaries=tuple(loader.summaries),
        final=loader.final,
        damaged_bytes=torn,
        damage=tuple(damage),
        lost_records=loader.lost_records,
    )


class _Loader:
    """Builds a :class:`Results` from intact chunks, in file order."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version
        self.header: dict[str, Any] | None = None
        self.strings: list[str | None] = [None]
        self.global_ids: dict[str | None, int] = {None: 0}
        self.maps: dict[int, list[int]] = {}
        self.parts: list[npt.NDArray[Any]] = []
        self.summaries: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self.untrusted: set[int] | None = set()
        """Workers whose string table lost a chunk (None: perhaps every worker's)."""
        self.lost_records = 0

    def lose(self, region: DamagedRegion) -> None:
        """A damaged region: if it may have held strings, later records of its worker
        (of every worker when its header is unreadable) cannot be decoded."""
        if region.kind is None or region.worker is None:
            self.untrusted = None
        elif region.kind == ChunkKind.STRINGS and self.untrusted is not None:
            self.untrusted.add(region.worker)

    def take(self, kind: int, worker: int, payload: bytes) -> None:
        if kind == ChunkKind.HEADER:
            self.header = json.loads(payload)
        elif kind == ChunkKind.STRINGS:
            mapping = self.maps.setdefault(worker, [0])
            for value in json.loads(payload):
                ident = self.global_ids.get(value)
                if ident is None:
                    ident = len(self.strings)
                    self.strings.append(value)
                    self.global_ids[value] = ident
                mapping.append(ident)
        elif kind == ChunkKind.RECORDS:
            if self.untrusted is None or worker in self.untrusted:
                with contextlib.suppress(zlib.error, struct.error):
                    self.lost_records += struct.unpack_from("<I", zlib.decompress(payload))[0]
                return
            mapping = self.maps.get(worker, [0])
            self.parts.append(_decode_records(payload, mapping, self.path, self.version))
        elif kind == ChunkKind.SUMMARY:
            if worker == FINAL_WORKER:
                self.final = json.loads(payload)
            else:
                self.summaries.append(json.loads(payload))


def _decode_records(
    payload: bytes, mapping: list[int], path: Path, version: int = FORMAT_VERSION
) -> npt.NDArray[Any]:
    try:
        raw = zlib.decompress(payload)
    except zlib.error as exc:
        raise ResultsFormatError(f"{path}: a records chunk does not decompress") from exc
    (count,) = struct.unpack_from("<I", raw, 0)
    out = np.zeros(count, dtype=RECORD_DTYPE)
    pos = 4
    for name in CSV_COLUMNS if version >= 2 else _V1_COLUMNS:
        dtype = RECORD_DTYPE[name]
        size = dtype.itemsize * count
        out[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
        pos += size
    table = np.asarray(mapping, dtype=np.uint32)
    for name in ("session", "fingerprint", "sqlstate", "original_sqlstate"):
        ids = out[name]
        if count and int(ids.max()) >= len(table):
            raise ResultsFormatError(f"{path}: a records chunk refers to unknown strings")
        out[name] = table[ids]
    return out


def export_csv(results: Results, out: Path) -> int:
    """Write every record as CSV with a header row; returns the number of rows.

    Written under a temporary name and renamed over ``out`` when complete."""
    with atomic_output(out) as tmp:
        return _write_csv(results, tmp)


def _write_csv(results: Results, out: Path) -> int:
    import csv

    count = 0
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        waits = results.records["sync_wait_us"].tolist()
        for row, wait in zip(results.rows(), waits, strict=True):
            session, index, fp, intended, start, service, rows, state, orig = row
            writer.writerow(
                (
                    session,
                    index,
                    fp,
                    intended,
                    start,
                    service,
                    "" if rows < 0 else rows,
                    state or "",
                    orig or "",
                    wait,
                )
            )
            count += 1
    return count
