"""Cut a byte stream into chunks of whole log records (pure; no I/O).

Each log format says where a record may end (:meth:`Chunker._cut`) and whether
leftover bytes end inside a record (:meth:`Chunker._ends_inside_record`); the
buffering and line counting are shared here.

:class:`ChunkText` is what every reader's ``parse_chunk`` takes besides the decoder:
one chunk's text and where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChunkText:
    """One chunk to decode: its text, source, first line and how to read it."""

    text: str
    source: str
    first_line: int
    truncated_tail: bool = False
    """The text ends inside a record (the last of a file that was cut short)."""
    check_encoding: bool = False
    """The text was decoded with ``surrogateescape`` because it is not valid UTF-8;
    records holding such bytes are reported and skipped."""
    options: str = ""
    """Format options: stderr's log_line_prefix, syslog's encoded options, a
    platform export's ``platform:prefix``."""

    def lines(self) -> list[str]:
        """The lines of the text, without the empty one after a last newline."""
        lines = self.text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines

    def line_count(self) -> int:
        """How many lines the text has, a last one without its newline included."""
        text = self.text
        return text.count("\n") + (0 if text.endswith("\n") else 1)


def is_utf8(*texts: str) -> bool:
    """True unless one of ``texts`` holds bytes that were not UTF-8 (text decoded with
    ``surrogateescape``: see :attr:`ChunkText.check_encoding`)."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Chunker:
    """Feed bytes, get chunks of whole records, each with the 1-based line number
    of its first line."""

    def __init__(self, target: int = 4 << 20) -> None:
        self._buf = bytearray()
        self._start = 0
        """Where the bytes not yet cut begin in ``_buf`` (dropped at the next feed)."""
        self._target = target
        self._line = 1

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        buf = self._buf
        if self._start:
            del buf[: self._start]
            self._start = 0
        buf += data
        chunks: list[tuple[bytes, int]] = []
        while len(buf) - self._start >= self._target:
            cut = self._cut(self._start)
            if cut is None:
                break
            chunks.append(self._emit(cut))
        return chunks

    def finish(self) -> tuple[bytes, int, bool] | None:
        """The rest, and whether it ends inside a record (a truncated last record)."""
        if len(self._buf) == self._start:
            return None
        truncated = self._ends_inside_record(self._start)
        chunk, line = self._emit(len(self._buf))
        return chunk, line, truncated

    def _emit(self, cut: int) -> tuple[bytes, int]:
        with memoryview(self._buf) as view:
            chunk = bytes(view[self._start : cut])
        self._start = cut
        line = self._line
        self._line += chunk.count(b"\n")
        return chunk, line

    def _cut(self, start: int) -> int | None:
        """Where ``_buf`` may be cut after ``start`` (a record boundary), or None for
        no boundary yet."""
        raise NotImplementedError

    def _ends_inside_record(self, start: int) -> bool:
        """Whether ``_buf[start:]`` ends inside a record: by default, when it does not
        end with a newline."""
        return not self._buf.endswith(b"\n")


class LineChunker(Chunker):
    """Chunks of whole lines (a record is one line)."""

    def _cut(self, start: int) -> int | None:
        newline = self._buf.rfind(b"\n", start)
        return newline + 1 if newline >= 0 else None


class BoundaryChunker(Chunker):
    """Chunks that end at the last record boundary before the target size, or after
    it for a record longer than the target."""

    def _cut(self, start: int) -> int | None:
        size = len(self._buf) - start
        cut = self._search(start, start + min(size, self._target))
        if cut is None and size > self._target:
            cut = self._search(start, len(self._buf))  # a record longer than the target
        return cut

    def _search(self, start: int, end: int) -> int | None:
        """The last record boundary in ``buf[start:end]``, if any: by default the last
        line start where :meth:`_begins_record` says one begins."""
        buf = self._buf
        pos = buf.rfind(b"\n", start, end)
        while pos >= start:
            if self._begins_record(pos + 1):
                return pos + 1
            pos = buf.rfind(b"\n", start, pos)
        return None

    def _begins_record(self, at: int) -> bool:
        """Whether a record may begin at ``buf[at]`` (the start of a line)."""
        raise NotImplementedError
