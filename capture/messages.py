"""Classify PostgreSQL log message text (``lc_messages = 'C'``) into event parts.

Pure functions over strings; the log readers call :func:`classify` once per
record. The message forms come from PostgreSQL's ``postgres.c`` (statement and
duration logging) and ``postmaster``/``backend_startup.c`` (connections).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pglast.parser import scan

from capture.events import EventKind

ENGLISH_SEVERITIES = frozenset(
    {"LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO", "DEBUG", "STATEMENT"}
    | {f"DEBUG{i}" for i in range(1, 6)}
)
FAILURE_SEVERITIES = frozenset({"ERROR", "FATAL", "PANIC"})

_DURATION = re.compile(
    r"duration: (\d+(?:\.\d+)?) ms(?:  (?:(statement): |(parse|bind|execute) ))?"
)
_PARAM = re.compile(r"\$(\d+) = (?:NULL|'([^']*(?:''[^']*)*)')")
_CONNECT = re.compile(
    r"connection authorized: user=(\S*)(?: database=(\S*))?(?: application_name=(.*?))?"
    r"(?: (?:SSL|GSS) .*)?$",
    re.DOTALL,
)
TRUNCATION_MARK = "..."


class Classified(NamedTuple):
    """The statement-relevant parts of one log message."""

    kind: EventKind
    sql: str | None = None
    name: str | None = None
    duration_us: int | None = None
    application: str | None = None


def _named(rest: str) -> tuple[str, str] | None:
    """``NAME[/PORTAL]: SQL`` to (name, sql); '' for ``<unnamed>``."""
    name, sep, sql = rest.partition(": ")
    if not sep:
        return None
    name = name.partition("/")[0]
    return ("" if name == "<unnamed>" else name), sql


def _ms_to_us(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def classify(message: str) -> Classified | None:
    """What a LOG message is, or None when capture has no use for it.

    ``execute fetch from ...`` (a portal being read further) is not a new
    statement and is classified as None.
    """
    first = message[:1]
    if first == "s":
        if message.startswith("statement: "):
            return Classified(EventKind.STATEMENT, sql=message[11:])
        return None
    if first == "e":
        if message.startswith("execute ") and not message.startswith("execute fetch from "):
            named = _named(message[8:])
            if named is not None:
                return Classified(EventKind.EXECUTE, sql=named[1], name=named[0])
        return None
    if first == "d":
        if message.startswith("duration: "):
            return _duration(message)
        if message.startswith("disconnection: "):
            return Classified(EventKind.DISCONNECT)
        return None
    if first == "c" and message.startswith("connection authorized: "):
        match = _CONNECT.match(message)
        return Classified(EventKind.CONNECT, application=match.group(3) if match else None)
    return None


def _duration(message: str) -> Classified | None:
    match = _DURATION.match(message)
    if match is None:
        return None
    duration_us = _ms_to_us(match.group(1))
    rest = message[match.end() :]
    if match.group(2):
        return Classified(EventKind.DURATION_STATEMENT, sql=rest, duration_us=duration_us)
    what = match.group(3)
    if what is None:
        return Classified(EventKind.DURATION, duration_us=duration_us) if not rest else None
    if what == "execute" and rest.startswith("fetch from "):
        return None
    named = _named(rest)
    if named is None:
        return None
    kind = {
        "parse": EventKind.PARSE,
        "bind": EventKind.BIND,
        "execute": EventKind.DURATION_EXECUTE,
    }[what]
    return Classified(kind, sql=named[1], name=named[0], duration_us=duration_us)


def parse_parameters(detail: str) -> tuple[tuple[str | None, ...], bool] | None:
    """``parameters: $1 = 'a', $2 = NULL`` (``Parameters:`` in PG18) to values.

    Returns (values, truncated) or None when ``detail`` holds no parameter list.
    ``truncated`` is True when a value ends with ``...``, the mark
    log_parameter_max_length leaves (a value that really ends with three dots is
    reported as truncated too: capture cannot tell them apart).
    """
    if not (detail.startswith("parameters: ") or detail.startswith("Parameters: ")):
        return None
    values: list[str | None] = []
    truncated = False
    pos = 12
    end = len(detail)
    while pos < end:
        match = _PARAM.match(detail, pos)
        if match is None or int(match.group(1)) != len(values) + 1:
            return None
        raw = match.group(2)
        if raw is None:
            values.append(None)
        else:
            value = raw.replace("''", "'") if "''" in raw else raw
            if value.endswith(TRUNCATION_MARK):
                truncated = True
            values.append(value)
        pos = match.end()
        if pos < end:
            if not detail.startswith(", ", pos):
                return None
            pos += 2
    return tuple(values), truncated


def placeholder_count(sql: str) -> int:
    """The highest ``$n`` in ``sql`` (0 when none): how many parameters it takes.

    PostgreSQL's own scanner (through pglast) finds them, so a ``$1`` inside a
    string literal, a dollar-quoted body or a comment is not counted; text it
    cannot scan falls back to every ``$n`` in it.
    """
    if "$" not in sql:
        return 0
    try:
        return max(
            (int(sql[t.start + 1 : t.end + 1]) for t in scan(sql) if t.name == "PARAM"),
            default=0,
        )
    except Exception:  # the scanner failed: count every $n
        return max((int(n) for n in re.findall(r"\$(\d+)", sql)), default=0)
