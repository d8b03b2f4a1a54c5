"""Cut a byte stream into chunks of whole log records (pure; no I/O).

Each log format says where a record may end (:meth:`Chunker._cut`) and whether
leftover bytes end inside a record (:meth:`Chunker._ends_inside_record`); the
buffering and line counting are shared here.
"""

from __future__ import annotations


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
        """Whether ``_buf[start:]`` ends inside a record."""
        raise NotImplementedError
