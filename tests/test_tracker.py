"""The session tracker, pure: events in, statements and session records out.

Events are built as the decoder builds them (plain ``statement:`` events are
PLAIN_FIELDS-long tuples, others full LogEvent tuples), in log order.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capture.chunking import ChunkText
from capture.csvlog import parse_chunk as parse_csv
from capture.decode import RecordDecoder
from capture.events import PLAIN_FIELDS, EventKind, LogEvent, SessionInfo
from capture.filters import Filters
from capture.normalize import fingerprint
from capture.records import Session, Statement, StatementKind
from capture.sessions import LONG_SLACK_US, SLACK_US, OpenStatement, StatementTracker

K = EventKind
MS = 1000
_WITH_SQL = {K.STATEMENT, K.EXECUTE, K.DURATION_STATEMENT, K.DURATION_EXECUTE, K.ERROR}


def ev(
    kind: EventKind,
    session: str,
    ms: float,
    sql: str | None = None,
    *,
    duration_ms: float | None = None,
    sqlstate: str | None = None,
    name: str | None = None,
    params: tuple[str | None, ...] | None = None,
    truncated: bool = False,
) -> tuple[Any, ...]:
    """One event tuple, as capture/decode.py emits it."""
    ts = int(ms * MS)
    fp, parsed = fingerprint(sql) if sql is not None and kind in _WITH_SQL else (None, True)
    sql_json = encode_basestring(sql) if sql is not None and kind in _WITH_SQL else None
    if kind is K.STATEMENT:
        return (int(kind), session, ts, 1, sql, fp, parsed, sql_json)
    duration = None if duration_ms is None else int(duration_ms * MS)
    params_json = json.dumps(params) if params is not None and kind is not K.BIND else None
    return tuple(
        LogEvent(
            kind, session, ts, 1, sql, fp, parsed, sql_json, name, params, truncated,
            duration, sqlstate, params_json,
        )
    )  # fmt: skip


def st_(session: str, ms: float, sql: str) -> tuple[Any, ...]:
    return ev(K.STATEMENT, session, ms, sql)


def run(
    events: Iterable[tuple[Any, ...]],
    *,
    filters: Filters | None = None,
    one_by_one: bool = False,
    infos: dict[str, SessionInfo] | None = None,
) -> tuple[list[OpenStatement], StatementTracker]:
    """Feed everything, then drain: every statement, in the order written."""
    tracker = StatementTracker(filters)
    if infos:
        tracker.add_sessions(infos)
    events = list(events)
    if one_by_one:
        for event in events:
            tracker.feed(event)
    else:
        tracker.feed_all(events)
    out = tracker.pop_ready()
    out.extend(tracker.drain())
    return out, tracker


def records(stmts: Sequence[OpenStatement]) -> list[Statement]:
    """The statements as the file holds them (offsets from 0)."""
    return [Statement.from_json(json.loads(s.encode(s.start_us))) for s in stmts]


# --- reconstruction ------------------------------------------------------------


def test_statement_and_its_duration_are_one_statement() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "SELECT 1"),
            ev(K.DURATION, "a", 3, duration_ms=2),
            st_("a", 4, "SELECT 2"),
            # log_statement + log_min_duration_statement: the end names the statement again
            ev(K.DURATION_STATEMENT, "a", 6, "SELECT 2", duration_ms=2),
        ]
    )
    assert [(s.sql, s.start_us, s.duration_us) for s in stmts] == [
        ("SELECT 1", 1000, 2000),
        ("SELECT 2", 4000, 2000),
    ]
    assert tracker.counts.durations_attached == 2
    assert tracker.statements == 2


def test_duration_only_statements_start_at_log_time_minus_duration() -> None:
    stmts, _ = run(
        [
            ev(K.DURATION_STATEMENT, "a", 10, "SELECT 1", duration_ms=4),
            ev(K.DURATION_EXECUTE, "a", 20, "SELECT $1", duration_ms=5, name="", params=("7",)),
        ]
    )
    assert [(s.kind, s.start_us, s.duration_us) for s in stmts] == [
        (StatementKind.SIMPLE, 6000, 4000),
        (StatementKind.EXECUTE, 15000, 5000),
    ]
    assert stmts[1].params == ("7",) and stmts[1].name == ""


def test_errors_attach_to_their_statement_or_become_one() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "SELECT 1/0"),
            ev(K.ERROR, "a", 1, "SELECT 1/0", sqlstate="22012"),
            # never logged as a statement (a syntax error, log_statement=mod...)
            ev(K.ERROR, "a", 2, "SELEC 1", sqlstate="42601"),
            ev(K.ERROR, "a", 3, None, sqlstate="57P01"),  # no query: nothing to replay
        ]
    )
    assert [(s.sql, s.sqlstate, s.parsed) for s in stmts] == [
        ("SELECT 1/0", "22012", True),
        ("SELEC 1", "42601", False),
    ]
    assert (tracker.counts.errors_attached, tracker.counts.statements_from_errors) == (1, 1)


def test_parse_or_bind_then_error_is_the_prepared_statement() -> None:
    sql = "SELECT $1::int / $2"
    stmts, _ = run(
        [
            ev(K.PARSE, "a", 1, sql, name="p1"),
            ev(K.BIND, "a", 2, sql, name="p1", params=("1", "0")),
            ev(K.ERROR, "a", 3, sql, sqlstate="22012"),
            ev(K.PARSE, "a", 4, sql, name="p2"),
            ev(K.ERROR, "a", 5, sql, sqlstate="22P02"),  # failed in bind: values unknown
            ev(K.ERROR, "a", 6, "SELECT $1", sqlstate="42P18"),  # not even parsed
        ]
    )
    got = [(s.kind, s.name, s.params, s.params_truncated, s.sqlstate) for s in stmts]
    assert got == [
        (StatementKind.EXECUTE, "p1", ("1", "0"), False, "22012"),
        (StatementKind.EXECUTE, "p2", (None, None), True, "22P02"),
        (StatementKind.EXECUTE, "", (None,), True, "42P18"),
    ]


def test_copy_from_stdin_is_kept_and_marked() -> None:
    stmts, _ = run(
        [
            st_("a", 1, "COPY t FROM STDIN"),
            st_("a", 2, "copy t (a) from stdin with (format csv)"),
            st_("a", 3, "COPY t TO STDOUT"),
            ev(K.DURATION_STATEMENT, "a", 5, "COPY u FROM stdin", duration_ms=1),
            ev(K.ERROR, "a", 6, "COPY v FROM STDIN", sqlstate="42P01"),
        ]
    )
    copy = StatementKind.COPY_FROM_STDIN
    assert [s.kind for s in stmts] == [copy, copy, StatementKind.SIMPLE, copy, copy]


def test_a_session_keeps_its_order_when_log_times_collide() -> None:
    """Duration-only records are logged at the end; with millisecond log times a
    statement's computed start can fall before the previous one's end: it is
    moved to that end (never past its own log time)."""
    stmts, _ = run(
        [
            ev(K.DURATION_STATEMENT, "a", 10, "SELECT 1", duration_ms=8),
            ev(K.DURATION_STATEMENT, "a", 11, "SELECT 2", duration_ms=9.5),
        ]
    )
    assert [s.start_us for s in stmts] == [2000, 10000]


def test_statements_leave_in_start_order_across_sessions() -> None:
    stmts, _ = run(
        [
            st_("a", 100, "SELECT 1"),
            ev(K.DURATION_STATEMENT, "b", 101, "SELECT 2", duration_ms=50),  # began at 51
            st_("a", 102, "SELECT 3"),
        ]
    )
    assert [s.sql for s in stmts] == ["SELECT 2", "SELECT 1", "SELECT 3"]


def test_filters_drop_sessions_windows_and_sql() -> None:
    infos = {
        "a": SessionInfo("app", "db", "web", None, "client backend"),
        "b": SessionInfo("batch", "db", "cron", None, "client backend"),
    }
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    filters = Filters(
        users=("app",),
        since=epoch + dt.timedelta(milliseconds=2),
        until=epoch + dt.timedelta(milliseconds=10),
        exclude_sql=(r"pg_catalog",),
    )
    stmts, tracker = run(
        [
            st_("a", 1, "SELECT 1"),  # before the window
            st_("a", 3, "SELECT 2"),
            st_("a", 4, "SELECT * FROM pg_catalog.pg_class"),
            st_("b", 5, "SELECT 3"),  # another user
            st_("a", 11, "SELECT 4"),  # after the window
        ],
        filters=filters,
        infos=infos,
    )
    assert [s.sql for s in stmts] == ["SELECT 2"]
    assert tracker.counts.filtered_sessions == 1
    assert tracker.counts.filtered_statements == 4
    assert tracker.filter_reasons["outside the time window"] == 2
    assert tracker.filter_reasons["SQL excluded"] == 1


def test_session_records() -> None:
    _, tracker = run(
        [
            ev(K.CONNECT, "a", 1),
            st_("a", 2, "SELECT 1"),
            st_("a", 3, "SELECT 2"),
            ev(K.DISCONNECT, "a", 4),
            ev(K.CONNECT, "idle", 5),  # connected in the window, sent nothing: kept
            ev(K.DISCONNECT, "idle", 6),
            st_("late", 7, "SELECT 3"),  # connected before the capture began
        ],
        infos={"a": SessionInfo("u", "d", "app", "[local]", "client backend")},
    )
    sessions = {s.id: s for s in tracker.session_records(capture_start_us=1000)}
    assert sessions["a"] == Session(
        id="a", user="u", database="d", application="app", client="[local]",
        connect_us=0, disconnect_us=3000, statements=2, disconnect_order=1, connect_after=0,
    )  # fmt: skip
    assert sessions["idle"].statements == 0 and sessions["idle"].disconnect_order == 2
    assert sessions["late"].connect_us is None and sessions["late"].statements == 1
    assert sessions["idle"].after_disconnects == 1  # a's disconnection came before
    assert tracker.sync_header() == {"commits": 0, "disconnects": 2, "rows": 1}


def test_pop_ready_holds_back_what_a_later_record_could_precede() -> None:
    tracker = StatementTracker()
    tracker.feed_all([st_("a", 0, "SELECT 1"), st_("b", 1000, "SELECT 2")])
    assert tracker.pop_ready() == []  # within SLACK_US of the newest record
    tracker.feed_all([st_("c", (SLACK_US + 1500 * MS) / MS, "SELECT 3")])
    assert [s.sql for s in tracker.pop_ready()] == ["SELECT 1", "SELECT 2"]
    assert tracker.buffered == 1
    # with durations logged, a statement waits for its end (up to LONG_SLACK_US)
    tracker.feed_all([ev(K.DURATION, "c", SLACK_US / MS + 1600, duration_ms=1)])
    tracker.feed_all([st_("e", 0, "SELECT 5"), ev(K.DURATION, "e", 1, duration_ms=1)])
    tracker.feed_all([st_("d", SLACK_US * 3 / MS, "SELECT 4")])
    ready = tracker.pop_ready()
    assert [s.sql for s in ready] == ["SELECT 5", "SELECT 3"]
    late = [st_("d", (SLACK_US * 3 + LONG_SLACK_US) / MS + 1, "SELECT 6")]
    tracker.feed_all(late)
    assert [s.sql for s in tracker.pop_ready()] == ["SELECT 4"]  # not closed, written anyway


# --- the two paths agree ----------------------------------------------------------

_SQL = [
    "SELECT 1",
    "SELECT * FROM t",
    "INSERT INTO t VALUES (1)",
    "UPDATE u SET a = 1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s",
    "ROLLBACK TO SAVEPOINT s",
    "CREATE TABLE t (a int)",
    "CREATE SCHEMA s",
    "SELECT f()",
    "SELEC broken",
    "COPY t FROM STDIN",
    "BEGIN; INSERT INTO u VALUES (1); COMMIT",
    "INSERT INTO t VALUES (1); SELECT 1",
    "UPDATE t SET a = 2 WHERE id = 5",
    "UPDATE t SET a = 3 WHERE id = 6",
    "SELECT a FROM t WHERE id = 5",
    "INSERT INTO t (id, a) VALUES (5, 1)",
    "DELETE FROM t WHERE a = 2",
    "CREATE TABLE c (id int REFERENCES t (id))",
]


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Event streams in log order: several sessions, every event kind."""
    events: list[tuple[Any, ...]] = []
    ms = 0.0
    for _ in range(draw(st.integers(1, 40))):
        ms += draw(st.sampled_from([0, 0.4, 1, 3, 2500]))
        session = draw(st.sampled_from(["a", "b", "c"]))
        sql = draw(st.sampled_from(_SQL))
        kind = draw(
            st.sampled_from(
                [K.STATEMENT] * 6
                + [K.DURATION, K.DURATION_STATEMENT, K.ERROR, K.CONNECT, K.DISCONNECT, K.BIND]
            )
        )
        duration = draw(st.sampled_from([0, 1, 5, 3000]))
        events.append(
            ev(kind, session, ms, sql if kind not in (K.CONNECT, K.DISCONNECT) else None,
               duration_ms=duration, sqlstate="XX000" if kind is K.ERROR else None,
               name="", params=() if kind is K.BIND else None)
        )  # fmt: skip
    return events


def _outcome(events: list[tuple[Any, ...]], chunks: int, one_by_one: bool) -> tuple[Any, ...]:
    tracker = StatementTracker()
    out: list[str] = []
    size = max(1, len(events) // chunks)
    for start in range(0, len(events), size):
        piece = events[start : start + size]
        if one_by_one:
            for event in piece:
                tracker.feed(event)
        else:
            tracker.feed_all(piece)
        out.extend(s.encode(s.start_us) for s in tracker.pop_ready())
    out.extend(s.encode(s.start_us) for s in tracker.drain())
    sessions = list(tracker.session_records(0))
    return out, tracker.counts, sessions, tracker.sync_header(), tracker.statements


@settings(max_examples=150, deadline=None)
@given(events=streams(), chunks=st.integers(1, 4))
def test_feed_all_and_feed_one_by_one_agree(events: list[tuple[Any, ...]], chunks: int) -> None:
    """feed_all's fast path for plain statements does what feed() does."""
    assert _outcome(events, chunks, False) == _outcome(events, chunks, True)


def test_the_paths_agree_on_real_logs() -> None:
    """Records of real servers (the test logs), decoded as capture decodes them."""
    fed = 0
    for path in sorted(Path(__file__).parent.joinpath("logs").glob("*.csv")):
        decoder = RecordDecoder()
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        parse_csv(decoder, ChunkText(text, path.name, 1, check_encoding=True))
        events = decoder.take().events
        fed += len(events)
        assert _outcome(events, 1, False) == _outcome(events, 1, True)
    assert fed > 3
    assert any(len(e) == PLAIN_FIELDS for e in events)


# --- the commit clock (docs/workload-format.md) -------------------------------------


def clock(stmts: Sequence[OpenStatement]) -> dict[str, tuple[int, int, int]]:
    """SQL to (commit, after, after_objects)."""
    return {s.sql: (s.commit, s.after, s.after_objects) for s in stmts}


def check_clock(stmts: Sequence[OpenStatement], tracker: StatementTracker) -> None:
    """Dense numbers, each on one statement; after < commit; after_objects <= after."""
    commits = sorted(s.commit for s in stmts if s.commit)
    assert commits == list(range(1, len(commits) + 1))
    assert tracker.sync_header()["commits"] == len(commits)
    for s in stmts:
        assert 0 <= s.after_objects <= s.after
        assert 0 <= s.rows_value() <= s.after
        if s.commit:
            assert s.after < s.commit


def test_a_later_session_comes_after_the_commit_it_saw() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "CREATE TABLE t (a int)"),
            st_("a", 2, "SELECT 1"),  # evidence that CREATE TABLE completed
            st_("b", 3, "INSERT INTO t VALUES (1)"),
            st_("b", 4, "SELECT * FROM t"),
        ]
    )
    got = clock(stmts)
    assert got["CREATE TABLE t (a int)"] == (1, 0, 0)
    assert got["SELECT 1"] == (0, 1, 0)  # touches nothing A wrote
    assert got["INSERT INTO t VALUES (1)"] == (2, 1, 1)
    assert got["SELECT * FROM t"] == (0, 2, 2)
    check_clock(stmts, tracker)


def test_only_the_commit_of_a_writing_block_is_a_commit() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "SELECT * FROM t"),  # read-only autocommit: no commit
            st_("a", 2, "BEGIN"),
            st_("a", 3, "UPDATE t SET a = 2"),
            st_("a", 4, "SAVEPOINT s"),
            st_("a", 5, "DELETE FROM t"),
            st_("a", 6, "ROLLBACK TO SAVEPOINT s"),  # still in the block
            st_("a", 7, "COMMIT"),
            st_("a", 8, "BEGIN"),
            st_("a", 9, "INSERT INTO t VALUES (3)"),
            st_("a", 10, "ROLLBACK"),  # no commit
            st_("a", 11, "BEGIN"),
            st_("a", 12, "SELECT * FROM t"),
            st_("a", 13, "END"),  # a read-only block: no commit
            st_("a", 14, "SET x = 1"),
        ]
    )
    assert [(s.sql, s.commit) for s in stmts if s.commit] == [("COMMIT", 1)]
    assert stmts[-1].after == 1 and stmts[-1].after_objects == 0
    check_clock(stmts, tracker)


def test_several_statements_in_one_record() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "BEGIN; INSERT INTO u VALUES (1); COMMIT"),
            st_("a", 2, "BEGIN; INSERT INTO u VALUES (1)"),  # the block stays open
            st_("a", 3, "SELECT 1; SELECT 2"),
            st_("a", 4, "COMMIT"),
            st_("b", 5, "SELECT * FROM u"),
        ]
    )
    got = clock(stmts)
    assert got["BEGIN; INSERT INTO u VALUES (1); COMMIT"][0] == 1
    assert got["BEGIN; INSERT INTO u VALUES (1)"][0] == 0
    assert got["COMMIT"][0] == 2
    assert got["SELECT * FROM u"] == (0, 1, 1)  # no evidence of the COMMIT yet
    check_clock(stmts, tracker)


def test_an_unrelated_table_waits_only_for_its_own_writers() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "INSERT INTO t VALUES (1)"),
            st_("b", 2, "INSERT INTO u VALUES (1)"),
            st_("a", 3, "INSERT INTO t VALUES (2)"),  # evidence for a's first
            st_("b", 4, "INSERT INTO u VALUES (2)"),  # evidence for b's first
            st_("a", 5, "CREATE SCHEMA s"),  # global
            st_("c", 6, "SELECT * FROM u"),
            st_("a", 7, "SELECT * FROM t"),  # evidence for CREATE SCHEMA
            st_("c", 8, "SELECT * FROM u"),
        ]
    )
    by_seq = {(s.session, s.seq): s for s in stmts}
    # commits: a's first (1), b's first (2), a's second (3), CREATE SCHEMA (4)
    assert (by_seq["c", 0].after, by_seq["c", 0].after_objects) == (3, 2)
    assert (by_seq["c", 1].after, by_seq["c", 1].after_objects) == (4, 4)  # global
    assert by_seq["a", 3].after_objects == 4
    check_clock(stmts, tracker)


def test_unknown_functions_and_unparsable_sql_touch_everything() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "INSERT INTO t VALUES (1)"),
            st_("b", 2, "SELECT 1"),  # nothing yet: after 0
            st_("a", 3, "SELECT count(*) FROM t"),  # count is read-only: no commit
            st_("b", 4, "SELECT my_function()"),
            st_("b", 5, "SELEC broken"),
        ]
    )
    got = clock(stmts)
    assert got["SELECT count(*) FROM t"] == (0, 1, 1)
    assert got["SELECT my_function()"] == (2, 1, 1)
    assert got["SELEC broken"] == (3, 2, 2)
    check_clock(stmts, tracker)


def test_evidence_numbers_in_log_order() -> None:
    """A commit is numbered when the log shows it completed: its duration, an
    error attached to it, the disconnection, or the next statement."""
    stmts, tracker = run(
        [
            st_("a", 1, "INSERT INTO t VALUES (1)"),
            st_("b", 2, "INSERT INTO t VALUES (2)"),
            ev(K.DURATION, "b", 3, duration_ms=1),  # b's commit first
            st_("c", 4, "INSERT INTO t VALUES (3)"),
            ev(K.ERROR, "c", 5, "INSERT INTO t VALUES (3)", sqlstate="23505"),
            ev(K.DISCONNECT, "a", 6),
            st_("d", 7, "SELECT * FROM t"),
        ]
    )
    assert [(s.session, s.commit, s.after) for s in stmts] == [
        ("a", 3, 0),
        ("b", 1, 0),
        ("c", 2, 1),
        ("d", 0, 3),
    ]
    check_clock(stmts, tracker)


def test_a_commit_written_before_its_evidence_is_numbered_when_written() -> None:
    tracker = StatementTracker()
    tracker.feed_all([st_("a", 0, "INSERT INTO t VALUES (1)")])
    tracker.feed_all([st_("b", SLACK_US / MS + 10, "SELECT * FROM t")])
    (first,) = tracker.pop_ready()
    assert first.commit == 1
    tracker.feed_all([st_("a", SLACK_US / MS + 20, "SELECT 1"), st_("c", 3e6, "SELECT 2")])
    rest = tracker.pop_ready()
    assert [(s.session, s.commit, s.after) for s in rest] == [("b", 0, 0), ("a", 0, 1)]


def test_duration_only_statements_count_commits_before_their_start() -> None:
    stmts, tracker = run(
        [
            ev(K.DURATION_STATEMENT, "a", 10, "INSERT INTO t VALUES (1)", duration_ms=2),
            ev(K.DURATION_STATEMENT, "b", 30, "SELECT * FROM t", duration_ms=25),  # from 5
            ev(K.DURATION_STATEMENT, "c", 31, "SELECT * FROM t", duration_ms=5),  # from 26
            ev(K.DURATION_STATEMENT, "a", 40, "INSERT INTO t VALUES (2)", duration_ms=1),
        ]
    )
    assert [(s.session, s.commit, s.after, s.after_objects) for s in stmts] == [
        ("b", 0, 0, 0),
        ("a", 1, 0, 0),
        ("c", 0, 1, 1),
        ("a", 2, 1, 1),
    ]
    check_clock(stmts, tracker)


def test_connections_and_disconnections_are_ordered() -> None:
    stmts, tracker = run(
        [
            ev(K.CONNECT, "a", 1),
            st_("a", 2, "CREATE ROLE r"),  # global
            ev(K.DISCONNECT, "a", 3),
            ev(K.CONNECT, "x", 3.5),  # filtered out: its disconnection is not counted
            ev(K.DISCONNECT, "x", 3.6),
            ev(K.CONNECT, "b", 4),
            st_("b", 5, "INSERT INTO t VALUES (1)"),
            ev(K.CONNECT, "c", 6),
            ev(K.DISCONNECT, "b", 7),
            st_("c", 8, "SELECT 1"),
            ev(K.DISCONNECT, "c", 9),
        ],
        filters=Filters(exclude_users=("nobody",)),
        infos={"x": SessionInfo("nobody", "d", None, None, "client backend")},
    )
    sessions = {s.id: s for s in tracker.session_records(0)}
    assert set(sessions) == {"a", "b", "c"}
    got = {
        sid: (s.disconnect_order, s.after_disconnects, s.connect_after, s.connect_after_objects)
        for sid, s in sessions.items()
    }
    assert got == {"a": (1, 0, 0, 0), "b": (2, 1, 1, 1), "c": (3, 1, 1, 1)}
    assert tracker.sync_header() == {"commits": 2, "disconnects": 3, "rows": 1}
    check_clock(stmts, tracker)


@settings(max_examples=200, deadline=None)
@given(events=streams(), chunks=st.integers(1, 4))
def test_clock_invariants_hold_on_any_stream(events: list[tuple[Any, ...]], chunks: int) -> None:
    tracker = StatementTracker()
    stmts: list[OpenStatement] = []
    size = max(1, len(events) // chunks)
    for start in range(0, len(events), size):
        tracker.feed_all(events[start : start + size])
        stmts.extend(tracker.pop_ready())
    stmts.extend(tracker.drain())
    check_clock(stmts, tracker)
    sessions = list(tracker.session_records(0))
    orders = sorted(s.disconnect_order for s in sessions if s.disconnect_order)
    assert orders == list(range(1, len(orders) + 1))
    assert tracker.sync_header()["disconnects"] == len(orders)
    for s in sessions:
        assert s.after_disconnects <= len(orders)
        assert s.connect_after_objects <= s.connect_after <= tracker.commits
    # the file's records say the same as the tracker
    assert [(r.commit, r.after, r.after_objects, r.after_rows) for r in records(stmts)] == [
        (s.commit, s.after, s.after_objects, s.rows_value()) for s in stmts
    ]


def test_a_block_begin_waits_for_every_earlier_commit_in_objects_mode_too() -> None:
    """Replay waits at a block's start, not inside it: the BEGIN cannot know the
    relations its block will touch, so its after_objects is its after."""
    stmts, tracker = run(
        [
            st_("a", 1, "INSERT INTO t1 VALUES (1)"),
            st_("a", 2, "SELECT 1"),  # evidence: commit 1
            st_("b", 3, "BEGIN"),
            st_("b", 4, "SELECT * FROM t2"),  # touches nothing a wrote
            st_("b", 5, "COMMIT"),
        ]
    )
    got = {s.sql: (s.after, s.after_objects) for s in stmts}
    assert got["BEGIN"] == (1, 1)
    assert got["SELECT * FROM t2"] == (1, 0)
    check_clock(stmts, tracker)


def rows(stmts: Sequence[OpenStatement]) -> dict[str, tuple[int, int]]:
    """SQL text to (after, after_rows) (the last statement of each text)."""
    return {s.sql: (s.after, s.rows_value()) for s in stmts}


def test_by_row_a_statement_waits_only_for_commits_of_its_rows() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "UPDATE acc SET bal = bal + 1 WHERE aid = 7"),  # commit 1
            st_("a", 2, "UPDATE acc SET bal = bal + 1 WHERE aid = 8"),  # commit 2
            st_("a", 3, "SELECT 1"),
            st_("b", 4, "SELECT bal FROM acc WHERE aid = 7"),
            st_("b", 5, "SELECT bal FROM acc WHERE aid = '8'"),
            st_("b", 6, "SELECT bal FROM acc WHERE aid = 9"),
            st_("b", 7, "SELECT bal FROM acc WHERE bal = 0"),  # no key: by relation
        ]
    )
    got = rows(stmts)
    assert got["SELECT bal FROM acc WHERE aid = 7"] == (2, 1)
    assert got["SELECT bal FROM acc WHERE aid = '8'"] == (2, 2)  # '8' and 8 are one key
    assert got["SELECT bal FROM acc WHERE aid = 9"] == (2, 0)
    assert got["SELECT bal FROM acc WHERE bal = 0"] == (2, 2)
    check_clock(stmts, tracker)


def test_by_row_bind_parameters_are_keys_too() -> None:
    sql = "UPDATE acc SET bal = bal + $1 WHERE aid = $2"
    stmts, tracker = run(
        [
            ev(K.EXECUTE, "a", 1, sql, name="", params=("5", "7")),  # commit 1
            st_("a", 2, "SELECT 1"),
            ev(K.EXECUTE, "b", 3, sql, name="", params=("5", "8")),
            ev(K.EXECUTE, "c", 4, sql, name="", params=("-5", "07")),
            ev(K.EXECUTE, "d", 5, sql, name="", params=("5", None)),  # NULL: by relation
        ]
    )
    got = [(s.session, s.after, s.rows_value()) for s in stmts if s.sql == sql]
    assert got == [("a", 0, 0), ("b", 1, 0), ("c", 1, 1), ("d", 1, 1)]  # b, c: no evidence
    check_clock(stmts, tracker)


def test_by_row_a_block_begin_waits_for_what_its_statements_touch() -> None:
    """The BEGIN (where replay waits) takes the largest need of its block's
    statements, bounded by its own after (what --sync commit would wait for)."""
    stmts, tracker = run(
        [
            st_("a", 1, "UPDATE acc SET bal = 1 WHERE aid = 7"),  # commit 1
            st_("a", 2, "UPDATE acc SET bal = 1 WHERE aid = 8"),  # commit 2
            st_("a", 3, "SELECT 1"),
            st_("b", 4, "BEGIN"),
            st_("b", 5, "UPDATE acc SET bal = 2 WHERE aid = 7"),
            st_("b", 6, "INSERT INTO hist (aid, delta) VALUES (7, 1)"),
            st_("b", 7, "COMMIT"),
            st_("b", 8, "BEGIN"),
            st_("b", 9, "SELECT bal FROM acc WHERE aid = 99"),
            st_("b", 10, "END"),
        ]
    )
    begins = [(s.after, s.rows_value()) for s in stmts if s.sql == "BEGIN"]
    assert begins == [(2, 1), (3, 0)]  # b's first block touched aid 7 only
    check_clock(stmts, tracker)


def test_by_row_inserts_wait_for_changes_not_for_other_inserts() -> None:
    ins = "INSERT INTO hist (aid, delta) VALUES (1, 2)"
    stmts, tracker = run(
        [
            st_("a", 1, "INSERT INTO hist (aid, delta) VALUES (7, 1)"),  # commit 1
            st_("a", 2, "SELECT 1"),
            st_("b", 3, ins),
            st_("b", 4, "SELECT delta FROM hist WHERE aid = 7"),  # reads a's row
            st_("c", 5, "DELETE FROM hist WHERE aid = 3"),  # commit 3 (b's insert is 2)
            st_("c", 6, "SELECT 1"),
            st_("d", 7, "INSERT INTO hist (aid, delta) VALUES (3, 0)"),
            ev(K.ERROR, "d", 7.5, "INSERT INTO hist (aid, delta) VALUES (3, 0)", sqlstate="23505"),
            st_("d", 8, "INSERT INTO hist (aid, delta) VALUES (4, 0)"),
        ]
    )
    got = {(s.session, s.seq): (s.after, s.rows_value()) for s in stmts}
    assert got["b", 0] == (1, 0)  # another insert: no wait
    assert got["b", 1] == (2, 1)  # the row a inserted
    assert got["d", 0] == (3, 3)  # failed in the capture: ordered by relation
    assert got["d", 1] == (4, 3)  # after a DELETE (3): its key may have been freed
    check_clock(stmts, tracker)


def test_by_row_keyed_on_another_column_or_without_it_is_a_dependency() -> None:
    stmts, tracker = run(
        [
            st_("a", 1, "UPDATE acc SET bal = 1 WHERE owner = 'x'"),  # commit 1
            st_("a", 2, "SELECT 1"),
            st_("b", 3, "SELECT bal FROM acc WHERE aid = 7"),
            st_("c", 4, "INSERT INTO t (a) VALUES (1)"),  # commit 2 (b's is 0: a read)
            st_("c", 5, "SELECT 1"),
            st_("d", 6, "SELECT * FROM t WHERE b = 5"),  # c's row has no known b
            st_("d", 7, "SELECT * FROM t WHERE a = 2"),
        ]
    )
    got = rows(stmts)
    assert got["SELECT bal FROM acc WHERE aid = 7"] == (1, 1)
    assert got["SELECT * FROM t WHERE b = 5"] == (2, 2)
    assert got["SELECT * FROM t WHERE a = 2"] == (2, 0)
    check_clock(stmts, tracker)


def test_by_row_relations_tied_by_ddl_are_ordered_by_every_commit() -> None:
    """After a foreign key (or a view, trigger, rule, partition) ties relations, a
    write to one may check or change rows of another: no row-level order there."""
    stmts, tracker = run(
        [
            st_("a", 1, "CREATE TABLE c (id int, pid int REFERENCES p (id))"),  # commit 1
            st_("a", 2, "INSERT INTO p (id) VALUES (1)"),  # commit 2
            st_("a", 3, "SELECT 1"),
            st_("b", 4, "INSERT INTO c (id, pid) VALUES (1, 1)"),
            st_("b", 5, "UPDATE other SET x = 1 WHERE id = 3"),
        ]
    )
    got = rows(stmts)
    assert got["INSERT INTO c (id, pid) VALUES (1, 1)"] == (2, 2)
    # b's insert into c (commit 3) wrote a tied relation: global by row
    assert got["UPDATE other SET x = 1 WHERE id = 3"] == (3, 3)
    check_clock(stmts, tracker)
