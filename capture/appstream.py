"""The application-side stream: JSON Lines of query events an application writes
(pure; no I/O). The schema is docs/app-stream.md (and docs/app-stream.schema.json).

Each event becomes what a server log of the same statement would give the tracker
(:mod:`capture.sessions`), so sessions, outcomes and the commit clock come out of
the one path every reader shares:

* a query that succeeded is a ``duration: N ms  statement|execute`` record logged at
  its end (``log_min_duration_statement = 0``): its start is the event's ``time``;
* a query that failed is an ERROR with its SQLSTATE at its ``time``, after a ``bind``
  record with its parameters when it had any (a prepared statement that failed);
* ``connect`` / ``disconnect`` events are the connection records; a session without
  them is taken to connect at its first event and to disconnect at the end of its
  last one (:func:`resolve_app_sessions`, in the main process, across chunks).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from capture.chunking import ChunkText, LineChunker, is_utf8
from capture.decode import RecordDecoder
from capture.errors import InputError
from capture.events import ChunkResult, EventKind, SessionInfo

SCHEMA = "pgtraffic-app"
"""The name in every event's ``stream`` member: ``"pgtraffic-app/1"``."""
SCHEMA_VERSION = 1
"""The newest schema version this reader knows."""
AppStreamChunker = LineChunker
"""Chunks of whole lines: an event is one line."""

_MARKER = re.compile(r'"stream"\s*:\s*"pgtraffic-app/(\d+)"')
_NAME = re.compile(r"pgtraffic-app/(\d+)\Z")
_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)\Z")
_SQLSTATE = re.compile(r"[0-9A-Z]{5}\Z")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_DERIVED = "\x00derived"
"""``name`` of a connection or disconnection the reader derived (main process decides)."""
_SEEN = "\x00seen"
"""``name`` of a marker: the session has an explicit connection in this chunk."""
_CLOSED = "\x00closed"
"""``name`` of a marker: the session has an explicit disconnection in this chunk."""
_CONNECT, _DISCONNECT = int(EventKind.CONNECT), int(EventKind.DISCONNECT)
_TYPES = frozenset({"query", "connect", "disconnect"})

NOT_AN_EVENT = "not an app-stream event"
INVALID = "invalid app-stream event"
NEWER = "newer app-stream schema version"
UNKNOWN_TYPE = "unknown app-stream event type"


class EventError(ValueError):
    """What is wrong with one event (its message names the member)."""


def stream_version(line: str) -> int | None:
    """The schema version a line's ``stream`` marker names; None when it has none."""
    found = _MARKER.search(line[:4096])
    return int(found.group(1)) if found else None


def parse_time(text: Any) -> int:
    """An RFC 3339 time with an offset as microseconds since the Unix epoch."""
    found = _TIME.match(text) if isinstance(text, str) else None
    if found is None:
        raise EventError(f"time: {text!r} is not an RFC 3339 time with an offset")
    day, clock, fraction, offset = found.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError as exc:
        raise EventError(f"time: {text!r}: {exc}") from None
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) + micros


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise EventError(f"{key}: a string or null, not {value!r}"[:200])


def _param(value: Any) -> str | None:
    """A bind value as the text PostgreSQL would parse."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return _dumps(value)  # an object or array: its JSON text (json/jsonb parameters)


@dataclass(frozen=True, slots=True)
class AppEvent:
    """One event of the stream, checked."""

    type: str
    session: str
    time_us: int
    sql: str = ""
    params: tuple[str | None, ...] | None = None
    name: str | None = None
    duration_us: int = 0
    sqlstate: str | None = None
    who: SessionInfo | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AppEvent:
        """Check one decoded line (raises :class:`EventError` naming the member)."""
        kind = obj.get("type")
        session = obj.get("session")
        if not isinstance(session, str) or not session or session[0] == "~":
            raise EventError("session: a non-empty string not starting with ~")
        time_us = parse_time(obj.get("time"))
        who = _who(obj)
        if kind != "query":
            return cls(str(kind), intern(session), time_us, who=who)
        sql = obj.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise EventError("sql: the statement text (a non-empty string)")
        duration = obj.get("duration_ms")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
            raise EventError(f"duration_ms: a number >= 0, not {duration!r}"[:200])
        sqlstate = _text(obj, "sqlstate")
        if sqlstate is not None and not _SQLSTATE.match(sqlstate):
            raise EventError(f"sqlstate: five digits or capitals, not {sqlstate!r}")
        rows = obj.get("rows")
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise EventError(f"rows: an integer >= 0 or null, not {rows!r}"[:200])
        raw = obj.get("params")
        if raw is not None and not isinstance(raw, list):
            raise EventError("params: an array of bind values, or null")
        params = tuple(_param(v) for v in raw) if raw is not None else None
        name = _text(obj, "statement_name")
        return cls(
            "query",
            intern(session),
            time_us,
            sql,
            params,
            (name or "") if params is not None else None,
            round(duration * 1000),
            None if sqlstate == "00000" else sqlstate,
            who,
        )


def _who(obj: dict[str, Any]) -> SessionInfo | None:
    user, database = _text(obj, "user"), _text(obj, "database")
    application, client = _text(obj, "application"), _text(obj, "client")
    if user is None and database is None and application is None and client is None:
        return None
    return SessionInfo(user or None, database or None, application or None, client or None, "")


@dataclass(slots=True)
class _Chunk:
    """One chunk being decoded: its events and what it saw of each session."""

    decoder: RecordDecoder
    first: dict[str, int] = field(default_factory=dict)
    """Session to its first event's time (sessions without an explicit connection)."""
    connected: set[str] = field(default_factory=set)
    last: dict[str, int] = field(default_factory=dict)
    """Session to the end of its latest event."""
    closed: set[str] = field(default_factory=set)

    def add(self, event: AppEvent, line: int) -> None:
        result = self.decoder.result
        session, ts = event.session, event.time_us
        result.records += 1
        if result.first_ts_us is None or ts < result.first_ts_us:
            result.first_ts_us = ts
        known = result.sessions.get(session)
        if event.who is not None and (known is None or (event.who.application and not known[2])):
            result.sessions[session] = event.who
        if event.type == "connect":
            self.connected.add(session)
            self.decoder.append_event(EventKind.CONNECT, session, ts, line)
        elif event.type == "disconnect":
            self.closed.add(session)
            self.decoder.append_event(EventKind.DISCONNECT, session, ts, line)
        else:
            self._query(event, line)
        if session not in self.connected:
            self.first.setdefault(session, ts)
        end = ts + event.duration_us
        if end > self.last.get(session, end - 1):
            self.last[session] = end
        if result.last_ts_us is None or end > result.last_ts_us:
            result.last_ts_us = end

    def _query(self, event: AppEvent, line: int) -> None:
        session, ts, sql = event.session, event.time_us, event.sql
        if event.sqlstate is None:
            extended = event.params is not None
            kind = EventKind.DURATION_EXECUTE if extended else EventKind.DURATION_STATEMENT
            self.decoder.append_event(
                kind, session, ts + event.duration_us, line, sql,
                name=event.name, params=event.params, duration_us=event.duration_us,
            )  # fmt: skip
            return
        if event.params is not None:  # what the tracker replays a failed execute from
            self.decoder.append_event(
                EventKind.BIND, session, ts, line, None,
                shown_sql=sql, name=event.name, params=event.params,
            )  # fmt: skip
        self.decoder.append_event(EventKind.ERROR, session, ts, line, sql, sqlstate=event.sqlstate)

    def markers(self) -> None:
        """Derived connections first, the chunk's last times of sessions after its events."""
        events = self.decoder.result.events
        front = [
            (_CONNECT, s, ts, 0, None, None, True, None, _DERIVED) for s, ts in self.first.items()
        ]
        front += [(_CONNECT, s, 0, 0, None, None, True, None, _SEEN) for s in self.connected]
        closed = self.closed
        tail = [
            (_DISCONNECT, s, ts, 0, None, None, True, None, _CLOSED if s in closed else _DERIVED)
            for s, ts in self.last.items()
        ]
        events[:0] = front
        events.extend(tail)


def _check(raw: str) -> AppEvent:
    """One line as an event; raises ValueError (not JSON) or :class:`EventError`."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise _NotOurs("not a JSON object")
    marker = obj.get("stream")
    found = _NAME.match(marker) if isinstance(marker, str) else None
    if found is None:
        raise _NotOurs(f'an object without "stream": "{SCHEMA}/{SCHEMA_VERSION}"')
    version = int(found.group(1))
    if version > SCHEMA_VERSION:
        raise _Newer(version)
    if obj.get("type") not in _TYPES:
        raise _Unknown(str(obj.get("type")))
    return AppEvent.from_json(obj)


class _NotOurs(EventError):
    """A JSON object, but not an event of the stream."""


class _Newer(EventError):
    def __init__(self, version: int) -> None:
        super().__init__(
            f"written with schema version {version}; this pgtraffic reads version "
            f"{SCHEMA_VERSION} (upgrade pgtraffic)"
        )


class _Unknown(EventError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"type {kind!r} (this pgtraffic knows query, connect, disconnect)")


_REASONS: dict[type[EventError], str] = {
    _NotOurs: NOT_AN_EVENT,
    _Newer: NEWER,
    _Unknown: UNKNOWN_TYPE,
}


def parse_chunk(decoder: RecordDecoder, chunk: ChunkText) -> None:
    """Decode every line of a chunk from :class:`AppStreamChunker` into ``decoder``."""
    source, first_line = chunk.source, chunk.first_line
    lines = chunk.lines()
    last = len(lines) - 1
    state = _Chunk(decoder)
    for index, raw in enumerate(lines):
        line = first_line + index
        if not raw.strip():
            continue
        if chunk.check_encoding and not is_utf8(raw):
            decoder.problem(source, line, "not UTF-8", "the event holds non-UTF-8 bytes")
            continue
        try:
            event = _check(raw)
        except EventError as exc:
            reason = _REASONS.get(type(exc), INVALID)
            decoder.problem(source, line, reason, str(exc))
            continue
        except ValueError as exc:
            truncated = chunk.truncated_tail and index == last
            reason = "truncated record at end of file" if truncated else NOT_AN_EVENT
            decoder.problem(source, line, reason, f"{exc}: {raw[:80]!r}")
            continue
        state.add(event, line)
    state.markers()
    decoder.result.lines += len(lines)


def no_query_events(names: str, skipped: Mapping[str, int]) -> InputError:
    """The refusal of application streams that gave no statement."""
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items(), key=lambda i: -i[1]))
    return InputError(
        f"{names}: no query events in this application stream"
        + (f" (skipped: {reasons})" if reasons else ""),
        hint='capture needs "type": "query" events with time, session, sql and duration_ms '
        "(docs/app-stream.md); the summary of a run without --strict lists the skipped "
        "lines as file:line",
    )


def _is_marker(event: tuple[Any, ...]) -> bool:
    return len(event) == 9 and event[8] in (_DERIVED, _SEEN, _CLOSED)


@dataclass(slots=True)
class AppSessions:
    """Main-process half of derived connections: keeps a chunk's derived connection of
    a session only when no chunk before had the session, and disconnects every session
    that never disconnected at the end of its last event (:meth:`finish`). Chunks must
    come in input order; other readers' chunks pass unchanged."""

    seen: set[str] = field(default_factory=set)
    last: dict[str, int] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)

    def __call__(self, result: ChunkResult) -> ChunkResult:
        events = result.events
        if not events or not (_is_marker(events[0]) or _is_marker(events[-1])):
            return result
        start = 0
        kept: list[tuple[Any, ...]] = []
        while start < len(events) and _is_marker(events[start]) and events[start][0] == _CONNECT:
            event = events[start]
            if event[1] not in self.seen:
                self.seen.add(event[1])
                if event[8] == _DERIVED:
                    kept.append(event[:8])
            start += 1
        end = len(events)
        while end > start and _is_marker(events[end - 1]):
            _, session, ts, *_, mark = events[end - 1]
            if mark == _CLOSED:
                self.closed.add(session)
                self.last.pop(session, None)
            elif session not in self.closed:
                self.last[session] = max(ts, self.last.get(session, ts))
            end -= 1
        result.events = kept + events[start:end]
        return result

    def finish(self) -> ChunkResult | None:
        """The derived disconnections, in time order (None when there are none)."""
        if not self.last:
            return None
        ordered = sorted(self.last.items(), key=lambda item: item[1])
        return ChunkResult(events=[(_DISCONNECT, s, ts, 0) for s, ts in ordered])


def resolve_app_sessions(results: Iterator[ChunkResult]) -> Iterator[ChunkResult]:
    """``results`` (in input order) with app-stream sessions connected and disconnected."""
    sessions = AppSessions()
    for result in results:
        yield sessions(result)
    tail = sessions.finish()
    if tail is not None:
        yield tail
