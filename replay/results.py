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
"""

from __future__ import annotations

import array
import json
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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
    """Bytes at the end that did not form a complete chunk (an interrupted write)."""
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

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


def _iter_chunks(data: bytes, path: Path) -> Iterator[tuple[int, int, bytes] | int]:
    """Yield (kind, worker, payload) per chunk, then the count of damaged trailing bytes."""
    pos = _PREAMBLE.size
    end = len(data)
    while pos < end:
        if end - pos < _CHUNK.size:
            yield end - pos
            return
        kind, worker, _, length, crc = _CHUNK.unpack_from(data, pos)
        start = pos + _CHUNK.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            yield end - pos
            return
        yield kind, worker, payload
        pos = start + length
    yield 0


def read_results(path: Path | str) -> Results:
    """Load a results file, tolerating a torn last chunk (an interrupted replay)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ResultsFormatError(f"{path}: no such file") from exc
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
    header: dict[str, Any] | None = None
    strings: list[str | None] = [None]
    global_ids: dict[str | None, int] = {None: 0}
    maps: dict[int, list[int]] = {}
    parts: list[npt.NDArray[Any]] = []
    summaries: list[dict[str, Any]] = []
    final: dict[str, Any] | None = None
    damaged = 0
    for item in _iter_chunks(data, path):
        if isinstance(item, int):
            damaged = item
            break
        kind, worker, payload = item
        if kind == ChunkKind.HEADER:
            header = json.loads(payload)
        elif kind == ChunkKind.STRINGS:
            mapping = maps.setdefault(worker, [0])
            for value in json.loads(payload):
                ident = global_ids.get(value)
                if ident is None:
                    ident = len(strings)
                    strings.append(value)
                    global_ids[value] = ident
                mapping.append(ident)
        elif kind == ChunkKind.RECORDS:
            parts.append(_decode_records(payload, maps.get(worker, [0]), path, version))
        elif kind == ChunkKind.SUMMARY:
            if worker == FINAL_WORKER:
                final = json.loads(payload)
            else:
                summaries.append(json.loads(payload))
    if header is None:
        raise ResultsFormatError(f"{path}: the header chunk is missing or damaged")
    records = np.concatenate(parts) if parts else np.zeros(0, dtype=RECORD_DTYPE)
    return Results(
        path=path,
        header=header,
        records=records,
        strings=tuple(strings),
        summaries=tuple(summaries),
        final=final,
        damaged_bytes=damaged,
    )


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
    """Write every record as CSV with a header row; returns the number of rows."""
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
