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

The tracker also keeps the *commit clock* of docs/workload-format.md, in log
order: what each statement does to its session's transaction block comes from
capture/effects.py (one dict lookup per statement, by fingerprint); a commit gets
its number when the log shows it completed (the session's next statement record,
its duration, an error attached to it, the disconnection) or, failing that, when
it is written out; every statement records the clock when it was read
(``after``, and ``after_objects`` for the relations it touches), every session
the order of connections and disconnections.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import json
import operator
import re
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from capture.effects import Control, Effect, effect_of
from capture.events import PLAIN_FIELDS, EventKind, LogEvent, SessionInfo, full_event
from capture.filters import Filters
from capture.messages import placeholder_count
from capture.normalize import fingerprint as compute_fingerprint
from capture.records import Session, StatementKind
from capture.rowclock import RowClock, Write
from capture.rowkeys import Access, key_values

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
_BEGIN, _COMMIT, _ROLLBACK = Control.BEGIN, Control.COMMIT, Control.ROLLBACK
_INSERT = Access.INSERT
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
EVIDENCE_KEPT = 100_000
"""Commits whose evidence time is remembered (for statements logged at their end)."""
HISTORY_KEPT = 64
"""Commit numbers remembered per relation written."""
BLOCK_KEPT = 1_000
"""Statements of one transaction block remembered to find what its BEGIN waits for
(``after_rows``); a longer block's BEGIN waits for every commit before it."""


class OpenStatement:
    """A statement being assembled (mutable until it is written)."""

    __slots__ = (
        "after",
        "after_objects",
        "after_rows",
        "closed",
        "commit",
        "duration_us",
        "emitted",
        "fingerprint",
        "kind",
        "name",
        "params",
        "params_json",
        "params_truncated",
        "parsed",
        "pending",
        "row_key",
        "row_writes",
        "rows_fallback",
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
        self.after = 0
        self.after_objects = 0
        self.after_rows = 0
        """Commits 1..after_rows must be done before it, by row (``--sync rows``)."""
        self.rows_fallback = 0
        """``after_rows`` if it turns out to have failed: ordered by relation then."""
        self.row_key: Write | None = None
        """The rows it writes, when it writes by key."""
        self.commit = 0
        self.pending: tuple[AbstractSet[str], bool] | None = None
        """A commit waiting for its number: (relations written, global)."""
        self.row_writes: tuple[list[Write], set[str]] | None = None
        """With ``pending``: the rows it commits by key, and the relations without."""

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
            end = ""  # the usual statement: no optional member but the clock's
        else:
            end = self._optional_members()
        if self.after or self.commit:
            end += self._sync_members()
        return (
            f'{{"type":"statement","session":{session_json},"seq":{self.seq},'
            f'"offset_us":{offset_us},"kind":"{self.kind._value_}",'
            f'"sql":{self.sql_json or _dumps(self.sql)},"fingerprint":"{self.fingerprint}"{end}}}'
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

    def _sync_members(self) -> str:
        out = f',"commit":{self.commit}' if self.commit else ""
        if self.after:
            out += f',"after":{self.after}'
        if self.after_objects:
            out += f',"after_objects":{self.after_objects}'
        rows = self.rows_value()
        if rows:
            out += f',"after_rows":{rows}'
        return out

    def rows_value(self) -> int:
        """``after_rows`` as written: a statement that failed in the capture may have
        failed because of rows its key does not name (a unique or foreign key), so
        it is ordered by relation."""
        return self.after_rows if self.sqlstate is None else self.rows_fallback

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
    __slots__ = (
        "after_disconnects",
        "begin",
        "block",
        "block_statements",
        "connect_after",
        "connect_after_objects",
        "connect_us",
        "disconnect_seen",
        "disconnect_us",
        "info",
        "kept",
        "last",
        "proto",
        "statements",
        "tx_global",
        "tx_keyed",
        "tx_unkeyed",
        "tx_written",
    )

    def __init__(self, info: SessionInfo, kept: bool) -> None:
        self.info = info
        self.kept = kept
        self.connect_us: int | None = None
        self.disconnect_us: int | None = None
        self.last: OpenStatement | None = None
        self.proto: tuple[str, str, tuple[str | None, ...] | None, bool] | None = None
        self.statements = 0
        self.block = False
        """Inside BEGIN ... COMMIT/ROLLBACK."""
        self.tx_written: set[str] | None = None
        """What the open transaction may have written so far (None: nothing)."""
        self.tx_global = False
        self.tx_keyed: list[Write] = []
        """Rows the open transaction wrote by key so far."""
        self.tx_unkeyed: set[str] = set()
        """Relations the open transaction wrote without a key so far."""
        self.begin: OpenStatement | None = None
        """The BEGIN of the open block, while its ``after_rows`` may still be lowered."""
        self.block_statements: list[OpenStatement] = []
        self.connect_after = 0
        self.connect_after_objects = 0
        self.after_disconnects = 0
        """Disconnections (of kept sessions) logged before its connection."""
        self.disconnect_seen = 0
        """Its disconnection was the n-th of a kept session (0: not logged)."""


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
        # the commit clock (docs/workload-format.md): numbers given in log order
        self.commits = 0
        self.disconnects = 0
        self._effects: dict[str, Effect] = {}
        """Effects by fingerprint (see capture.effects)."""
        self._evidence: list[int] = []
        """Evidence time of the latest commits (a running maximum: sorted)."""
        self._evidence_base = 0
        """Commits numbered before ``_evidence[0]``."""
        self._written_by: dict[str, list[int]] = {}
        """Relation name to the latest commit numbers that wrote it, ascending."""
        self._last_write: dict[str, int] = {}
        """Relation name to the latest commit that wrote it."""
        self._global: list[int] = [0]
        """The latest global commit numbers, ascending (0: none)."""
        self._row_clock = RowClock()
        """Which commit last wrote which rows (``after_rows``)."""
        self._coupled: set[str] = set()
        """Relations DDL in the log tied to others (capture.effects.couplings)."""
        self._rows_global: list[int] = [0]
        """The latest commits that are global by row: global, or wrote a coupled relation."""

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

        The one fast path: a plain ``statement:`` event of a kept session (a busy
        log is millions of them) is opened here, with the tracker's state in local
        variables, doing what :meth:`_open` and :meth:`_clock` do for it (a call per
        statement costs more than that work; tests/test_tracker.py pins the two).
        """
        if self._filtering:
            for event in events:
                self.feed(event)
            return
        sessions, effects = self.sessions.get, self._effects.get
        feed, transit, number, by_row = self.feed, self._transit, self._number, self._by_row
        last_write, global_commits = self._last_write.get, self._global
        tail = self._tail
        append = tail.append
        log_now, order, count = self.log_now, self._order, 0
        for event in events:
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
                if prev.pending is not None:
                    number(prev, ts_us)
                prev_end = prev.start_us + (prev.duration_us or 0)
                if start_us < prev_end:
                    start_us = max(prev.start_us, min(prev_end, ts_us))
            kind = (
                COPY
                if ("tdin" in sql or "TDIN" in sql) and _COPY_FROM_STDIN.search(sql)
                else SIMPLE
            )
            stmt = OpenStatement(session, state.statements, start_us, kind, sql, fp, parsed)
            stmt.sql_json = sql_json
            state.statements += 1
            state.last = stmt
            count += 1
            effect = effects(fp) or self._classify(fp, sql, parsed)
            n = self.commits
            if n:
                stmt.after = n
                if effect.is_global:
                    stmt.after_objects = n
                else:
                    m = global_commits[-1]
                    for relation in effect.relations:
                        k = last_write(relation, 0)
                        if k > m:
                            m = k
                    stmt.after_objects = m
            by_row(state, stmt, effect, n)
            if not effect.inert:
                transit(state, stmt, effect, ts_us)
            order += 1
            if not tail or start_us >= tail[-1][0]:
                append((start_us, order, stmt))
            else:
                heapq.heappush(self._heap, (start_us, order, stmt))
        self.log_now, self._order = log_now, order
        self.statements += count

    def feed(self, event: LogEvent | tuple[Any, ...]) -> None:
        """Take one event: a :class:`LogEvent`, or a plain tuple in its field order."""
        (
            kind,
            session,
            ts_us,
            _,
            sql,
            fp,
            parsed,
            sql_json,
            name,
            params,
            truncated,
            duration_us,
            sqlstate,
            params_json,
        ) = full_event(event)
        if ts_us > self.log_now:
            self.log_now = ts_us
        state = self.sessions.get(session) or self._new_session(session)
        if kind in (_STATEMENT, _EXECUTE):
            if sql is None:
                sql, sql_json = "", None
            if kind == _STATEMENT:
                self._open(state, session, ts_us, ts_us, SIMPLE, sql, sql_json, fp, parsed)
            else:
                params = () if params is None else params
                self._open(
                    state, session, ts_us, ts_us, EXECUTE, sql, sql_json, fp, parsed,
                    params, params_json, name or "", truncated,
                )  # fmt: skip
        elif kind == _DURATION:
            self._duration(state, ts_us, duration_us)
        elif kind in (_DURATION_STATEMENT, _DURATION_EXECUTE):
            self.durations_seen = True
            stmt_kind = SIMPLE if kind == _DURATION_STATEMENT else EXECUTE
            if self._duration_attaches(state, ts_us, sql, stmt_kind, duration_us):
                return
            start_us = ts_us - (duration_us or 0)
            if sql is None:
                sql, sql_json = "", None
            if stmt_kind is SIMPLE:
                self._open(
                    state, session, ts_us, start_us, SIMPLE, sql, sql_json, fp, parsed,
                    duration_us=duration_us,
                )  # fmt: skip
            else:
                self._open(
                    state, session, ts_us, start_us, EXECUTE, sql, sql_json, fp, parsed,
                    () if params is None else params, params_json, name or "", truncated,
                    duration_us,
                )  # fmt: skip
        elif kind in (_PARSE, _BIND):
            self.durations_seen = True
            bind = kind == _BIND
            state.proto = (name or "", sql or "", params if bind else None, truncated and bind)
        elif kind == _ERROR:
            if sql is not None:
                self._error(state, session, ts_us, sql, sql_json, fp, parsed, sqlstate)
        elif kind == _CONNECT:
            state.connect_us = ts_us
            state.connect_after = self.commits
            state.connect_after_objects = self._global[-1]
            state.after_disconnects = self.disconnects
        elif kind == _DISCONNECT:
            self._disconnect(state, ts_us)

    def _disconnect(self, state: _SessionState, ts_us: int) -> None:
        state.disconnect_us = ts_us
        last = state.last
        if last is not None:
            last.closed = True
            if last.pending is not None:
                self._number(last, ts_us)
        if state.kept and not state.disconnect_seen:
            self.disconnects += 1
            state.disconnect_seen = self.disconnects

    def _new_session(self, session: str) -> _SessionState:
        info = self.infos.get(session, _NO_INFO)
        reason = self.filters.keeps_session(info)
        if reason is not None:
            self.counts.filtered_sessions += 1
            self.filter_reasons[reason] = self.filter_reasons.get(reason, 0) + 1
        state = self.sessions[session] = _SessionState(info, reason is None)
        return state

    def _duration(self, state: _SessionState, ts_us: int, duration_us: int | None) -> None:
        """A bare ``duration:`` record: the end of the session's latest statement."""
        self.durations_seen = True
        last = state.last
        if last is not None and last.duration_us is None and last.sqlstate is None:
            if last.emitted:
                self.counts.late_outcomes += 1
            last.duration_us = duration_us
            last.closed = True
            self.counts.durations_attached += 1
            if last.pending is not None:
                self._number(last, ts_us)

    def _duration_attaches(
        self,
        state: _SessionState,
        ts_us: int,
        sql: str | None,
        kind: StatementKind,
        duration_us: int | None,
    ) -> bool:
        """Whether ``duration: ... statement|execute`` ends the statement logged at its start."""
        last = state.last
        if (
            last is not None
            and not last.closed
            and last.sql == sql
            and (last.kind is kind or last.kind is COPY)
        ):
            last.duration_us = duration_us
            last.closed = True
            self.counts.durations_attached += 1
            if last.pending is not None:
                self._number(last, ts_us)
            return True
        return False

    def _open(
        self,
        state: _SessionState,
        session: str,
        ts_us: int,
        start_us: int,
        kind: StatementKind,
        sql: str,
        sql_json: str | None,
        fp: str | None,
        parsed: bool,
        params: tuple[str | None, ...] | None = None,
        params_json: str | None = None,
        name: str | None = None,
        truncated: bool = False,
        duration_us: int | None = None,
        sqlstate: str | None = None,
    ) -> None:
        """Open a statement of ``state``'s session: the one place statements are made.

        ``kind`` is SIMPLE or EXECUTE (SIMPLE becomes COPY_FROM_STDIN here when it is
        one); ``params``, ``params_json``, ``name`` and ``truncated`` are for EXECUTE.
        """
        prev = state.last
        if prev is not None:
            prev.closed = True
            if prev.pending is not None:  # this record is evidence that it completed
                self._number(prev, ts_us)
            # log times have millisecond resolution: keep a session's statements in order
            prev_end = prev.start_us + (prev.duration_us or 0)
            if start_us < prev_end:
                start_us = max(prev.start_us, min(prev_end, ts_us))
        if not state.kept:
            self.counts.filtered_statements += 1
            state.last = None
            return
        if self._filtering and self._filters_out(start_us, sql):
            state.last = None
            return
        if fp is None:
            fp, parsed = compute_fingerprint(sql)
        if kind is SIMPLE and ("tdin" in sql or "TDIN" in sql) and _COPY_FROM_STDIN.search(sql):
            kind = COPY
        stmt = OpenStatement(
            session,
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
        stmt.sql_json = sql_json
        stmt.params_json = params_json
        state.statements += 1
        state.last = stmt
        self.statements += 1
        self._clock(state, stmt, ts_us, fp, sql, parsed, duration_us is not None)
        order = self._order = self._order + 1
        tail = self._tail
        if not tail or start_us >= tail[-1][0]:
            tail.append((start_us, order, stmt))  # the usual case: log order is start order
        else:
            heapq.heappush(self._heap, (start_us, order, stmt))

    def _clock(
        self,
        state: _SessionState,
        stmt: OpenStatement,
        ts_us: int,
        fp: str,
        sql: str,
        parsed: bool,
        logged_at_end: bool,
    ) -> None:
        """The commit clock's part of opening ``stmt``: its ``after`` members, and
        whether it is a commit (numbered now when its own record shows it ended)."""
        effect = self._effects.get(fp) or self._classify(fp, sql, parsed)
        if logged_at_end:
            n = self._commits_before(stmt.start_us)
            stmt.after = n
            stmt.after_objects = n if effect.is_global else self._objects_before(effect, n)
        elif self.commits:
            n = stmt.after = self.commits
            if effect.is_global:
                stmt.after_objects = n
            else:
                m = self._global[-1]
                for relation in effect.relations:
                    m = max(m, self._last_write.get(relation, 0))
                stmt.after_objects = m
        self._by_row(state, stmt, effect, stmt.after, logged_at_end)
        if not effect.inert:
            self._transit(state, stmt, effect, ts_us)

    def _by_row(
        self,
        state: _SessionState,
        stmt: OpenStatement,
        effect: Effect,
        n: int,
        logged_at_end: bool = False,
    ) -> None:
        """The row clock's part of opening ``stmt`` (after its ``after_objects``):
        its ``after_rows``, and the rows it writes by key (docs/workload-format.md)."""
        coupled = self._coupled
        if effect.couples:
            coupled.update(effect.couples)
        if (
            effect.is_global
            or len(effect.steps) > 1
            or (coupled and not coupled.isdisjoint(effect.relations))
        ):
            value = fallback = n
        else:
            rows_global = self._rows_global[-1]
            if rows_global > n:  # a statement logged at its end: the clock was then
                rows_global = _latest(self._rows_global, n)
            value = fallback = max(stmt.after_objects, rows_global)
            plan = effect.keys
            values = None if plan is None else key_values(plan, stmt.sql, stmt.params)
            if values is not None:
                assert plan is not None
                if plan.writes:
                    stmt.row_key = (plan, values)
                if not logged_at_end:  # the clock holds the present, not the past
                    if plan.access is _INSERT:
                        found = self._row_clock.inserting(plan.relation)
                    else:
                        found = self._row_clock.keyed(plan, values)
                    if found < rows_global:
                        found = rows_global
                    if found < fallback:
                        value = found
        stmt.after_rows, stmt.rows_fallback = value, fallback
        if state.begin is not None:
            if len(state.block_statements) < BLOCK_KEPT:
                state.block_statements.append(stmt)
            else:
                state.begin = None  # too long to follow: its BEGIN waits for every commit

    def _end_block(self, state: _SessionState) -> None:
        """The block of ``state`` ends: its BEGIN waits only for the commits before it
        that wrote rows its statements touch (when the BEGIN is not written yet)."""
        begin, statements = state.begin, state.block_statements
        state.begin, state.block_statements = None, []
        if begin is None or begin.emitted:
            return
        value = max((stmt.rows_value() for stmt in statements), default=0)
        begin.after_rows = min(begin.after, max(begin.rows_fallback, value))

    def _transit(
        self, state: _SessionState, stmt: OpenStatement, effect: Effect, ts_us: int
    ) -> None:
        """Follow the session's transaction through ``stmt``: is it a commit?"""
        control = effect.control
        if effect.autocommit is not None:  # one statement that may write
            key = stmt.row_key
            if not state.block:
                stmt.pending = effect.autocommit
                stmt.row_writes = None if key is None else ([key], set())
            else:
                if state.tx_written is None:
                    state.tx_written = set(effect.written)  # remembered for the COMMIT
                else:
                    state.tx_written.update(effect.written)
                if key is None:
                    state.tx_unkeyed.update(effect.written)
                else:
                    state.tx_keyed.append(key)
            if effect.writes_global and state.block:
                state.tx_global = True
        elif control is _BEGIN:
            state.block = True
            # replay waits at a block's start, not inside it (no wait while holding
            # row locks), and which relations the block will touch is not known yet:
            # its BEGIN waits for every commit before it, in objects mode too; by row,
            # until the block's end shows which rows it touched (_end_block)
            stmt.after_objects = stmt.after_rows = stmt.after
            state.begin, state.block_statements = stmt, []
        elif control is _COMMIT or control is _ROLLBACK:
            self._end_block(state)
            if state.tx_written is not None:
                if control is _COMMIT:
                    stmt.pending = (state.tx_written, state.tx_global)
                    stmt.row_writes = (state.tx_keyed, state.tx_unkeyed)
                state.tx_written, state.tx_global = None, False
            state.tx_keyed, state.tx_unkeyed = [], set()
            state.block = False
        else:  # several statements in one record
            state.begin, state.block_statements = None, []
            stmt.pending = _transition(state, effect)
            if state.tx_written is None:
                state.tx_keyed, state.tx_unkeyed = [], set()
        if stmt.closed and stmt.pending is not None:
            self._number(stmt, ts_us)

    def _classify(self, fp: str, sql: str, parsed: bool) -> Effect:
        effects = self._effects
        if len(effects) >= 100_000:
            effects.clear()
        effect = effects[fp] = effect_of(sql, parsed)
        return effect

    def _number(self, stmt: OpenStatement, ts_us: int) -> None:
        """Give the pending commit ``stmt`` the next number; ``ts_us``: its evidence time."""
        assert stmt.pending is not None
        written, is_global = stmt.pending
        stmt.pending = None
        k = stmt.commit = self.commits = self.commits + 1
        evidence = self._evidence
        if evidence and ts_us < evidence[-1]:
            ts_us = evidence[-1]
        evidence.append(ts_us)
        if len(evidence) > 2 * EVIDENCE_KEPT:
            del evidence[:EVIDENCE_KEPT]
            self._evidence_base += EVIDENCE_KEPT
        rows = stmt.row_writes
        stmt.row_writes = None
        if rows is None:
            self._row_clock.record(k, (), written)
        else:
            self._row_clock.record(k, rows[0], rows[1])
        if is_global or not self._coupled.isdisjoint(written):
            _remember(self._rows_global, k)
        written_by = self._written_by
        last_write = self._last_write
        for relation in written:
            last_write[relation] = k
            history = written_by.get(relation)
            if history is None:
                written_by[relation] = [k]
            else:
                _remember(history, k)
        if is_global:
            _remember(self._global, k)

    def _commits_before(self, ts_us: int) -> int:
        """How many commits were evidenced before ``ts_us`` (older ones all count)."""
        return self._evidence_base + bisect.bisect_left(self._evidence, ts_us)

    def _objects_before(self, effect: Effect, n: int) -> int:
        """The latest commit <= n that was global or wrote a relation ``effect`` touches."""
        m = _latest(self._global, n)
        for relation in effect.relations:
            history = self._written_by.get(relation)
            if history is not None:
                m = max(m, _latest(history, n))
        return m

    def _filters_out(self, start_us: int, sql: str) -> bool:
        """Whether the time window or the SQL pattern drops this statement (counted)."""
        if (self._since is not None and start_us < self._since) or (
            self._until is not None and start_us >= self._until
        ):
            self._filtered("outside the time window")
            return True
        if self._exclude is not None and self._exclude.search(sql):
            self._filtered("SQL excluded")
            return True
        return False

    def _filtered(self, reason: str) -> None:
        self.counts.filtered_statements += 1
        self.filter_reasons[reason] = self.filter_reasons.get(reason, 0) + 1

    def _error(
        self,
        state: _SessionState,
        session: str,
        ts_us: int,
        sql: str,
        sql_json: str | None,
        fp: str | None,
        parsed: bool,
        sqlstate: str | None,
    ) -> None:
        """An ERROR with a query: the outcome of the latest statement, or one of its own."""
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
            last.sqlstate = sqlstate
            last.closed = True
            self.counts.errors_attached += 1
            if last.pending is not None:
                self._number(last, ts_us)
            return
        if not state.kept:
            return
        self.counts.statements_from_errors += 1
        proto = state.proto
        if proto is not None and proto[1] == sql:
            name, _, params, truncated = proto
            if params is None:  # failed in bind: the values were never logged
                params = (None,) * placeholder_count(sql)
                truncated = bool(params)
        elif "$" in sql and placeholder_count(sql) > 0:
            name, params, truncated = "", (None,) * placeholder_count(sql), True
        else:
            self._open(
                state, session, ts_us, ts_us, SIMPLE, sql, sql_json, fp, parsed, sqlstate=sqlstate
            )
            return
        self._open(
            state, session, ts_us, ts_us, EXECUTE, sql, sql_json, fp, parsed, params, None,
            name, truncated, sqlstate=sqlstate,
        )  # fmt: skip

    # --- output ----------------------------------------------------------------

    def _emit(self, stmt: OpenStatement) -> None:
        stmt.emitted = True
        if stmt.pending is not None:  # written before any evidence: numbered now
            self._number(stmt, self.log_now)

    def _pop(self) -> OpenStatement:
        heap, tail = self._heap, self._tail
        if heap and (not tail or heap[0] < tail[0]):
            stmt = heapq.heappop(heap)[2]
        else:
            stmt = tail.popleft()[2]
        stmt.emitted = True
        if stmt.pending is not None:  # written before any evidence: numbered now
            self._number(stmt, self.log_now)
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
            now = self.log_now
            for stmt in out:
                stmt.emitted = True
                if stmt.pending is not None:  # written before any evidence: numbered now
                    self._number(stmt, now)
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
                self._emit(stmt)
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
            self._emit(stmt)
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
        written = self._written_sessions()
        order = sorted(state.disconnect_seen for _, state in written if state.disconnect_seen)
        dense = {seen: j for j, seen in enumerate(order, start=1)}
        for sid, state in written:
            info = state.info if state.info is not _NO_INFO else self.infos.get(sid, _NO_INFO)
            connected = state.connect_us is not None
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
                disconnect_order=dense.get(state.disconnect_seen, 0),
                after_disconnects=bisect.bisect_right(order, state.after_disconnects)
                if connected
                else 0,
                connect_after=state.connect_after,
                connect_after_objects=state.connect_after_objects,
            )

    def sync_header(self) -> dict[str, int]:
        """The header's ``sync`` totals, once every statement was taken out."""
        written = self._written_sessions()
        return {
            "commits": self.commits,
            "disconnects": sum(1 for _, state in written if state.disconnect_seen),
            "rows": 1,
        }

    def _written_sessions(self) -> list[tuple[str, _SessionState]]:
        out = []
        for sid, state in self.sessions.items():
            if not state.kept:
                continue
            if state.statements == 0 and not self._in_window(state.connect_us):
                continue
            out.append((sid, state))
        return out

    def _in_window(self, ts: int | None) -> bool:
        if ts is None:
            return False
        if self._since is not None and ts < self._since:
            return False
        return not (self._until is not None and ts >= self._until)


def _remember(history: list[int], k: int) -> None:
    """Append commit ``k`` to ``history``, keeping its latest numbers only."""
    history.append(k)
    if len(history) > 2 * HISTORY_KEPT:
        del history[:HISTORY_KEPT]


def _latest(history: list[int], n: int) -> int:
    """The largest number <= n in ``history`` (ascending, trimmed to its latest)."""
    if history[-1] <= n:
        return history[-1]
    i = bisect.bisect_right(history, n)
    if i:
        return history[i - 1]
    # every number kept is later: an older one may have been dropped, so wait for all
    return n if len(history) >= HISTORY_KEPT else 0


def _transition(state: _SessionState, effect: Effect) -> tuple[AbstractSet[str], bool] | None:
    """Follow ``state``'s transaction through ``effect``'s steps: what it commits.

    Writes outside a block commit when the record ends (several statements sent
    as one query run as one implicit transaction); in a block, at COMMIT. The
    result is (relations written, global), or None when nothing was committed.
    """
    committed: set[str] | None = None
    committed_global = False
    for step in effect.steps:
        control = step.control
        if control is Control.NONE:
            if step.may_write:
                if state.tx_written is None:
                    state.tx_written = set()
                state.tx_written.update(step.relations)
                state.tx_global = state.tx_global or step.is_global
        elif control is Control.BEGIN:
            state.block = True
        elif control is Control.COMMIT or control is Control.ROLLBACK:
            if control is Control.COMMIT and state.tx_written is not None:
                committed = (committed or set()) | state.tx_written
                committed_global = committed_global or state.tx_global
            state.block = False
            state.tx_written, state.tx_global = None, False
    if not state.block and state.tx_written is not None:
        committed = (committed or set()) | state.tx_written
        committed_global = committed_global or state.tx_global
        state.tx_written, state.tx_global = None, False
    return None if committed is None else (committed, committed_global)
