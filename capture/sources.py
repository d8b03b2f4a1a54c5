"""Where log bytes come from: paths, ``-`` for stdin, compressed or not; format detection.

This is the I/O edge of capture. Everything after it works on bytes handed over
in blocks, so it does not care whether they came from a file, a pipe or a
decompressor. Compression is told by the first bytes (gzip, bzip2, xz, zstd),
never by the file name.
"""

from __future__ import annotations

import bz2
import csv
import datetime as dt
import enum
import gzip
import json
import lzma
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, cast

import zstandard

from capture.appstream import SCHEMA_VERSION, stream_version
from capture.errors import InputError
from capture.formats import LogFormat as LogFormat  # re-exported: readers and tests name it here
from capture.platforms import PLATFORM_NAMES, Platform, azure_prefix, detect_platform
from capture.prefix import (
    LinePrefix,
    PrefixError,
    compile_prefix,
    describe_prefix,
    detect_prefix,
    head_lines,
)
from capture.settings import capture_recipe, stderr_recipe, syslog_recipe
from capture.syslog import detect_syslog, looks_like_syslog

BLOCK = 1 << 20
HEAD = 64 << 10
"""Bytes of a source's start that format detection looks at."""


PLATFORM_FORMATS = frozenset({"cloudsql", "azure", "cloudnativepg"})
"""Formats read by :mod:`capture.platforms`."""
RDS_PREFIXES = frozenset({"%t:%r:%u@%d:[%p]:", "%m:%r:%u@%d:[%p]:"})
APPSTREAM_LABEL = "application stream (pgtraffic-app/1)"


class Compression(enum.StrEnum):
    NONE = ""
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    ZSTD = "zstd"


_MAGIC = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
)
_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)
_CHECK_TOOL = {
    Compression.GZIP: "gzip -t",
    Compression.BZIP2: "bzip2 -t",
    Compression.XZ: "xz -t",
    Compression.ZSTD: "zstd -t",
}


def compression_of(magic: bytes) -> Compression:
    """The compression a stream starting with ``magic`` uses (NONE for none)."""
    for start, kind in _MAGIC:
        if magic.startswith(start):
            return kind
    return Compression.NONE


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One input as the user named it."""

    name: str
    """The path as given, or ``-`` for stdin."""
    size: int | None
    """Bytes on disk (compressed size when compressed); None for stdin."""
    compression: Compression

    @property
    def gzipped(self) -> bool:
        """Compressed (with any codec): its bytes are not the log's bytes."""
        return self.compression is not Compression.NONE


def describe(name: str) -> SourceInfo:
    """Check that ``name`` can be read; say how big it is."""
    if name == "-":
        return SourceInfo("-", None, Compression.NONE)
    path = Path(name)
    if not path.exists():
        raise InputError(f"{name}: no such file", hint="check the path of the log file")
    if path.is_dir():
        raise InputError(
            f"{name} is a directory",
            hint=f"name the log files inside it, e.g. {name.rstrip('/')}/*.csv",
        )
    try:
        with path.open("rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror})") from exc
    return SourceInfo(name, path.stat().st_size, compression_of(magic))


class _Counting:
    """Counts bytes read from the underlying (compressed) file, for progress."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def _decompressing(kind: Compression, raw: IO[bytes]) -> IO[bytes]:
    if kind is Compression.GZIP:
        return cast("IO[bytes]", gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind is Compression.BZIP2:
        return cast("IO[bytes]", bz2.BZ2File(raw, mode="rb"))
    if kind is Compression.XZ:
        return cast("IO[bytes]", lzma.LZMAFile(raw, mode="rb"))
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return cast("IO[bytes]", reader)


def read_blocks(info: SourceInfo, block: int = BLOCK) -> Iterator[tuple[bytes, int]]:
    """Yield (data, bytes of the source consumed so far) for one source.

    Compressed data (told by its first bytes, for files and stdin alike) is
    decompressed; the count is of the compressed bytes read.
    """
    raw: IO[bytes] = sys.stdin.buffer if info.name == "-" else Path(info.name).open("rb")  # noqa: SIM115
    try:
        counting = _Counting(raw)
        first = counting.read(block)
        kind = compression_of(first)
        if kind is Compression.NONE:
            if first:
                yield first, counting.count
            stream = cast("IO[bytes]", counting)
        else:
            stream = _decompressing(kind, cast("IO[bytes]", _Prefixed(first, counting)))
        while True:
            try:
                data = stream.read(block)
            except _DECOMPRESS_ERRORS as exc:
                raise InputError(
                    f"{info.name}: cannot read it as {kind.value} ({exc})",
                    hint=f"the file is truncated or damaged; {_CHECK_TOOL.get(kind, 'it')} "
                    "tells more",
                ) from exc
            if not data:
                return
            yield data, counting.count
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


class _Prefixed:
    """The bytes already read, then the rest of the stream."""

    def __init__(self, prefix: bytes, rest: _Counting) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0 or size >= len(self._prefix):
                data, self._prefix = self._prefix, b""
                rest = self._rest.read(size - len(data) if size > 0 else -1) if size else b""
                return data + rest
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._rest.read(size)


# --- format detection ------------------------------------------------------------

_LOG_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_PGBOUNCER = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[\d+\] "
    r"(?:LOG|ERROR|WARNING|NOTICE|DEBUG|NOISE|FATAL) "
)
_SYSLOG = re.compile(
    r"(?:<\d+>)?(?:1 )?"
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*)"
    r" \S+ [\w./-]+(?:\[\d+\])?:? "
)
_CSV_SEVERITIES = frozenset(
    {"LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO", "DEBUG"}
    | {f"DEBUG{i}" for i in range(1, 6)}
)


@dataclass(frozen=True, slots=True)
class Detected:
    """What a source holds: its format, and for stderr the log_line_prefix."""

    format: LogFormat
    label: str
    """How the summary names it."""
    prefix: str = ""


def _first_line(text: str) -> tuple[int, str]:
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            return number, line
    return 1, ""


def _is_csvlog(text: str) -> bool:
    """The first record parses as a csvlog record: 22 to 26 fields, a log time first,
    a severity where csvlog has it."""
    try:
        row = next(csv.reader(text.splitlines()[:200]))
    except (csv.Error, StopIteration):
        return False
    return (
        22 <= len(row) <= 26 and _LOG_TIME.match(row[0]) is not None and row[11] in _CSV_SEVERITIES
    )


def _is_jsonlog(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        obj = json.loads(line)
    except ValueError:
        return '"timestamp"' in line[:200]  # a first record longer than the head
    return isinstance(obj, dict) and "timestamp" in obj


def detect(
    head: bytes, name: str, *, fmt: LogFormat | None = None, prefix: str | None = None
) -> Detected:
    """Which log format ``head`` (the first bytes of a source, decompressed) is in.

    ``fmt`` and ``prefix`` are what the user said (``--format``,
    ``--log-line-prefix``); what is not said is detected. Raises :class:`InputError`
    saying what the file looks like when it is not a PostgreSQL log capture reads.
    """
    text = head.decode("utf-8", "replace").lstrip("\ufeff")
    number, first = _first_line(text)
    if fmt in (None, LogFormat.APPSTREAM) and first.lstrip()[:1] == "{":
        app = _appstream(name, number, first)
        if app is not None or fmt is LogFormat.APPSTREAM:
            return app or Detected(LogFormat.APPSTREAM, APPSTREAM_LABEL)
    if (fmt is None and first.lstrip()[:1] in ("{", "[")) or (fmt and fmt in PLATFORM_FORMATS):
        platform = _platform(text, fmt)
        if platform is not None:
            return platform
    if fmt is None and prefix is None:
        if _is_jsonlog(first.lstrip()):
            return Detected(LogFormat.JSONLOG, LogFormat.JSONLOG.value)
        if _is_csvlog(text.lstrip()):
            return Detected(LogFormat.CSVLOG, LogFormat.CSVLOG.value)
    elif fmt is not None and fmt not in (LogFormat.STDERR, LogFormat.SYSLOG, *PLATFORM_FORMATS):
        return Detected(fmt, fmt.value)
    if not text.strip():
        raise InputError(f"{name} is empty", hint="point capture at a PostgreSQL log file")
    if prefix is not None:
        return _stderr(compile_prefix(prefix), name, detected=False)
    if fmt is LogFormat.SYSLOG or (fmt is None and looks_like_syslog(first)):
        return _syslog(text, name, number, first)
    if _PGBOUNCER.match(first) or _SYSLOG.match(first):  # before any prefix is guessed
        raise _not_a_log(head, name, number, first, stderr=False)
    found = detect_prefix(head_lines(text))
    if found is not None:
        return _stderr(found.prefix, name, detected=True)
    raise _not_a_log(head, name, number, first, stderr=fmt is LogFormat.STDERR)


def _appstream(name: str, number: int, first: str) -> Detected | None:
    """An application stream (docs/app-stream.md), told by its first line's marker."""
    version = stream_version(first)
    if version is None:
        return None
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{name}:{number}: written with app-stream schema version {version}; this "
            f"pgtraffic reads versions up to {SCHEMA_VERSION}",
            hint="upgrade pgtraffic (pip install --upgrade pgtraffic), or have the "
            f"application write version {SCHEMA_VERSION} (docs/app-stream.md)",
        )
    return Detected(LogFormat.APPSTREAM, APPSTREAM_LABEL)


def _platform(text: str, fmt: LogFormat | None) -> Detected | None:
    """A hosting platform's export (Cloud SQL, Azure, CloudNativePG), or None."""
    found = detect_platform(text)
    if found is None:
        if fmt is None:
            return None
        return Detected(fmt, PLATFORM_NAMES[Platform(fmt.value)], f"{fmt.value}:")
    platform, prefix = found
    if platform is Platform.AZURE:
        prefix = azure_prefix(text)
    label = PLATFORM_NAMES[platform]
    if platform is Platform.CLOUDSQL:
        label += f", log_line_prefix '{prefix}'"
    return Detected(LogFormat(platform.value), label, f"{platform.value}:{prefix}")


def _year_of(name: str) -> tuple[int, int]:
    """(year, month) the file was last written: BSD syslog times have no year."""
    try:
        mtime = Path(name).stat().st_mtime if name != "-" else None
    except OSError:
        mtime = None
    moment = dt.datetime.fromtimestamp(mtime, dt.UTC) if mtime else dt.datetime.now(dt.UTC)
    return moment.year, moment.month


def _syslog(text: str, name: str, number: int, first: str) -> Detected:
    year, month = _year_of(name)
    lines = text.split("\n")[:-1] or text.split("\n")
    found = detect_syslog(lines[:2000], year)
    if found is None:
        raise InputError(
            f"this looks like a syslog file, but it holds no PostgreSQL messages capture "
            f"recognizes (an [N-M] sequence number, a level, a log_line_prefix):\n"
            f"{name}:{number}: {first[:200]}",
            hint="capture reads the lines of PostgreSQL's syslog_ident (postgres); "
            "postgresql.conf for a capture through syslog:\n" + syslog_recipe(),
        )
    if found.first_month > month:  # written last year, for the months after now
        found = replace(found, year=year - 1)
    return Detected(LogFormat.SYSLOG, found.describe(), found.encode())


def _stderr(prefix: LinePrefix, name: str, *, detected: bool) -> Detected:
    try:
        prefix.check()
    except PrefixError as exc:
        raise InputError(f"{name}: {exc}", hint=stderr_recipe()) from exc
    label = describe_prefix(prefix, detected=detected)
    if prefix.text in RDS_PREFIXES:
        label = label[:-1] + "; the AWS RDS/Aurora layout)"
    return Detected(LogFormat.STDERR, label, prefix.text)


def _not_a_log(head: bytes, name: str, number: int, first: str, *, stderr: bool) -> InputError:
    where = f"{name}:{number}: {first[:200]}"
    if head[257:262] == b"ustar" or head.startswith((b"PK\x03\x04", b"7z\xbc\xaf")):
        return InputError(
            f"{name} is an archive (tar, zip or 7z), not a log file",
            hint="extract the log files from it and give those to capture",
        )
    if _PGBOUNCER.match(first):
        return InputError(
            f"this looks like a pgbouncer log, not a PostgreSQL server log:\n{where}",
            hint="capture reads the logs of the PostgreSQL server behind pgbouncer; "
            "postgresql.conf for a capture:\n" + capture_recipe(include_optional=False),
        )
    if _SYSLOG.match(first):
        return InputError(
            f"this looks like a syslog file in a layout capture does not read:\n{where}",
            hint="capture reads BSD (RFC 3164) and RFC 5424 syslog files (rsyslog's "
            "RSYSLOG_TraditionalFileFormat, RSYSLOG_FileFormat, "
            "RSYSLOG_SyslogProtocol23Format); postgresql.conf for a capture through "
            "syslog:\n" + syslog_recipe(),
        )
    if stderr or _LOG_TIME.match(first):
        return InputError(
            f"this looks like a stderr-format log, but its log_line_prefix was not "
            f"recognized:\n{where}",
            hint="give it with --log-line-prefix '...' (SHOW log_line_prefix on the server "
            "tells it), or log as csvlog:\n" + capture_recipe(include_optional=False),
        )
    return InputError(
        f"not a PostgreSQL csvlog or jsonlog file, nor a stderr log:\n{where}",
        hint="use --format to force one. postgresql.conf for a capture:\n"
        + capture_recipe(include_optional=False),
    )
