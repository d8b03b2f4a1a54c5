"""Session reconstruction: log events in, statements in start-time order out.

Events arrive in log order. Within a session the log order is the execution
order, so each session is a small state machine:

* ``statement:`` / ``execute NAME:`` (log_statement) open a statement at its
  log time; the bare ``duration: N ms`` that follows (log_min_duration_statement)
  attaches to it, so a statement logged by both settings is counted once;
* ``duration: N ms  statement|execute ...`` alone (log_min_duration_statement
  without log_statement) is a statement that started at log time minus duration;
* an ERROR with a query column gives its SQLSTATE to the statement it belongs to
  (the session's latest one when its text matches and it has no outcome yet), or
  becomes a statement of its own when the statement was never logged (an error
  in parse or bind, or log_statement below ``all``);
* ``parse``/``bind`` records are remembered so such an error can be replayed as
  the prepared statement it was.

Statements enter a heap keyed by start time and leave it once no later record
can bring an earlier start (see :class:`StatementTracker.pop_ready`).
"""

from __future__ import annotations

import bisect
import collections
import heapq
import json
import operator
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from capture.events import PLAIN_FIELDS, EventKind, LogEvent, SessionInfo, full_event
from capture.filters import Filters
from capture.messages import placeholder_count
from capture.normalize import fingerprint as compute_fingerprint
from capture.records import Session, StatementKind

_COPY_FROM_STDIN = re.compile(r"(?is)\bcopy\b[^;]*?\bfrom\s+stdin\b")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

_STATEMENT = int(EventKind.STATEMENT)
_EXECUTE = int(EventKind.EXECUTE)
_DURATION = int(EventKind.DURATION)
_DURATION_STATEMENT = int(EventKind.DURATION_STATEMENT)
_DURATION_EXECUTE = int(EventKind.DURATION_EXECUTE)
_PARSE = int(EventKind.PARSE)
_BIND = int(EventKind.BIND)
_ERROR = int(EventKind.ERROR)
_CONNECT = int(EventKind.CONNECT)
_DISCONNECT = int(EventKind.DISCONNECT)
SIMPLE = StatementKind.SIMPLE
EXECUTE = StatementKind.EXECUTE
COPY = StatementKind.COPY_FROM_STDIN

_SAFE = re.compile(r"[0-9A-Za-z._:-]*")
"""Session ids PostgreSQL writes (hex.hex) need no JSON escaping."""
_start_of = operator.itemgetter(0)
_SESSION_JSON: dict[str, str] = {}
"""Session id to its JSON string (a few hundred sessions, millions of statements)."""

SLACK_US = 2_000_000
"""Log lines of different backends reach the log up to this much out of order."""
LONG_SLACK_US = 300_000_000
"""A statement still waiting for its duration after this long is written without it."""
MAX_BUFFERED = 200_000
"""Never hold more statements than this in memory, whatever the above says."""


class OpenStatement:
    """A statement being assembled (mutable until it is written)."""

    __slots__ = (
        "closed",
        "duration_us",
        "emitted",
        "fingerprint",
        "kind",
        "name",
        "params",
        "params_json",
        "params_truncated",
        "parsed",
        "seq",
        "session",
        "sql",
        "sql_json",
        "sqlstate",
        "start_us",
    )

    def __init__(
        self,
        session: str,
        seq: int,
        start_us: int,
        kind: StatementKind,
        sql: str,
        fingerprint: str,
        parsed: bool,
        params: tuple[str | None, ...] | None = None,
        name: str | None = None,
        params_truncated: bool = False,
        duration_us: int | None = None,
        sqlstate: str | None = None,
    ) -> None:
        self.session = session
        self.seq = seq
        self.start_us = start_us
        self.kind = kind
        self.sql = sql
        self.fingerprint = fingerprint
        self.parsed = parsed
        self.params = params
        self.name = name
        self.params_truncated = params_truncated
        self.duration_us = duration_us
        self.sqlstate = sqlstate
        self.closed = duration_us is not None or sqlstate is not None
        self.emitted = False
        self.sql_json: str | None = None
        self.params_json: str | None = None

    def encode(self, offset_us: int) -> str:
        """The statement record as a JSON line, as ``Statement.to_json`` would give it."""
        session_json = _SESSION_JSON.get(self.session) or _session_json(self.session)
        if (
            self.params is None
            and self.name is None
            and self.duration_us is None
            and self.sqlstate is None
            and not self.params_truncated
        ):
            end = "}"  # the usual statement: no optional member
        else:
            end = self._optional_members() + "}"
        return (
            f'{{"type":"statement","session":{session_json},"seq":{self.seq},'
            f'"offset_us":{offset_us},"kind":"{self.kind._value_}",'
            f'"sql":{self.sql_json or _dumps(self.sql)},"fingerprint":"{self.fingerprint}"{end}'
        )

    def _optional_members(self) -> str:
        out = ""
        if self.params is not None:
            out += ',"params":' + (self.params_json or _dumps(self.params))
        if self.name is not None:
            out += ',"name":' + _dumps(self.name)
        if self.duration_us is not None:
            out += f',"duration_us":{self.duration_us}'
        if self.sqlstate is not None:
            out += ',"sqlstate":' + _dumps(self.sqlstate)
        if self.params_truncated:
            out += ',"params_truncated":true'
        return out

    def __lt__(self, other: OpenStatement) -> bool:
        return self.start_us < other.start_us


def _session_json(session: str) -> str:
    """A session id as a JSON string, remembered in _SESSION_JSON."""
    encoded = f'"{session}"' if _SAFE.fullmatch(session) else _dumps(session)
    if len(_SESSION_JSON) >= 100_000:
        _SESSION_JSON.clear()
    _SESSION_JSON[session] = encoded
    return encoded


class _SessionState:
    __slots__ = ("connect_us", "disconnect_us", "info", "kept", "last", "proto", "statements")

    def __init__(self, info: SessionInfo, kept: bool) -> None:
        self.info = info
        self.kept = kept
        self.connect_us: int | None = None
        self.disconnect_us: int | None = None
        self.last: OpenStatement | None = None
        self.proto: tuple[str, str, tuple[str | None, ...] | None, bool] | None = None
        self.statements = 0


@dataclass(slots=True)
class TrackerCounts:
    """What reconstruction did, for the summary."""

    durations_attached: int = 0
    errors_attached: int = 0
    statements_from_errors: int = 0
    late_outcomes: int = 0
    """A duration or error that arrived after its statement had to be written."""
    filtered_sessions: int = 0
    filtered_statements: int = 0
    reordered: int = 0
    """Statements whose start was moved later to keep the file in time order."""


_NO_INFO = SessionInfo(None, None, None, None, None)


class StatementTracker:
    """Reconstructs sessions and statements from events (pure: no I/O)."""

    def __init__(self, filters: Filters | None = None) -> None:
        self.filters = filters or Filters()
        self._since = self.filters.since_us
        self._until = self.filters.until_us
        self._exclude = self.filters.sql_pattern()
        self.sessions: dict[str, _SessionState] = {}
        self.infos: dict[str, SessionInfo] = {}
        self.counts = TrackerCounts()
        self.statements = 0
        self._filtering = bool(
            self._since is not None or self._until is not None or self._exclude is not None
        )
        self.filter_reasons: dict[str, int] = {}
        # Statements waiting to be written: an in-order run (appended in start
        # order, the common case) and a heap for those that arrive out of order.
        self._tail: collections.deque[tuple[int, int, OpenStatement]] = collections.deque()
        self._heap: list[tuple[int, int, OpenStatement]] = []
        self._order = 0
        self.durations_seen = False
        self.log_now = -(2**62)

    # --- input -----------------------------------------------------------------

    def add_sessions(self, infos: dict[str, SessionInfo]) -> None:
        """Identities from a reader chunk; the first seen wins (application fills in)."""
        mine = self.infos
        for sid, info in infos.items():
            known = mine.get(sid)
            if known is None or (not known.application and info.application):
                mine[sid] = info

    def feed_all(self, events: Iterable[tuple[Any, ...]]) -> None:
        """Take many events (plain tuples), as :meth:`feed` would one by one.

        The usual event, a plain ``statement:`` of a known, kept session, is
        handled here with the tracker's state in local variables: a busy log is
        millions of them.
        """
        if self._filtering:
            for event in events:
                self.feed(event)
            return
        # The statement-building steps below are those of feed()'s fast path,
        # written out again on purpose: a call per statement would cost more than
        # they do.
        sessions = self.sessions.get
        feed = self.feed
        tail = self._tail
        append = tail.append
        log_now = self.log_now
        order = self._order
        count = 0
        for event in events:
            # a plain statement event (PLAIN_FIELDS long) always has its sql
            state = None
            if len(event) == PLAIN_FIELDS and event[0] == _STATEMENT and event[5] is not None:
                state = sessions(event[1])
            if state is None or not state.kept:
                self.log_now, self._order = log_now, order
                self.statements += count
                count = 0
                feed(event)
                log_now, order = self.log_now, self._order
                continue
            _, session, ts_us, _, sql, fp, parsed, sql_json = event
            if ts_us > log_now:
                log_now = ts_us
            start_us = ts_us
            prev = state.last
            if prev is not None:
                prev.closed = True
                prev_start = prev.start_us
                prev_end = prev_start + (prev.duration_us or 0)
                if start_us < prev_end:
                    start_us = max(prev_start, min(prev_end, ts_us))
            stmt = OpenStatement(
                session,
                state.statements,
                start_us,
                COPY
                if ("tdin" in sql or "TDIN" in sql) and _COPY_FROM_STDIN.search(sql)
                else SIMPLE,
                sql,
                fp,
                parsed,
            )
            stmt.sql_json = sql_json
            state.statements += 1
            state.last = stmt
            count += 1
            order += 1
            if not tail or start_us >= tail[-1][0]:
                append((start_us, order, stmt))
            else:
                heapq.heappush(self._heap, (start_us, order, stmt))
        self.log_now, self._order = log_now, order
        self.statements += count

    def feed(self, event: LogEvent | tuple[Any, ...]) -> None:
        """Take one event: a :class:`LogEvent`, or a plain tuple in its field order."""
        event = full_event(event)
        (
            kind,
            session,
            ts_us,
            _,
            raw_sql,
            fp,
            parsed,
            sql_json,
            name,
            params,
            truncated,
            _,
            _,
            params_json,
        ) = event
        if ts_us > self.log_now:
            self.log_now = ts_us
        state = self.sessions.get(session)
        if state is None:
            info = self.infos.get(session, _NO_INFO)
            reason = self.filters.keeps_session(info)
            if reason is not None:
                self.counts.filtered_sessions += 1
                self.filter_reasons[reason] = self.filter_reasons.get(reason, 0) + 1
            state = self.sessions[session] = _SessionState(info, reason is None)
        if kind in (_STATEMENT, _EXECUTE) and fp is not None and state.kept and not self._filtering:
            # The fast path for the usual event: what _open() does for these
            # arguments, without building a LogEvent and without the keywords.
            sql = raw_sql or ""
            if kind == _STATEMENT:
                stmt_kind = (
                    COPY
                    if ("tdin" in sql or "TDIN" in sql) and _COPY_FROM_STDIN.search(sql)
                    else SIMPLE
                )
                params = name = params_json = None
                truncated = False
            else:
                stmt_kind = EXECUTE
                if params is None:
                    params = ()
                name = name or ""
            start_us = ts_us
            prev = state.last
            if prev is not None:
                prev.closed = True
                prev_start = prev.start_us
                prev_end = prev_start + (prev.duration_us or 0)
                if start_us < prev_end:
                    start_us = max(prev_start, min(prev_end, ts_us))
            stmt = OpenStatement(
                session,
                state.statements,
                start_us,
                stmt_kind,
                sql,
                fp,
                parsed,
                params,
                name,
                truncated,
            )
            if raw_sql is not None:
                stmt.sql_json = sql_json
            stmt.params_json = params_json
            state.statements += 1
            state.last = stmt
            self.statements += 1
            order = self._order = self._order + 1
            tail = self._tail
            if not tail or start_us >= tail[-1][0]:
                tail.append((start_us, order, stmt))
            else:
                heapq.heappush(self._heap, (start_us, order, stmt))
            return
        if type(event) is not LogEvent:
            event = tuple.__new__(LogEvent, event)
        assert isinstance(event, LogEvent)
        kind = event.kind
        if kind == _STATEMENT:
            sql = event.sql or ""
            stmt_kind = (
                COPY
                if ("tdin" in sql or "TDIN" in sql) and _COPY_FROM_STDIN.search(sql)
                else SIMPLE
            )
            self._open(state, event, event.ts_us, stmt_kind)
        elif kind == _EXECUTE:
            self._open(state, event, event.ts_us, EXECUTE)
        elif kind == _DURATION:
            self.durations_seen = True
            last = state.last
            if last is not None and last.duration_us is None and last.sqlstate is None:
                if last.emitted:
                    self.counts.late_outcomes += 1
                last.duration_us = event.duration_us
                last.closed = True
                self.counts.durations_attached += 1
        elif kind in (_DURATION_STATEMENT, _DURATION_EXECUTE):
            self.durations_seen = True
            last = state.last
            stmt_kind = SIMPLE if kind == _DURATION_STATEMENT else EXECUTE
            if (
                last is not None
                and not last.closed
                and last.sql == event.sql
                and (last.kind is stmt_kind or last.kind is COPY)
            ):
                last.duration_us = event.duration_us
                last.closed = True
                self.counts.durations_attached += 1
            else:
                if stmt_kind is SIMPLE and event.sql and _is_copy(event.sql):
                    stmt_kind = COPY
                start = event.ts_us - (event.duration_us or 0)
                self._open(state, event, start, stmt_kind, duration_us=event.duration_us)
        elif kind == _PARSE:
            self.durations_seen = True
            state.proto = (event.name or "", event.sql or "", None, False)
        elif kind == _BIND:
            self.durations_seen = True
            state.proto = (event.name or "", event.sql or "", event.params, event.params_truncated)
        elif kind == _ERROR:
            self._error(state, event)
        elif kind == _CONNECT:
            state.connect_us = event.ts_us
        elif kind == _DISCONNECT:
            state.disconnect_us = event.ts_us
            if state.last is not None:
                state.last.closed = True

    def _open(
        self,
        state: _SessionState,
        event: LogEvent,
        start_us: int,
        kind: StatementKind,
        *,
        duration_us: int | None = None,
        sqlstate: str | None = None,
        params: tuple[str | None, ...] | None = None,
        params_truncated: bool | None = None,
        name: str | None = None,
    ) -> None:
        prev = state.last
        if prev is not None:
            prev.closed = True
            # log times have millisecond resolution: keep a session's statements in order
            if start_us < prev.start_us + (prev.duration_us or 0):
                start_us = max(
                    prev.start_us, min(prev.start_us + (prev.duration_us or 0), event.ts_us)
                )
        if not state.kept:
            self.counts.filtered_statements += 1
            state.last = None
            return
        sql = event.sql or ""
        if self._filtering:
            if (self._since is not None and start_us < self._since) or (
                self._until is not None and start_us >= self._until
            ):
                self._filtered("outside the time window")
                state.last = None
                return
            if self._exclude is not None and self._exclude.search(sql):
                self._filtered("SQL excluded")
                state.last = None
                return
        fp, parsed = event.fingerprint, event.parsed
        if fp is None:
            fp, parsed = compute_fingerprint(sql)
        params_json = None
        if kind is not EXECUTE:
            params, name, truncated = None, None, False
        else:
            if params is None:
                params = event.params
                params_json = event.params_json
            if params is None:
                params = ()
            if name is None:
                name = event.name or ""
            truncated = event.params_truncated if params_truncated is None else params_truncated
        stmt = OpenStatement(
            event.session,
            state.statements,
            start_us,
            kind,
            sql,
            fp,
            parsed,
            params,
            name,
            truncated,
            duration_us,
            sqlstate,
        )
        if event.sql is not None:
            stmt.sql_json = event.sql_json
        stmt.params_json = params_json
        state.statements += 1
        state.last = stmt
        self.statements += 1
        self._order += 1
        item = (start_us, self._order, stmt)
        tail = self._tail
        if not tail or start_us >= tail[-1][0]:
            tail.append(item)  # the usual case: log order is start order
        else:
            heapq.heappush(self._heap, item)

    def _filtered(self, reason: str) -> None:
        self.counts.filtered_statements += 1
        self.filter_reasons[reason] = self.filter_reasons.get(reason, 0) + 1

    def _error(self, state: _SessionState, event: LogEvent) -> None:
        sql = event.sql
        if sql is None:
            return
        last = state.last
        if (
            last is not None
            and last.sql == sql
            and last.sqlstate is None
            and last.duration_us is None
            and not (last.closed and last.emitted)
        ):
            if last.emitted:
                self.counts.late_outcomes += 1
            last.sqlstate = event.sqlstate
            last.closed = True
            self.counts.errors_attached += 1
            return
        if not state.kept:
            return
        proto = state.proto
        self.counts.statements_from_errors += 1
        if proto is not None and proto[1] == sql:
            params = proto[2]
            truncated = proto[3]
            if params is None:
                params = (None,) * placeholder_count(sql)
                truncated = bool(params)
            self._open(
                state,
                event,
                event.ts_us,
                StatementKind.EXECUTE,
                sqlstate=event.sqlstate,
                params=params,
                params_truncated=truncated,
                name=proto[0],
            )
        elif "$" in sql and placeholder_count(sql) > 0:
            count = placeholder_count(sql)
            self._open(
                state,
                event,
                event.ts_us,
                StatementKind.EXECUTE,
                sqlstate=event.sqlstate,
                params=(None,) * count,
                params_truncated=True,
                name="",
            )
        else:
            kind = StatementKind.COPY_FROM_STDIN if _is_copy(sql) else StatementKind.SIMPLE
            self._open(state, event, event.ts_us, kind, sqlstate=event.sqlstate)

    # --- output ----------------------------------------------------------------

    def _pop(self) -> OpenStatement:
        heap, tail = self._heap, self._tail
        if heap and (not tail or heap[0] < tail[0]):
            stmt = heapq.heappop(heap)[2]
        else:
            stmt = tail.popleft()[2]
        stmt.emitted = True
        return stmt

    def pop_ready(self) -> list[OpenStatement]:
        """Statements no later record can precede, in start order."""
        heap, tail = self._heap, self._tail
        horizon = self.log_now - SLACK_US
        long_horizon = self.log_now - LONG_SLACK_US
        need_closed = self.durations_seen
        out: list[OpenStatement] = []
        append = out.append
        if not heap and not need_closed:
            # the usual case: every buffered statement is in the in-order run, sorted
            # by start, so the ready ones are a prefix of it (and at least as many as
            # needed to get back under MAX_BUFFERED)
            ready = max(bisect.bisect_right(tail, horizon, key=_start_of), len(tail) - MAX_BUFFERED)
            popleft = tail.popleft
            out = [popleft()[2] for _ in range(ready)]
            for stmt in out:
                stmt.emitted = True
            return out
        if not heap:
            popleft = tail.popleft
            while tail:
                start, _, stmt = tail[0]
                if len(tail) <= MAX_BUFFERED:
                    if start > horizon:
                        break
                    if need_closed and not stmt.closed and start > long_horizon:
                        break
                popleft()
                stmt.emitted = True
                append(stmt)
            return out
        while heap or tail:
            from_heap = bool(heap) and (not tail or heap[0] < tail[0])
            start, _, stmt = heap[0] if from_heap else tail[0]
            if len(heap) + len(tail) <= MAX_BUFFERED:
                if start > horizon:
                    break
                if need_closed and not stmt.closed and start > long_horizon:
                    break
            if from_heap:
                heapq.heappop(heap)
            else:
                tail.popleft()
            stmt.emitted = True
            append(stmt)
        return out

    def drain(self) -> Iterator[OpenStatement]:
        """Every statement still buffered (at the end of the input)."""
        while self._heap or self._tail:
            yield self._pop()

    @property
    def buffered(self) -> int:
        return len(self._heap) + len(self._tail)

    def session_records(self, capture_start_us: int) -> Iterator[Session]:
        """Kept sessions that ran at least one kept statement or connected in the window."""
        for sid, state in self.sessions.items():
            if not state.kept:
                continue
            if state.statements == 0 and state.connect_us is None:
                continue
            if state.statements == 0 and not self._in_window(state.connect_us):
                continue
            info = state.info if state.info is not _NO_INFO else self.infos.get(sid, _NO_INFO)
            yield Session(
                id=sid,
                user=info.user,
                database=info.database,
                application=info.application,
                client=info.client,
                connect_us=None
                if state.connect_us is None
                else state.connect_us - capture_start_us,
                disconnect_us=None
                if state.disconnect_us is None
                else state.disconnect_us - capture_start_us,
                statements=state.statements,
            )

    def _in_window(self, ts: int | None) -> bool:
        if ts is None:
            return False
        if self._since is not None and ts < self._since:
            return False
        return not (self._until is not None and ts >= self._until)


def _is_copy(sql: str) -> bool:
    return ("tdin" in sql or "TDIN" in sql) and _COPY_FROM_STDIN.search(sql) is not None
