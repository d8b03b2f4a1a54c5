"""csvlog: split a byte stream at record boundaries, and decode records.

PostgreSQL writes 23 columns before 13, 24 in 13 (``backend_type``) and 26 from
14 (``leader_pid``, ``query_id``). Fields are quoted with doubled quotes inside
and may span lines, so a record boundary is a newline after an even number of
quote characters: :class:`CsvChunker` finds such boundaries with ``bytes.count``
(C speed), which lets chunks be parsed independently, in parallel.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass

from capture.chunking import BoundaryChunker, ChunkText
from capture.decode import RecordDecoder

COLUMNS = {23: "PostgreSQL 12 or older", 24: "PostgreSQL 13", 26: "PostgreSQL 14 or newer"}
_RECORD_START = re.compile(rb"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

csv.field_size_limit(sys.maxsize)  # statements and parameter lists can be huge


class CsvChunker(BoundaryChunker):
    """Feed bytes, get chunks that end at record boundaries.

    Each chunk comes with the 1-based line number of its first line. A stray quote
    in a garbage line would make every later newline look quoted; after
    ``max_pending`` bytes without a boundary the chunker resynchronizes at the
    last line that starts like a csvlog record.
    """

    def __init__(self, target: int = 4 << 20, max_pending: int = 64 << 20) -> None:
        super().__init__(target)
        self._max_pending = max_pending

    def _ends_inside_record(self, start: int) -> bool:
        return self._buf.count(b'"', start) % 2 == 1

    def _search(self, start: int, end: int) -> int | None:
        """The last record boundary in ``buf[start:end]``, if any."""
        buf = self._buf
        limit = end
        odd = buf.count(b'"', start, end) % 2
        pos = buf.rfind(b"\n", start, end)
        while pos >= start:
            # parity of buf[start:pos+1] = parity of buf[start:end] minus the suffix's
            odd ^= buf.count(b'"', pos + 1, end) % 2
            if not odd:
                return pos + 1
            end = pos + 1
            pos = buf.rfind(b"\n", start, pos)
        if limit == len(buf) and limit - start > self._max_pending:
            # no boundary in max_pending bytes: a stray quote; cut before the last
            # line that starts like a record
            last = None
            for last in _RECORD_START.finditer(buf, start):  # noqa: B007
                pass
            if last is not None and last.start() > start:
                return last.start() + 1
            return len(buf)
        return None


def parse_chunk(decoder: RecordDecoder, chunk: ChunkText) -> None:
    """Decode every record of a chunk from :class:`CsvChunker` into ``decoder``."""
    text, source, first_line = chunk.text, chunk.source, chunk.first_line
    truncated_tail, check_encoding = chunk.truncated_tail, chunk.check_encoding
    ends_without_newline = not text.endswith("\n")
    if not (truncated_tail or ends_without_newline or check_encoding):
        rows = _one_line_rows(text)
        if rows is not None:
            check = _RowCheck(decoder, source, -1, truncated_tail=False, check_encoding=False)
            decoder.add_csv_rows(source, first_line, rows, check)
            decoder.result.lines += len(rows)
            return
    reader = csv.reader(io.StringIO(text))
    total = chunk.line_count() if (truncated_tail or ends_without_newline) else -1
    check = _RowCheck(decoder, source, total, truncated_tail, check_encoding)
    before = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            decoder.problem(source, first_line + before, "unreadable csv", str(exc))
            before = reader.line_num
            continue
        line = first_line + before
        before = reader.line_num
        check(line, row, before)
    decoder.result.lines += before


def _one_line_rows(text: str) -> list[list[str]] | None:
    """Every row of ``text`` when it is valid csv and each record is one line, else None.

    The usual chunk: then the whole chunk is split by the csv module at once, and
    a record's line number is its index. The reader gets the lines without their
    newline (cheaper than a StringIO); that changes nothing for a one-line record,
    and a record that spans lines uses more lines than rows, so it is noticed.
    """
    lines = text.split("\n")
    lines.pop()  # after the last newline
    reader = csv.reader(lines)
    try:
        rows = list(reader)
    except csv.Error:
        return None
    return rows if reader.line_num == len(rows) else None


@dataclass(slots=True)
class _RowCheck:
    """Checks one row of a chunk and hands it to the decoder, or reports a problem."""

    decoder: RecordDecoder
    source: str
    total: int
    """Lines in the chunk, or -1 when it ends with a complete record."""
    truncated_tail: bool
    check_encoding: bool
    checked: str = ""
    """The last YYYY-MM-DD HH:MM:SS prefix seen to match _LOOKS_LIKE_TIME."""

    def __call__(self, line: int, row: list[str], before: int = -1) -> None:
        """``before``: lines of the chunk up to the end of this row (-1: not needed)."""
        decoder, source, total = self.decoder, self.source, self.total
        ncols = len(row)
        good = False
        if ncols in COLUMNS:
            # log times repeat for many records: match the pattern once per second
            head = row[0][:19]
            if head == self.checked or _LOOKS_LIKE_TIME.match(head) is not None:
                self.checked = head
                good = True
        if not good:
            if total >= 0 and before >= total:
                decoder.problem(source, line, "truncated record at end of file")
            elif ncols <= 1 and not "".join(row).strip():
                pass
            else:
                decoder.problem(
                    source,
                    line,
                    "not a csvlog record",
                    f"{ncols} fields; csvlog has 23, 24 or 26: {','.join(row)[:80]!r}",
                )
        elif self.truncated_tail and before >= total:
            decoder.problem(source, line, "truncated record at end of file")
        elif self.check_encoding and not _is_clean(row):
            decoder.problem(source, line, "not UTF-8", "the record holds bytes that are not UTF-8")
        else:
            decoder.add_csv_row(source, line, row, ncols)


def _is_clean(row: list[str]) -> bool:
    try:
        for value in row:
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
