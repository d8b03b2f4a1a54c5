"""What the log readers hand to session reconstruction: one event per useful record.

A log reader turns records into :class:`LogEvent` values and problems into
:class:`Problem` values; it never decides what a statement is. Events are
NamedTuples, not dataclasses, because millions of them cross process boundaries
(pickled) on a large capture and a tuple is the cheapest immutable record there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class EventKind(enum.IntEnum):
    """What a log record says, as far as capture cares."""

    STATEMENT = 1
    """``statement: SQL`` (log_statement), logged when the statement starts."""
    EXECUTE = 2
    """``execute NAME: SQL`` (log_statement, extended protocol), logged at start."""
    DURATION = 3
    """``duration: N ms`` alone: the end of the statement logged just before."""
    DURATION_STATEMENT = 4
    """``duration: N ms  statement: SQL`` (log_min_duration_statement only)."""
    DURATION_EXECUTE = 5
    """``duration: N ms  execute NAME: SQL`` (log_min_duration_statement only)."""
    PARSE = 6
    """``duration: N ms  parse NAME: SQL``: a prepared statement was defined."""
    BIND = 7
    """``duration: N ms  bind NAME: SQL`` with its parameters."""
    ERROR = 8
    """An ERROR/FATAL/PANIC record; ``sql`` is its query column when present."""
    CONNECT = 9
    """``connection authorized`` (or PG18 ``connection authenticated``)."""
    DISCONNECT = 10
    """``disconnection: session time: ...``."""


class LogEvent(NamedTuple):
    """One useful log record, decoded."""

    kind: EventKind
    session: str
    ts_us: int
    """Log time, microseconds since the Unix epoch."""
    line: int
    """First line of the record in its file (1-based)."""
    sql: str | None = None
    fingerprint: str | None = None
    parsed: bool = True
    """False when ``fingerprint`` is a fallback because pglast could not parse ``sql``."""
    sql_json: str | None = None
    """``sql`` already encoded as a JSON string (done in the worker, off the main process)."""
    name: str | None = None
    """Prepared-statement name ('' for the unnamed statement)."""
    params: tuple[str | None, ...] | None = None
    params_truncated: bool = False
    duration_us: int | None = None
    sqlstate: str | None = None
    params_json: str | None = None
    """``params`` already encoded as a JSON array."""


PLAIN_FIELDS = 8
"""A plain ``statement:`` event is sent as its first fields only (kind to sql_json):
the rest are at their defaults."""
_DEFAULTS = tuple(LogEvent._field_defaults.values())


def full_event(raw: tuple[Any, ...]) -> tuple[Any, ...]:
    """``raw`` (an event tuple) with the trailing fields it leaves out at their defaults."""
    missing = len(LogEvent._fields) - len(raw)
    return raw + _DEFAULTS[-missing:] if missing > 0 else raw


class SessionInfo(NamedTuple):
    """Who a session is, from the first record of it a reader saw."""

    user: str | None
    database: str | None
    application: str | None
    client: str | None
    backend_type: str | None


@dataclass(frozen=True, slots=True)
class Problem:
    """A record capture could not use, and why."""

    source: str
    line: int
    reason: str
    """Short reason, also the key under which skipped records are counted."""
    detail: str = ""


@dataclass(slots=True)
class ChunkResult:
    """What a reader made of one chunk of a log file."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    """Events as plain tuples in :class:`LogEvent` field order, ``kind`` as a plain int:
    they marshal in C. Trailing fields at their defaults may be left out (see
    :data:`PLAIN_FIELDS`): rebuild one with ``LogEvent(*raw)``."""
    sessions: dict[str, SessionInfo] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    lines: int = 0
    server_version: str | None = None
    non_english: int = 0
    """Records whose message looked like a translated (non-English) server message."""
    first_ts_us: int | None = None
    last_ts_us: int | None = None
