"""syslog files: PostgreSQL's messages as a syslog daemon wrote them (pure; no I/O).

PostgreSQL (``elog.c``, ``write_syslog``) sends each message with a sequence
number: ``[N-M] text``, N counting the messages of the process and M the pieces
of one message. A message is split at every newline and into pieces of at most
900 bytes (``syslog_split_messages``), cut at a space where it can be: the piece
after a length cut begins with that space (or mid-word), the piece after a
newline begins with the next line (a tab for the message's own continued lines,
the log_line_prefix for its ``DETAIL:``/``STATEMENT:`` lines). :func:`join_pieces`
puts the message back together; the text is then a stderr message, read by
:mod:`capture.stderrlog` with the log_line_prefix that follows ``[N-M]`` (empty,
or ``%m [%p] ``...). The syslog header gives the pid and, when the prefix has no
time, the log time.

Header layouts: BSD (RFC 3164, ``Mon DD HH:MM:SS host ident[pid]: ``; rsyslog's
``RSYSLOG_TraditionalFileFormat``, also with an RFC 3339 time as in
``RSYSLOG_FileFormat``), RFC 5424 (``<pri>1 time host ident pid msgid sd ``;
``RSYSLOG_SyslogProtocol23Format``) and Heroku's logplex (``time
app[postgres.PID]: [COLOR] ``). rsyslog writes control characters as ``#ooo``
(octal; a tab is ``#011``): they are decoded back.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from capture.chunking import BoundaryChunker, ChunkText
from capture.decode import RecordDecoder
from capture.prefix import LEVEL, compile_prefix, detect_prefix
from capture.stderrlog import FOLLOW_UPS, parse_translated

PIECE_LIMIT = 900
"""PG_SYSLOG_LIMIT: the longest piece PostgreSQL sends, in bytes."""

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"
LAYOUTS: dict[str, re.Pattern[str]] = {
    "bsd": re.compile(
        rf"(?:<\d{{1,3}}>)?(?:(?P<mon>[A-Z][a-z]{{2}}) +(?P<day>\d{{1,2}}) "
        rf"(?P<clock>\d\d:\d\d:\d\d)|(?P<iso>{_ISO})) (?P<host>\S+) "
        r"(?P<ident>[^\s\[\]:]+)\[(?P<pid>\d+)\]: ?(?P<body>.*)"
    ),
    "rfc5424": re.compile(
        rf"<\d{{1,3}}>1 (?P<iso>{_ISO}|-) (?P<host>\S+) (?P<ident>\S+) (?:postgres\.)?"
        r"(?P<pid>\d+|-) \S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?(?P<body>.*)"
    ),
    "heroku": re.compile(
        rf"(?P<iso>{_ISO}) (?:(?P<host>\S+) )?(?P<ident>app)\[postgres\.(?P<pid>\d+)\]: "
        r"?(?P<body>.*)"
    ),
}
"""syslog header layouts: what they match gives the time, pid, ident and the body."""
LAYOUT_NAMES = {
    "bsd": "BSD, RFC 3164",
    "rfc5424": "RFC 5424",
    "heroku": "logplex",
}
_SEQ = re.compile(r"\s*(?:\[[A-Z][A-Z0-9_]*\] )?\[(?P<seq>\d+)(?:-(?P<piece>\d+))?\] ")
"""PostgreSQL's ``[N-M] `` (or ``[M] `` with syslog_sequence_numbers off); Heroku puts
the database's colour (``[HEROKU_POSTGRESQL_RED]``) before it."""
_ESCAPE = re.compile(r"#([0-3][0-7]{2})")
_LEVEL_START = re.compile(LEVEL)

PLATFORM_PREFIXES: tuple[str, ...] = (
    # Heroku Postgres: the long form, then the older short one
    'sql_error_code = %e time_ms = "%m" pid="%p" proc_start_time="%s" session_id="%c" '
    'vtid="%v" tid="%x" log_line="%l" %qdatabase="%d" connection_source="%r" user="%u" '
    'application_name="%a" ',
    "sql_error_code = %e ",
)
"""log_line_prefixes of hosted syslog setups, tried before the common ones."""


@dataclass(frozen=True, slots=True)
class SyslogOptions:
    """How to read one syslog file (found by :func:`detect_syslog`)."""

    layout: str
    ident: str
    """The program name PostgreSQL logs as (``syslog_ident``); other programs' lines
    are left out."""
    prefix: str
    """The log_line_prefix after ``[N-M] ``."""
    year: int
    """The year of BSD times (they have none), for months from ``first_month`` on."""
    first_month: int = 1

    def encode(self) -> str:
        return json.dumps([self.layout, self.ident, self.prefix, self.year, self.first_month])

    @classmethod
    def decode(cls, text: str) -> SyslogOptions:
        layout, ident, prefix, year, first_month = json.loads(text)
        return cls(layout, ident, prefix, int(year), int(first_month))

    def stderr_prefix(self) -> str:
        """The prefix of the stderr lines :func:`to_stderr` writes: the header's time
        and pid before the server's own prefix, when it lacks them."""
        escapes = compile_prefix(self.prefix).escapes
        head = "" if escapes & {"m", "t", "n"} else "%m "
        head += "" if "p" in escapes else "[%p] "
        return head + self.prefix

    def describe(self) -> str:
        name = LAYOUT_NAMES.get(self.layout, self.layout)
        what = "Heroku Postgres" if self.layout == "heroku" else "syslog"
        return f"{what} ({name}, ident {self.ident}, log_line_prefix '{self.prefix}', detected)"


@dataclass(frozen=True, slots=True)
class Piece:
    """One syslog line of a PostgreSQL message."""

    line: int
    """Index of the line in its chunk."""
    time: str
    """The header's time as a PostgreSQL log time (``YYYY-MM-DD HH:MM:SS.mmm UTC``)."""
    pid: str
    ident: str
    seq: int | None
    number: int | None
    """M of ``[N-M]``; None when the line has no sequence number."""
    text: str


def unescape(text: str) -> str:
    """rsyslog's ``#ooo`` escapes of control characters, decoded."""
    if "#" not in text:
        return text

    def one(found: re.Match[str]) -> str:
        value = int(found.group(1), 8)
        return chr(value) if value < 32 or value == 127 else found.group(0)

    return _ESCAPE.sub(one, text)


def _log_time(found: re.Match[str], options: SyslogOptions) -> str:
    iso = found.group("iso")
    if iso and iso != "-":
        moment = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"
    month = _MONTHS.get(found.group("mon") or "", 0)
    if not month:
        return ""
    year = options.year + (1 if month < options.first_month else 0)
    return f"{year}-{month:02d}-{int(found.group('day')):02d} {found.group('clock')}.000 UTC"


def parse_line(raw: str, index: int, options: SyslogOptions) -> Piece | None:
    """One syslog line as a :class:`Piece`; None when it is not a syslog line."""
    found = LAYOUTS[options.layout].match(raw)
    if found is None:
        return None
    try:
        time = _log_time(found, options)
    except ValueError:
        time = ""
    body = found.group("body")
    seq = _SEQ.match(body)
    if seq is None:
        return Piece(index, time, found.group("pid"), found.group("ident"), None, None, body)
    number = seq.group("piece")
    return Piece(
        index,
        time,
        found.group("pid"),
        found.group("ident"),
        int(seq.group("seq")) if number is not None else None,
        int(number) if number is not None else int(seq.group("seq")),
        body[seq.end() :],
    )


def _length_cut(before: str, after: str, follow_up: re.Pattern[str] | None) -> bool:
    """Whether ``after`` continues ``before``'s line (a cut at 900 bytes) rather than
    beginning the message's next line."""
    size = len(before.encode("utf-8", "surrogateescape"))
    if not after or not after[0].isspace():
        # a cut inside a word leaves a full piece (less a split multibyte letter)
        return size >= PIECE_LIMIT - 3 and (follow_up is None or not follow_up.match(after))
    word = len(after[1:].split(None, 1)[0].encode("utf-8", "surrogateescape")) if after[1:] else 0
    if after[1:2].isspace():
        word = 0
    # the space PostgreSQL cut at, then a word that did not fit: past the limit
    return size + 1 + word > PIECE_LIMIT


def join_pieces(texts: Sequence[str], prefix: str = "") -> str:
    """A message's text from its pieces (already unescaped), in order."""
    follow_up = compile_prefix(prefix).pattern
    out = [texts[0]]
    for before, after in itertools.pairwise(texts):
        if _length_cut(before, after, follow_up):
            out.append(after)
        else:
            out.append("\n" + after)
    return "".join(out)


@dataclass(slots=True)
class _Open:
    """A message whose pieces are being gathered."""

    first: Piece
    texts: list[str] = field(default_factory=list)


def assemble(lines: Sequence[str], options: SyslogOptions) -> tuple[list[_Open], list[int]]:
    """The messages of ``lines`` of ``options.ident``, in the order of their first piece,
    and the indexes of lines that are not syslog lines."""
    messages: list[_Open] = []
    current: dict[tuple[str, int | None], _Open] = {}
    unnumbered: dict[str, int] = collections.defaultdict(int)
    bad: list[int] = []
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        piece = parse_line(raw, index, options)
        if piece is None:
            bad.append(index)
            continue
        if piece.ident != options.ident:
            continue  # another program's line
        seq = piece.seq
        if seq is None and piece.number is not None:  # [M] alone: count messages
            if piece.number == 1:
                unnumbered[piece.pid] += 1
            seq = -unnumbered[piece.pid]
        key = (piece.pid, seq)
        message = current.get(key)
        if message is None or piece.number in (None, 1):
            message = current[key] = _Open(piece)
            messages.append(message)
        message.texts.append(unescape(piece.text))
    return messages, bad


def to_stderr(lines: Sequence[str], options: SyslogOptions) -> tuple[str, list[int]]:
    """The stderr log text of ``lines`` (one chunk), each message on the line of its
    first piece (blank lines pad it), and the indexes of lines that are not syslog."""
    messages, bad = assemble(lines, options)
    escapes = compile_prefix(options.prefix).escapes
    add_time = not escapes & {"m", "t", "n"}
    add_pid = "p" not in escapes
    out: list[str] = []
    for message in messages:
        first = message.first
        if len(out) < first.line:
            out.extend([""] * (first.line - len(out)))
        head = (f"{first.time} " if add_time else "") + (f"[{first.pid}] " if add_pid else "")
        text = join_pieces(message.texts, options.prefix)
        out.extend(line if line.startswith("\t") else head + line for line in text.split("\n"))
    if len(out) < len(lines):
        out.extend([""] * (len(lines) - len(out)))
    return "\n".join(out) + "\n", bad


def parse_chunk(decoder: RecordDecoder, chunk: ChunkText) -> None:
    """Decode every PostgreSQL message of a chunk from :class:`SyslogChunker`
    (``options``: encoded :class:`SyslogOptions`)."""
    opts = SyslogOptions.decode(chunk.options)
    lines = chunk.lines()
    stderr_text, bad = to_stderr(lines, opts)
    source, first_line = chunk.source, chunk.first_line
    for index in bad:
        decoder.problem(source, first_line + index, "not a syslog line", f"{lines[index][:80]!r}")
    parse_translated(decoder, chunk, stderr_text, opts.stderr_prefix(), len(lines))


class SyslogChunker(BoundaryChunker):
    """Chunks that end before the first piece of a message, where no message of the
    lines just after the cut began before it."""

    LOOKAHEAD = 64
    """Lines after a cut checked for pieces of a message begun before it."""

    def __init__(self, target: int, options: SyslogOptions) -> None:
        super().__init__(target)
        self._options = options

    def _piece(self, at: int) -> tuple[Piece | None, int]:
        """The piece of the line at ``at`` (None if it is not one), and where the next
        line begins (-1 when the buffer has no whole line there)."""
        end = self._buf.find(b"\n", at)
        if end < 0:
            return None, -1
        raw = bytes(self._buf[at:end]).decode("utf-8", "replace")
        return parse_line(raw, 0, self._options), end + 1

    def _begins_record(self, at: int) -> bool:
        piece, after = self._piece(at)
        if after < 0 or (piece is not None and piece.number not in (None, 1)):
            return False
        if piece is not None and "LOG:  connection auth" in piece.text[:400]:
            return False  # the session's connection received is just before: keep them together
        begun: set[tuple[str, int | None]] = set()
        if piece is not None:
            begun.add((piece.pid, piece.seq))
        for _ in range(self.LOOKAHEAD):
            piece, after = self._piece(after)
            if after < 0:
                return True
            if piece is None:
                continue
            key = (piece.pid, piece.seq)
            if piece.number in (None, 1):
                begun.add(key)
            elif key not in begun and piece.seq is not None:
                return False
        return True


# --- detection -------------------------------------------------------------------


def _layout_of(lines: Sequence[str]) -> str | None:
    best, best_count = None, 0
    for name, pattern in LAYOUTS.items():
        count = sum(1 for line in lines if pattern.match(line))
        if count > best_count:
            best, best_count = name, count
    return best


def _prefix_of(bodies: Sequence[str]) -> str | None:
    """The log_line_prefix of the messages' first lines (``""`` when they begin with the
    level)."""
    if not bodies:
        return None
    if sum(1 for b in bodies if _LEVEL_START.match(b)) >= 0.9 * len(bodies):
        return ""
    for text in PLATFORM_PREFIXES:
        pattern = compile_prefix(text)
        if sum(1 for b in bodies if pattern.match(b)) >= 0.9 * len(bodies):
            return text
    found = detect_prefix(bodies)
    return found.prefix.text if found is not None else None


def detect_syslog(lines: Sequence[str], year: int) -> SyslogOptions | None:
    """How to read a syslog file whose first lines are ``lines``; None when they hold no
    PostgreSQL messages with a log_line_prefix capture knows."""
    layout = _layout_of(lines)
    if layout is None:
        return None
    pattern = LAYOUTS[layout]
    idents: collections.Counter[str] = collections.Counter()
    first_month = 0
    for line in lines:
        found = pattern.match(line)
        if found is None:
            continue
        if not first_month and found.groupdict().get("mon"):
            first_month = _MONTHS.get(found.group("mon"), 0)
        body = found.group("body")
        if _SEQ.match(body) or _LEVEL_START.search(body[:200]):
            idents[found.group("ident")] += 1
    if not idents:
        return None
    ident = idents.most_common(1)[0][0]
    probe = SyslogOptions(layout, ident, "", year, first_month or 1)
    messages, _ = assemble(lines, probe)
    bodies = [m.texts[0] for m in messages if m.texts and not m.texts[0].startswith("\t")]
    bodies = [b for b in bodies if b.split(":", 1)[0] not in FOLLOW_UPS]
    prefix = _prefix_of(bodies[:400])
    if prefix is None:
        return None
    return SyslogOptions(layout, ident, prefix, year, first_month or 1)


def looks_like_syslog(line: str) -> bool:
    """Whether ``line`` begins with a syslog header of a layout capture reads."""
    return any(pattern.match(line) for pattern in LAYOUTS.values())
