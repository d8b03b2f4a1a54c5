"""From one log record's fields (csvlog or jsonlog alike) to a :class:`LogEvent`.

The format readers split and unquote records; :class:`RecordDecoder` decides
what each record means for capture and collects events, session identities and
problems into a :class:`ChunkResult`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from sys import intern

from capture.events import ChunkResult, EventKind, Problem, SessionInfo
from capture.messages import (
    ENGLISH_SEVERITIES,
    FAILURE_SEVERITIES,
    classify,
    parse_parameters,
    placeholder_count,
)
from capture.normalize import Fingerprinter
from capture.timestamps import TimestampError, TimestampParser

CLIENT_BACKEND = "client backend"
_CLIENT_TYPES = frozenset({"", CLIENT_BACKEND})
_COLUMNS = frozenset({23, 24, 26})
"""csvlog field counts (PostgreSQL 12 or older, 13, 14 or newer)."""
_WITH_SQL = frozenset(
    {
        EventKind.STATEMENT,
        EventKind.EXECUTE,
        EventKind.DURATION_STATEMENT,
        EventKind.DURATION_EXECUTE,
    }
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_dumps = _ENCODER.encode
_STATEMENT = int(EventKind.STATEMENT)
_WITH_PARAMS = frozenset({EventKind.EXECUTE, EventKind.DURATION_EXECUTE, EventKind.BIND})


class RecordDecoder:
    """Turns record fields into events; one per worker process, reused across chunks."""

    def __init__(self, *, fingerprints: bool = True) -> None:
        self.parse_time = TimestampParser()
        self.fingerprinter = Fingerprinter() if fingerprints else None
        self.result = ChunkResult()
        self._times: dict[str, int] = {}
        """Log time text to microseconds: a log time repeats across records."""

    def add_csv_rows(
        self,
        source: str,
        first_line: int,
        rows: Iterable[list[str]],
        other: Callable[[int, list[str]], None],
    ) -> None:
        """Decode csvlog rows of one line each, the first on line ``first_line``.

        The overwhelmingly common record, a client backend's ``statement: SQL`` at
        a log time already seen (so already checked), is decoded here in one loop;
        ``other(line, row)`` gets every other row, in order.
        """
        result = self.result
        times = self._times
        sessions = result.sessions
        append = result.events.append
        fingerprinter = self.fingerprinter
        records = 0
        line = first_line - 1
        for row in rows:
            line += 1
            ncols = len(row)
            if not (
                ncols in _COLUMNS
                and row[11] == "LOG"
                and row[13].startswith("statement: ")
                and row[5]
                and (ncols == 23 or row[23] in _CLIENT_TYPES)
            ):
                other(line, row)
                continue
            ts_us = times.get(row[0])
            if ts_us is None:
                other(line, row)
                continue
            records += 1
            if result.first_ts_us is None:
                result.first_ts_us = ts_us
            result.last_ts_us = ts_us
            # marshal writes a repeated object once: one session id object per session
            session = intern(row[5])
            application = row[22]
            known = sessions.get(session)
            if known is None or (not known.application and application):
                sessions[session] = SessionInfo(
                    row[1] or None,
                    row[2] or None,
                    application or None,
                    row[4] or None,
                    row[23] if ncols > 23 else "",
                )
            sql = row[13][11:]
            fp, parsed = (None, True) if fingerprinter is None else fingerprinter(sql)
            # the first PLAIN_FIELDS fields: the others are at their defaults
            append((_STATEMENT, session, ts_us, line, sql, fp, parsed, encode_basestring(sql)))
        result.records += records

    def add_csv_row(self, source: str, line: int, row: list[str], ncols: int) -> None:
        """Decode one csvlog row (23, 24 or 26 fields), as :meth:`add` would."""
        log_time = row[0]
        times = self._times
        if log_time not in times:
            try:
                ts_us = self.parse_time(log_time)
            except TimestampError:
                pass  # add() reports it
            else:
                if len(times) >= 100_000:
                    times.clear()
                times[log_time] = ts_us
        self.add_csv_rows(
            source, line, (row,), lambda n, fields: self._add_fields(source, n, fields)
        )

    def _add_fields(self, source: str, line: int, row: list[str]) -> None:
        self.add(
            source,
            line,
            row[0],
            row[5],
            row[11],
            row[12],
            row[13],
            row[14],
            row[19],
            row[1],
            row[2],
            row[22],
            row[4],
            row[23] if len(row) > 23 else "",
        )

    def take(self) -> ChunkResult:
        """The result collected so far; starts a new one."""
        result, self.result = self.result, ChunkResult()
        return result

    def problem(self, source: str, line: int, reason: str, detail: str = "") -> None:
        self.result.problems.append(Problem(source, line, reason, detail[:200]))

    def add(
        self,
        source: str,
        line: int,
        log_time: str,
        session: str,
        severity: str,
        sqlstate: str,
        message: str,
        detail: str,
        query: str,
        user: str,
        database: str,
        application: str,
        client: str,
        backend_type: str,
    ) -> None:
        """Decode one record (empty strings for absent fields)."""
        result = self.result
        result.records += 1
        if severity == "LOG":
            classified = classify(message)
            if classified is None:
                if message.startswith("starting PostgreSQL "):
                    result.server_version = message.split(" ", 3)[2]
                return
            kind = classified.kind
        elif severity in FAILURE_SEVERITIES:
            classified = None
            kind = EventKind.ERROR
        else:
            if severity not in ENGLISH_SEVERITIES:
                result.non_english += 1
            return
        if backend_type and backend_type != CLIENT_BACKEND:
            return
        if not session:
            return
        session = intern(session)
        try:
            ts_us = self.parse_time(log_time)
        except TimestampError as exc:
            self.problem(source, line, "unreadable log time", str(exc))
            return
        if result.first_ts_us is None:
            result.first_ts_us = ts_us
        result.last_ts_us = ts_us
        known = result.sessions.get(session)
        if known is None or (not known.application and application):
            if kind is EventKind.CONNECT and classified is not None:
                application = classified.application or application
            result.sessions[session] = SessionInfo(
                user or None, database or None, application or None, client or None, backend_type
            )
        if classified is None:
            if kind is EventKind.ERROR:
                self.append_event(
                    kind, session, ts_us, line, query or None, sqlstate=sqlstate or None
                )
            return
        sql = classified.sql
        params: tuple[str | None, ...] | None = None
        truncated = False
        if kind in _WITH_PARAMS:
            parsed_params = parse_parameters(detail) if detail else None
            if parsed_params is not None:
                params, truncated = parsed_params
            else:
                count = placeholder_count(sql) if sql and "$" in sql else 0
                params = (None,) * count
                truncated = count > 0
        self.append_event(
            kind,
            session,
            ts_us,
            line,
            sql if kind in _WITH_SQL else None,
            shown_sql=sql,
            name=classified.name,
            params=params,
            params_truncated=truncated,
            duration_us=classified.duration_us,
        )

    def append_event(
        self,
        kind: EventKind,
        session: str,
        ts_us: int,
        line: int,
        sql: str | None = None,
        *,
        shown_sql: str | None = None,
        name: str | None = None,
        params: tuple[str | None, ...] | None = None,
        params_truncated: bool = False,
        duration_us: int | None = None,
        sqlstate: str | None = None,
    ) -> None:
        """One event, as a tuple in :class:`LogEvent` field order.

        ``sql``: the statement to fingerprint and encode (None for none);
        ``shown_sql``: the event's SQL when it is not one (a parse or bind message's).
        """
        fp, parsed = self._fingerprint(sql) if sql is not None else (None, True)
        self.result.events.append(
            (
                int(kind),
                session,
                ts_us,
                line,
                sql if shown_sql is None else shown_sql,
                fp,
                parsed,
                _dumps(sql) if sql is not None else None,
                name,
                params,
                params_truncated,
                duration_us,
                sqlstate,
                _dumps(params) if params is not None and kind is not EventKind.BIND else None,
            )
        )

    def _fingerprint(self, sql: str) -> tuple[str | None, bool]:
        if self.fingerprinter is None:
            return None, True
        return self.fingerprinter(sql)
