"""Where log bytes come from: paths, ``.gz`` files, ``-`` for stdin; format detection.

This is the I/O edge of capture. Everything after it works on bytes handed over
in blocks, so it does not care whether they came from a file, a pipe or gzip.
"""

from __future__ import annotations

import enum
import gzip
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from capture.errors import InputError
from capture.settings import capture_recipe

BLOCK = 1 << 20
_CSV_START = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [^,\n]*,")
_STDERR_START = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ ")


class LogFormat(enum.StrEnum):
    CSVLOG = "csvlog"
    JSONLOG = "jsonlog"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One input as the user named it."""

    name: str
    """The path as given, or ``-`` for stdin."""
    size: int | None
    """Bytes on disk (compressed size for .gz); None for stdin."""
    gzipped: bool


def describe(name: str) -> SourceInfo:
    """Check that ``name`` can be read; say how big it is."""
    if name == "-":
        return SourceInfo("-", None, False)
    path = Path(name)
    if not path.exists():
        raise InputError(f"{name}: no such file", hint="check the path of the log file")
    if path.is_dir():
        raise InputError(
            f"{name} is a directory",
            hint=f"name the log files inside it, e.g. {name.rstrip('/')}/*.csv",
        )
    with path.open("rb") as fh:
        magic = fh.read(2)
    return SourceInfo(name, path.stat().st_size, magic == b"\x1f\x8b")


class _Counting:
    """Counts bytes read from the underlying (compressed) file, for progress."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def read_blocks(info: SourceInfo, block: int = BLOCK) -> Iterator[tuple[bytes, int]]:
    """Yield (data, bytes of the source consumed so far) for one source."""
    raw: IO[bytes] = sys.stdin.buffer if info.name == "-" else Path(info.name).open("rb")  # noqa: SIM115
    try:
        counting = _Counting(raw)
        counting_io = cast("IO[bytes]", counting)
        stream: IO[bytes] = (
            cast("IO[bytes]", gzip.GzipFile(fileobj=counting_io, mode="rb"))
            if info.gzipped
            else counting_io
        )
        first = True
        while True:
            try:
                data = stream.read(block)
            except (OSError, EOFError) as exc:
                raise InputError(
                    f"{info.name}: cannot read it as gzip ({exc})",
                    hint="the .gz file is truncated or damaged; gunzip -t tells more",
                ) from exc
            if not data:
                return
            if first and not info.gzipped and data[:2] == b"\x1f\x8b":
                # stdin: gzip detected from the first bytes
                prefixed = cast("IO[bytes]", _Prefixed(data, counting))
                stream = cast("IO[bytes]", gzip.GzipFile(fileobj=prefixed, mode="rb"))
                first = False
                continue
            first = False
            yield data, counting.count
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


class _Prefixed:
    def __init__(self, prefix: bytes, rest: _Counting) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0 or size >= len(self._prefix):
                data, self._prefix = self._prefix, b""
                return data + (self._rest.read(size - len(data)) if size > 0 else b"")
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._rest.read(size)


def detect_format(head: bytes, name: str) -> LogFormat:
    """Which log format ``head`` (the first bytes of a source) is in."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{") and b'"timestamp"' in text[:200]:
        return LogFormat.JSONLOG
    if _CSV_START.match(text):
        return LogFormat.CSVLOG
    recipe = capture_recipe(include_optional=False)
    if _STDERR_START.match(text):
        raise InputError(
            f"{name}:1: this looks like a stderr-format PostgreSQL log; capture does not read it",
            hint="log as csvlog (or jsonlog) instead; in postgresql.conf:\n" + recipe,
        )
    if not text:
        raise InputError(f"{name} is empty", hint="point capture at a csvlog or jsonlog file")
    raise InputError(
        f"{name}:1: not a PostgreSQL csvlog or jsonlog file (starts with {text[:40]!r})",
        hint="capture reads logs written with log_destination = 'csvlog' or 'jsonlog'; "
        "use --format to force one. postgresql.conf for a capture:\n" + recipe,
    )
