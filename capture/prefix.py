"""``log_line_prefix`` (postgresql.conf syntax) as a matcher of stderr log lines; detection.

Pure: strings in, a compiled :class:`LinePrefix` or a detected prefix out. A
prefix is compiled into one regular expression that matches the prefix of a
line and the ``LEVEL:  `` after it (``elog.c`` writes the severity, a colon and
two spaces); named groups hold what the escapes gave (time, pid, session id,
user, ...). ``%q`` ends the prefix for processes that are not sessions, so the
part after it is optional; padding (``%-10u``, ``%5p``) allows spaces.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

_ZONE = r"(?:[A-Za-z]+|[+-]\d{2,4})"
_TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"

ESCAPES: dict[str, tuple[str, str]] = {
    "m": ("time", rf"{_TS}\.\d{{3}} {_ZONE}"),
    "t": ("time", rf"{_TS} {_ZONE}"),
    "n": ("epoch", r"\d+\.\d{3}"),
    "s": ("start", rf"{_TS} {_ZONE}"),
    "p": ("pid", r"\d+"),
    "P": ("leader", r"\d*"),
    "c": ("session", r"[0-9a-f]+\.[0-9a-f]+"),
    "l": ("line", r"\d+"),
    "u": ("user", r"[^\n]{0,63}?"),
    "d": ("db", r"[^\n]{0,63}?"),
    "a": ("app", r"[^\n]{0,63}?"),
    "h": ("host", r"[^\n]{0,255}?"),
    "r": ("remote", r"[^\n]{0,263}?"),
    "L": ("local", r"[^\n]{0,255}?"),
    "x": ("xid", r"\d+"),
    "v": ("vxid", r"(?:-?\d+/\d+)?"),
    "e": ("sqlstate", r"[0-9A-Z]{5}"),
    "b": ("btype", r"[a-z][a-z ]{0,40}?"),
    "i": ("tag", r"[^\n]{0,64}?"),
    "Q": ("queryid", r"-?\d+"),
}
"""Escape letter to (group name, regex of what it prints)."""

LEVEL = r"(?P<level>[A-Z]+[1-5]?):  "

# The prefixes PostgreSQL and common distributions and services ship with.
COMMON_PREFIXES: tuple[str, ...] = (
    "%m [%p] ",  # PostgreSQL's default since 10
    "%m [%p] %q%u@%d ",  # Debian and Ubuntu
    "%m [%p] %e %q%u@%d ",  # capture's recipe (capture/settings.py)
    "%t:%r:%u@%d:[%p]:",  # AWS RDS and Aurora
    "%m:%r:%u@%d:[%p]:",
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",  # pgBadger's recommendation
    "%m [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: [%l-1] ",
    "%m [%p]: [%l-1] ",
    "%t [%p]: ",
    "%m [%p]: ",
    "%t [%p] ",
    "%t [%p] %q%u@%d ",
    "%m [%p] %q[%u@%d] ",
    "%m [%p-%l] %q%u@%d ",
    "%m %c ",
    "%m [%c] ",
    "< %m >",
    "%t ",
    "%m ",
)


class PrefixError(ValueError):
    """A log_line_prefix capture cannot use; the message says what to add."""


@dataclass(frozen=True, slots=True)
class LinePrefix:
    """A compiled log_line_prefix."""

    text: str
    """The prefix as written in postgresql.conf (without the quotes)."""
    pattern: re.Pattern[str]
    """Matches a line's prefix and ``LEVEL:  `` at its start."""
    escapes: frozenset[str]
    """The escape letters it uses."""

    def match(self, line: str) -> re.Match[str] | None:
        return self.pattern.match(line)

    @property
    def second_resolution(self) -> bool:
        """Its only log time is %t (whole seconds)."""
        return "t" in self.escapes and not self.escapes & {"m", "n"}

    def missing(self) -> list[str]:
        """What replay needs that this prefix does not give, as sentences."""
        out = []
        if not self.escapes & {"m", "t", "n"}:
            out.append("it has no log time (%m, or %t/%n)")
        if not self.escapes & {"c", "p"}:
            out.append("it has no session id or process id (%c or %p)")
        return out

    def check(self) -> None:
        """Raise :class:`PrefixError` when replay cannot be built from lines with it."""
        missing = self.missing()
        if missing:
            add = "".join(
                need
                for need, escapes in (("%m ", "mtn"), ("[%p] ", "cp"))
                if not self.escapes & set(escapes)
            )
            raise PrefixError(
                f"log_line_prefix {self.text!r} is not enough for a capture: "
                + "; ".join(missing)
                + f". In postgresql.conf (then reload):\nlog_line_prefix = '{add}{self.text}'"
            )


def _literal(text: str) -> str:
    return re.escape(text)


@functools.lru_cache(maxsize=32)
def compile_prefix(text: str) -> LinePrefix:
    """Compile ``text`` (log_line_prefix syntax) into a :class:`LinePrefix`."""
    parts: list[list[str]] = [[]]  # before %q, after %q
    used: set[str] = set()
    named: set[str] = set()
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char != "%" or pos + 1 >= end:
            parts[-1].append(_literal(char))
            pos += 1
            continue
        match = re.compile(r"%(-?\d+)?(.)").match(text, pos)
        assert match is not None
        pos = match.end()
        pad, letter = match.group(1), match.group(2)
        if letter == "%":
            parts[-1].append("%")
        elif letter == "q":
            if len(parts) == 1:
                parts.append([])
        elif letter in ESCAPES:
            used.add(letter)
            name, regex = ESCAPES[letter]
            piece = f"(?P<{name}>{regex})" if name not in named else f"(?:{regex})"
            named.add(name)
            if pad:
                piece = f" *{piece}" if int(pad) > 0 else f"{piece} *"
            parts[-1].append(piece)
        # an unknown escape prints nothing (as PostgreSQL does)
    head = "".join(parts[0])
    tail = f"(?:{''.join(parts[1])})?" if len(parts) > 1 else ""
    return LinePrefix(text, re.compile(head + tail + LEVEL), frozenset(used))


@dataclass(frozen=True, slots=True)
class Detection:
    """The prefix detected in a file's first lines, and how well it fit."""

    prefix: LinePrefix
    matched: int
    lines: int
    inferred: bool
    """Inferred from the lines' shape (not one of :data:`COMMON_PREFIXES`)."""


def head_lines(text: str, limit: int = 400) -> list[str]:
    """The first lines of ``text`` that begin a log line (not continuations, not the
    last line, which may be cut)."""
    lines = text.split("\n")[:-1]
    return [line for line in lines if line and not line.startswith("\t")][:limit]


def _score(prefix: LinePrefix, lines: Sequence[str]) -> tuple[int, int, int]:
    """(lines matched, escape groups that took part in them, literal characters matched)."""
    matched = taking_part = literal = 0
    for line in lines:
        found = prefix.match(line)
        if found is not None:
            matched += 1
            values = [v for v in found.groups() if v]
            taking_part += len(values)
            literal += found.end() - sum(map(len, values))
    return matched, taking_part, literal


def detect_prefix(lines: Sequence[str], *, min_share: float = 0.9) -> Detection | None:
    """The log_line_prefix that fits ``lines`` best: one of the common ones, else one
    inferred from their shape; None when nothing fits ``min_share`` of them."""
    if not lines:
        return None
    best: tuple[tuple[int, int, int, int, int], LinePrefix] | None = None
    for order, text in enumerate(COMMON_PREFIXES):
        prefix = compile_prefix(text)
        matched, taking_part, literal = _score(prefix, lines)
        # ties: the one whose literal text matched more, then the shorter one
        key = (matched, taking_part, literal, -len(text), -order)
        if best is None or key > best[0]:
            best = (key, prefix)
    assert best is not None
    common: Detection | None = None
    if best[0][0] >= min_share * len(lines) and best[0][1] > 0:
        common = Detection(best[1], best[0][0], len(lines), inferred=False)
    inferred = infer_prefix(lines)
    if inferred is not None:
        score = _score(inferred, lines)
        if score[0] >= min_share * len(lines) and score > best[0][:3]:
            return Detection(inferred, score[0], len(lines), inferred=True)
    return common


# --- inference from the shape of lines -------------------------------------------

_LEVEL_IN_LINE = re.compile(
    r"(?:LOG|ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|DEBUG[1-5]|DETAIL|HINT|STATEMENT|CONTEXT"
    r"|QUERY|LOCATION):  "
)
_KEYS = {
    "user": "u",
    "usr": "u",
    "u": "u",
    "db": "d",
    "database": "d",
    "dbname": "d",
    "app": "a",
    "appname": "a",
    "application": "a",
    "application_name": "a",
    "client": "h",
    "host": "h",
    "remote": "r",
    "pid": "p",
    "session": "c",
    "sid": "c",
    "session_id": "c",
    "line": "l",
    "xid": "x",
    "vxid": "v",
    "sqlstate": "e",
    "state": "e",
    "query_id": "Q",
    "queryid": "Q",
    "type": "b",
    "backend_type": "b",
}
_TOKEN = re.compile(
    rf"(?P<m>{_TS}\.\d{{3}} {_ZONE})"
    rf"|(?P<t>{_TS} {_ZONE})"
    r"|(?P<n>\d{9,11}\.\d{3})"
    r"|(?P<c>[0-9a-f]{6,10}\.[0-9a-f]{1,8})"
    r"|(?P<kv>(?P<key>[A-Za-z_]+)=(?P<value>[^,\s\]\)]*))"
    r"|(?<![0-9A-Za-z])(?P<e>00000|(?=\d*[A-Z])[0-9A-Z]{5})(?![0-9A-Za-z])"
    r"|(?P<v>\d+/\d+)"
    r"|(?P<num>\d+)"
    r"|(?P<at>[^\s@\[\]():,<>]*@[^\s@\[\]():,<>]*)"
)


def _template(prefix_text: str) -> tuple[list[str], list[str]]:
    """The prefix text as pieces (escapes or %%-escaped literals), and its numbers."""
    pieces: list[str] = []
    numbers: list[str] = []
    pos = 0
    times = 0
    for token in _TOKEN.finditer(prefix_text):
        pieces.extend(c if c != "%" else "%%" for c in prefix_text[pos : token.start()])
        pos = token.end()
        kind = token.lastgroup if token.lastgroup not in ("key", "value") else "kv"
        if token.group("kv"):
            kind = "kv"
        if kind in ("m", "t"):
            times += 1
            pieces.append(f"%{kind}" if times == 1 else "%s")
        elif kind in ("n", "c", "v", "e"):
            pieces.append(f"%{kind}")
        elif kind == "kv":
            key = token.group("key")
            letter = _KEYS.get(key.lower())
            pieces.append(f"{key}={'%' + letter if letter else token.group('value')}")
        elif kind == "num":
            pieces.append("#")
            numbers.append(token.group("num"))
        else:  # user@db
            pieces.append("%u@%d")
    pieces.extend(c if c != "%" else "%%" for c in prefix_text[pos:])
    return pieces, numbers


def infer_prefix(lines: Sequence[str]) -> LinePrefix | None:
    """Guess a log_line_prefix from the shape of ``lines``: times, ``key=value``
    pairs, ``user@db``, session ids; bare numbers are the pid, or the line number
    (%l) when they count up within a pid."""
    shapes: dict[tuple[str, ...], list[list[str]]] = {}
    for line in lines:
        found = _LEVEL_IN_LINE.search(line)
        if found is None:
            continue
        pieces, numbers = _template(line[: found.start()])
        shapes.setdefault(tuple(pieces), []).append(numbers)
    if not shapes:
        return None
    shape, rows = max(shapes.items(), key=lambda kv: len(kv[1]))
    roles = _number_roles(rows)
    out: list[str] = []
    role = iter(roles)
    for piece in shape:
        out.append(next(role) if piece == "#" else piece)
    text = "".join(out)
    prefix = compile_prefix(text)
    if "%u@%d" in text:  # non-session processes print no user@db with %q before it
        with_q = compile_prefix(text.replace("%u@%d", "%q%u@%d", 1))
        if _score(with_q, lines)[0] > _score(prefix, lines)[0]:
            return with_q
    return prefix


def _number_roles(rows: list[list[str]]) -> list[str]:
    """An escape for each bare number column: %p, %l (counts up by one per pid), %x;
    or the number itself when it never changes."""
    columns = len(rows[0]) if rows else 0
    if columns == 0:
        return []
    roles = ["%x"] * columns
    pid = 0
    for col in range(columns):
        if _counts_up(rows, col, pid):
            roles[col] = "%l"
    for col in range(columns):
        if roles[col] != "%l":
            pid = col
            break
    roles[pid] = "%p"
    for col in range(columns):
        values = {row[col] for row in rows}
        if roles[col] == "%x" and len(values) == 1:
            roles[col] = values.pop()  # the same everywhere: text (as in "[%l-1]")
    return roles


def _counts_up(rows: list[list[str]], col: int, pid: int) -> bool:
    if col == pid or len(rows) < 3:
        return False
    last: dict[str, int] = {}
    steps = 0
    for row in rows:
        value = int(row[col])
        before = last.get(row[pid])
        if before is not None:
            if value != before + 1:
                return False
            steps += 1
        last[row[pid]] = value
    return steps > 0


def describe_prefix(prefix: LinePrefix, *, detected: bool) -> str:
    """How the summary names the prefix used."""
    how = "detected" if detected else "given"
    note = "; %t: log times to the second" if prefix.second_resolution else ""
    return f"stderr (log_line_prefix '{prefix.text}', {how}{note})"


__all__ = [
    "COMMON_PREFIXES",
    "Detection",
    "LinePrefix",
    "PrefixError",
    "compile_prefix",
    "describe_prefix",
    "detect_prefix",
    "head_lines",
    "infer_prefix",
]
