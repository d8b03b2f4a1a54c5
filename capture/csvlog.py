"""csvlog: split a byte stream at record boundaries, and decode records.

PostgreSQL writes 23 columns before 13, 24 in 13 (``backend_type``) and 26 from
14 (``leader_pid``, ``query_id``). Fields are quoted with doubled quotes inside
and may span lines, so a record boundary is a newline after an even number of
quote characters: :class:`CsvChunker` finds such boundaries with ``bytes.count``
(C speed), which lets chunks be parsed independently, in parallel.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass

from capture.chunking import BoundaryChunker, ChunkText, is_utf8
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
            check = _RowCheck(decoder, source, check_encoding=False)
            decoder.add_csv_rows(source, first_line, rows, check)
            decoder.result.lines += len(rows)
            return
    lines = text.split("\n")
    last = lines.pop()  # after the last newline: "" or a line without its newline
    lines = [line + "\n" for line in lines]
    if last:
        lines.append(last)
    _parse_lines(_RowCheck(decoder, source, check_encoding), lines, chunk)
    decoder.result.lines += len(lines)


def _parse_lines(check: _RowCheck, lines: list[str], chunk: ChunkText) -> None:
    """Decode records that may span lines, resynchronizing after a malformed one.

    A stray quote (an odd ``"`` in a garbage line) makes the csv reader take every
    following line into one field. Such a row is not a csvlog record: it is
    reported at its first line, and reading starts again at the next line that
    begins like a csvlog record (its log time), so the records after it are kept.
    The last record of a file is truncated when the file ends inside it: without
    its newline, or with an odd number of quotes in it.
    """
    decoder, source, first_line = check.decoder, check.source, chunk.first_line
    last_of_file = chunk.truncated_tail or not chunk.text.endswith("\n")
    total = len(lines)
    pos = 0
    while pos < total:
        reader = csv.reader(iter(lines[pos:]))
        start = base = pos
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                decoder.problem(source, first_line + start, "unreadable csv", str(exc))
                pos = _next_record_start(lines, start + 1)
                break
            end = base + reader.line_num
            if end >= total and last_of_file and _cut_short(lines, start, end):
                decoder.problem(source, first_line + start, "truncated record at end of file")
                return
            if not check.good(row) and end - start > 1:
                check.report(first_line + start, row, spans=end - start)
                pos = _next_record_start(lines, start + 1)
                break
            check(first_line + start, row)
            start = end


def _cut_short(lines: list[str], start: int, end: int) -> bool:
    """Whether the record in ``lines[start:end]`` (the file's last) was cut short."""
    if not lines[end - 1].endswith("\n"):
        return True
    return sum(line.count('"') for line in lines[start:end]) % 2 == 1


def _next_record_start(lines: list[str], after: int) -> int:
    """The index of the first line from ``after`` on that begins like a csvlog record."""
    for index in range(after, len(lines)):
        if _LOOKS_LIKE_TIME.match(lines[index]) is not None:
            return index
    return len(lines)


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
    check_encoding: bool
    checked: str = ""
    """The last YYYY-MM-DD HH:MM:SS prefix seen to match _LOOKS_LIKE_TIME."""

    def good(self, row: list[str]) -> bool:
        """Whether ``row`` has a csvlog record's shape: its columns, a log time first."""
        if len(row) not in COLUMNS:
            return False
        # log times repeat for many records: match the pattern once per second
        head = row[0][:19]
        if head == self.checked or _LOOKS_LIKE_TIME.match(head) is not None:
            self.checked = head
            return True
        return False

    def report(self, line: int, row: list[str], spans: int = 1) -> None:
        """Report ``row`` (at ``line``) as not a csvlog record, unless it is blank."""
        ncols = len(row)
        if ncols <= 1 and not "".join(row).strip():
            return
        where = f" over {spans} lines (an unmatched quote?)" if spans > 1 else ""
        self.decoder.problem(
            self.source,
            line,
            "not a csvlog record",
            f"{ncols} fields{where}; csvlog has 23, 24 or 26: {','.join(row)[:80]!r}",
        )

    def __call__(self, line: int, row: list[str]) -> None:
        if not self.good(row):
            self.report(line, row)
        elif self.check_encoding and not is_utf8(*row):
            self.decoder.problem(
                self.source, line, "not UTF-8", "the record holds bytes that are not UTF-8"
            )
        else:
            self.decoder.add_csv_row(self.source, line, row, len(row))
