"""Inputs that repeat each other: the same file twice, or rotated copies that overlap.

``capture a.csv a.csv`` would count every statement twice, and so would two copies
of a log taken while PostgreSQL was writing it (``postgresql.csv`` copied at 10:00
and again at 11:00: the second starts with all of the first). The rule, for logs
given oldest first (see docs/capture.md, "The same records twice"):

* A file given twice (the same file by :meth:`pathlib.Path.samefile`: one path twice,
  a symlink, a hard link) is read once; its later mentions are skipped whole.
* The start of a file that repeats, byte for byte, the end of the file given just
  before it is skipped. The repeated part begins at the start of a line of the
  earlier file that is the later file's first line, and ends at the last line end
  of the earlier file (its torn last record, if any, is read from the later one).
  The bytes are compared by SHA-256, so nothing is skipped that is not the same.

Skipped records are counted (``duplicate records``) with where they were, as any
skipped record is. Standard input as the later file is not checked (it cannot be
read twice). Everything here works on the bytes a log's reader sees (decompressed).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture.sources import SourceInfo, read_blocks

DUPLICATE = "duplicate records (also in an earlier file)"
"""The skip reason the capture summary shows."""
_MIN_PROBE = 16
"""A first line shorter than this is too common to tell a repetition by."""
_MAX_CANDIDATES = 8
_TIME_START = re.compile(rb"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_JSON_START = re.compile(rb"(?m)^\{")


@dataclass(frozen=True, slots=True)
class Start:
    """Where reading a file begins: after the part an earlier file already held."""

    skip_bytes: int = 0
    skip_lines: int = 0
    whole: bool = False
    """The whole file was skipped (the same file as an earlier one)."""

    @property
    def skipped(self) -> bool:
        return self.whole or self.skip_bytes > 0


def count_records(window: bytes, probe: bytes, pos: int = 0) -> int:
    """Records beginning in ``window[pos:]``, told by lines that begin as the file's
    first line (``probe``) does: a log time (csvlog, stderr), ``{`` (jsonlog), else
    every line end. ``window[pos - 1]`` tells whether ``pos`` is a line start."""
    if _TIME_START.match(probe):
        return len(_TIME_START.findall(window, pos))
    if probe[:1] == b"{":
        return len(_JSON_START.findall(window, pos))
    return window.count(b"\n", pos)


class _Candidate:
    """A place in the earlier file where the later file's first line occurs."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.hash = hashlib.sha256()
        self.length = 0
        self.at_newline: Any = hashlib.sha256()
        """The hash up to the last line end seen, and :attr:`newline_length` its length."""
        self.newline_length = 0

    def update(self, data: bytes) -> None:
        newline = data.rfind(b"\n")
        if newline < 0:
            self.hash.update(data)
            self.length += len(data)
            return
        self.hash.update(data[: newline + 1])
        self.length += newline + 1
        self.at_newline, self.newline_length = self.hash.copy(), self.length
        self.hash.update(data[newline + 1 :])
        self.length += len(data) - newline - 1


class InputOverlaps:
    """Finds the repeated inputs of one capture while its files are read in order.

    :meth:`blocks` replaces :func:`capture.sources.read_blocks` for the file at
    ``index``; :meth:`start` then says where reading it began, :meth:`skipped`
    what was skipped.
    """

    def __init__(self, infos: Sequence[SourceInfo]) -> None:
        self.infos = infos
        self.same_as: dict[int, int] = {}
        for later, info in enumerate(infos):
            for earlier in range(later):
                if _same_file(infos[earlier], info):
                    self.same_as[later] = earlier
                    break
        self.probes: dict[int, bytes] = {}
        self.candidates: dict[int, list[_Candidate]] = {}
        """For file i + 1: the places in file i where its first line occurs."""
        self.starts: dict[int, Start] = {}
        self.notes: list[tuple[int, str]] = []

    def start(self, index: int) -> Start:
        return self.starts.get(index, Start())

    def skipped(self) -> list[tuple[str, int, list[str]]]:
        """(reason, records, where) for the summary's skipped records."""
        if not self.notes:
            return []
        return [(DUPLICATE, sum(n for n, _ in self.notes), [where for _, where in self.notes])]

    def blocks(self, index: int, info: SourceInfo) -> Iterator[tuple[bytes, int]]:
        """The blocks of file ``index`` (as ``read_blocks``) after what repeats an
        earlier file, watching them for the next file's first line."""
        if index in self.same_as:
            self._skip_whole(index, info)
            return
        probe = self._probe(index + 1)
        watch = _Watch(probe, self.candidates.setdefault(index + 1, []))
        for data, consumed in self._after_repeat(index, info):
            watch.feed(data)
            yield data, consumed

    def _skip_whole(self, index: int, info: SourceInfo) -> None:
        probe, records, last = b"", 0, b"\n"
        for data, _ in read_blocks(info):
            probe = probe or data[:64]
            records += count_records(last + data, probe, 1)
            last = data[-1:]
        self.starts[index] = Start(whole=True)
        earlier = self.infos[self.same_as[index]].name
        self.notes.append((records, f"{info.name} (the same file as {earlier}, given again)"))

    def _probe(self, index: int) -> bytes:
        """The first line of file ``index`` (b"": none to look for)."""
        if index >= len(self.infos) or index in self.same_as or self.infos[index].name == "-":
            return b""
        for data, _ in read_blocks(self.infos[index]):
            newline = data.find(b"\n")
            line = data[: newline + 1] if newline >= 0 else b""
            self.probes[index] = line if len(line) >= _MIN_PROBE else b""
            break
        return self.probes.get(index, b"")

    def _after_repeat(self, index: int, info: SourceInfo) -> Iterator[tuple[bytes, int]]:
        """read_blocks of file ``index`` without the start that repeats file index - 1."""
        wanted = {
            c.newline_length: c.at_newline.digest()
            for c in self.candidates.get(index, [])
            if c.newline_length
        }
        match = _verify(info, wanted, self.probes.get(index, b"")) if wanted else None
        if match is None:
            yield from read_blocks(info)
            return
        length, lines, records = match
        self.starts[index] = Start(skip_bytes=length, skip_lines=lines)
        earlier = self.infos[index - 1].name
        self.notes.append((records, f"{info.name}:1-{lines} (the end of {earlier} again)"))
        left = length
        for data, consumed in read_blocks(info):
            if left >= len(data):
                left -= len(data)
                continue
            yield data[left:], consumed
            left = 0


def _verify(
    info: SourceInfo, wanted: dict[int, bytes], probe: bytes
) -> tuple[int, int, int] | None:
    """The longest start of the file whose SHA-256 is the one wanted for its length:
    (bytes, lines, records), or None."""
    longest = max(wanted)
    digest = hashlib.sha256()
    read = lines = records = 0
    last = b"\n"
    best: tuple[int, int, int] | None = None
    for data, _ in read_blocks(info):
        piece = data[: longest - read]
        cuts = sorted(n - read for n in wanted if read < n <= read + len(piece))
        done = 0
        for cut in cuts:
            part = piece[done:cut]
            digest.update(part)
            lines += part.count(b"\n")
            records += count_records(last + part, probe, 1)
            last = part[-1:] or last
            done = cut
            if digest.digest() == wanted[read + cut]:
                best = (read + cut, lines, records)
        rest = piece[done:]
        digest.update(rest)
        lines += rest.count(b"\n")
        records += count_records(last + rest, probe, 1)
        last = rest[-1:] or last
        read += len(piece)
        if read >= longest:
            break
    return best


class _Watch:
    """Looks for a probe line at line starts of a stream and hashes from each hit on."""

    def __init__(self, probe: bytes, candidates: list[_Candidate]) -> None:
        self.probe = probe
        self.candidates = candidates
        self.pos = 0
        self.tail = b"\n"
        """The last bytes before the current block, where a hit may begin (and the
        byte before it, to tell a line start); at first the line end before the file."""

    def feed(self, data: bytes) -> None:
        probe = self.probe
        if not probe:
            return
        for candidate in self.candidates:
            candidate.update(data)
        window = self.tail + data
        keep = len(self.tail)
        base = self.pos - keep
        """The offset in the file of ``window[0]``."""
        at = window.find(probe, 1)
        while at >= 0 and len(self.candidates) < _MAX_CANDIDATES:
            # a hit wholly inside the tail was found with the block before
            if at + len(probe) > keep and window[at - 1] == 0x0A:
                candidate = _Candidate(base + at)
                candidate.update(window[at:])
                self.candidates.append(candidate)
            at = window.find(probe, at + 1)
        self.pos += len(data)
        self.tail = window[-(len(probe) + 1) :]


def _same_file(a: SourceInfo, b: SourceInfo) -> bool:
    if a.name == "-" or b.name == "-":
        return False
    try:
        return Path(a.name).samefile(b.name)
    except OSError:
        return False
