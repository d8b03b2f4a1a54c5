"""Capture logs written by real PostgreSQL servers while real clients run.

The invariant: every statement a client sent appears exactly once in the
workload, in session order, with its parameters and its outcome (SQLSTATE).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capture.pipeline import CaptureOptions, capture
from capture.records import Session, Statement, StatementKind
from capture.workload import Workload, read_workload
from pgtraffic.servers import Cluster, Profile
from replay.runner import full_scan, quick_scan
from tests.conftest import ClusterFactory

pytestmark = pytest.mark.pg(">=15")

# (sql as psql sends it, expected SQLSTATE or None)
PSQL_SCRIPT: list[tuple[str, str | None]] = [
    ("CREATE TABLE items (id int PRIMARY KEY, name text, note text)", None),
    ("INSERT INTO items VALUES (1, 'it''s', 'multi\nline\n  note')", None),
    ("SELECT $$dollar 'quoted'\n text; with semicolon$$ AS d", None),
    ("SELECT $tag$ $$ nested $$ $tag$ AS t", None),
    ("SELECT 'Ünïcödé ✓ 日本語' AS u, \"id\" FROM items", None),
    ("BEGIN", None),
    ("SAVEPOINT sp1", None),
    ("SELECT * FROM nosuch_table", "42P01"),
    ("ROLLBACK TO SAVEPOINT sp1", None),
    ("INSERT INTO items VALUES (2, 'two', NULL)", None),
    ("RELEASE SAVEPOINT sp1", None),
    ("COMMIT", None),
    ("PREPARE byid(int) AS SELECT name FROM items WHERE id = $1", None),
    ("EXECUTE byid(1)", None),
    ("SELECT 1/0", "22012"),
    ("SELEC broken syntax", "42601"),
    ("SET statement_timeout = 100", None),
    ("SELECT pg_sleep(2)", "57014"),
    ("RESET statement_timeout", None),
    ("DEALLOCATE byid", None),
]

# (sql with %s, params, expected SQLSTATE)
PSYCOPG_CALLS: list[tuple[str, tuple[Any, ...], str | None]] = [
    ("SELECT %s::text, %s::int, %s::text", ("it's\n'quoted'", None, "Ünï ✓"), None),
    ("SELECT %s::text, %s::int, %s::text", ("b", 2, ""), None),
    ("SELECT name FROM items WHERE id = %s", (1,), None),
    ("SELECT name FROM items WHERE id = %s", (2,), None),
    ("SELECT 1 / %s::int", (0,), "22012"),
    ("INSERT INTO items VALUES (%s, %s, %s)", (3, "x" * 50, "line1\nline2"), None),
]


def _strip(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def run_clients(cluster: Cluster, tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text("".join(f"{sql};\n" for sql, _ in PSQL_SCRIPT))
    cluster.run_tool("pgbench", "-i", "-q", "-s", "1")
    result = cluster.run_tool("psql", "-X", "-q", "-f", script, check=False)
    assert "nosuch_table" in result.stderr
    with psycopg.connect(cluster.dsn(), application_name="inv-psycopg", autocommit=True) as conn:
        for sql, params, expected in PSYCOPG_CALLS:
            if expected is None:
                conn.execute(sql, params, prepare=True)
            else:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(sql, params, prepare=True)
                assert info.value.sqlstate == expected
    for mode in ("simple", "extended", "prepared"):
        cluster.run_tool("pgbench", "-n", "-M", mode, "-c", "2", "-t", "4")
    time.sleep(0.3)  # let the logging collector flush


BOTH_FORMATS_WITH_DURATIONS = {
    "log_destination": "'csvlog,jsonlog'",
    "log_min_duration_statement": "0",
}


def logged_clients(
    make_cluster: ClusterFactory, tmp_path: Path, major: int, settings: dict[str, str]
) -> Cluster:
    """A capture cluster with ``settings`` in its configuration, after the clients ran."""
    cluster = make_cluster(major, Profile.CAPTURE, settings=settings)
    run_clients(cluster, tmp_path)
    return cluster


def check_capture(cluster: Cluster, tmp_path: Path, *, jobs: int, durations: bool) -> None:
    """Capture all of ``cluster``'s logs and check the workload's invariants."""
    out = tmp_path / "w.pgtw"
    capture([str(p) for p in cluster.log_files()], out, CaptureOptions(jobs=jobs))
    check_invariants(read_workload(out), durations=durations)


def by_session(workload: Workload) -> dict[str, list[Statement]]:
    sessions: dict[str, list[Statement]] = defaultdict(list)
    for stmt in workload.statements():
        sessions[stmt.session].append(stmt)
    return sessions


def without_clock(sessions: dict[str, list[Statement]]) -> dict[str, list[Statement]]:
    """The statements with their commit-clock members cleared."""
    return {
        sid: [
            dataclasses.replace(s, commit=0, after=0, after_objects=0, after_rows=0) for s in stmts
        ]
        for sid, stmts in sessions.items()
    }


def without_clock_sessions(workload: Workload) -> dict[str, Session]:
    return {
        sid: dataclasses.replace(
            s, disconnect_order=0, after_disconnects=0, connect_after=0, connect_after_objects=0
        )
        for sid, s in workload.sessions.items()
    }


def sessions_of(workload: Workload, application: str) -> list[str]:
    return [s.id for s in workload.sessions.values() if s.application == application]


def check_invariants(workload: Workload, *, durations: bool) -> None:
    # what replay learns from the preamble is what a pass over the statements shows
    assert quick_scan(workload) == full_scan(workload)
    statements = by_session(workload)
    last = -1
    for stmt in workload.statements():
        assert stmt.offset_us >= last
        last = stmt.offset_us
    for sid, stmts in statements.items():
        assert [s.seq for s in stmts] == list(range(len(stmts))), sid
        assert sid in workload.sessions
        assert workload.sessions[sid].statements == len(stmts)
    # the commit clock: numbers 1..K each on one statement, after < commit, m <= n
    every = [s for stmts in statements.values() for s in stmts]
    commits = sorted(s.commit for s in every if s.commit)
    assert commits and commits == list(range(1, len(commits) + 1))
    assert all(s.after_objects <= s.after and (not s.commit or s.after < s.commit) for s in every)
    orders = sorted(s.disconnect_order for s in workload.sessions.values() if s.disconnect_order)
    assert orders == list(range(1, len(orders) + 1))
    assert workload.header.sync == {"commits": len(commits), "disconnects": len(orders), "rows": 1}

    # psql: every statement of the script, once, in order, with its outcome
    (psql,) = [
        sid for sid, stmts in statements.items() if any("nosuch_table" in s.sql for s in stmts)
    ]
    got = [(_strip(s.sql), s.sqlstate) for s in statements[psql]]
    assert got == [(sql, state) for sql, state in PSQL_SCRIPT]
    assert all(s.kind is StatementKind.SIMPLE for s in statements[psql])

    # psycopg: protocol-level named prepared statements with their parameters
    (pyc,) = sessions_of(workload, "inv-psycopg")
    got_py = statements[pyc]
    assert len(got_py) == len(PSYCOPG_CALLS)
    for stmt, (sql, params, expected) in zip(got_py, PSYCOPG_CALLS, strict=True):
        assert stmt.kind is StatementKind.EXECUTE
        count = sql.count("%s")
        assert stmt.sql == sql.replace("%s", "{}").format(*(f"${i + 1}" for i in range(count)))
        assert stmt.sqlstate == expected
        if expected is None:
            assert stmt.params == tuple(None if p is None else str(p) for p in params)
            assert stmt.name
            assert stmt.params_truncated is False
            assert (stmt.duration_us is not None) is durations
        else:
            # failed before its execute was logged: parameters unknown, said so
            assert stmt.params is not None and len(stmt.params) == count

    # pgbench -i loads its tables with COPY FROM STDIN: kept, marked not replayable
    copies = [s for stmts in statements.values() for s in stmts if "from stdin" in s.sql.lower()]
    assert copies
    assert all(s.kind is StatementKind.COPY_FROM_STDIN for s in copies)

    # pgbench: 2 clients x 4 transactions x 7 statements per mode
    pgbench = [sid for sid in sessions_of(workload, "pgbench") if len(statements[sid]) == 28]
    kinds = sorted(tuple(sorted({s.kind.value for s in statements[sid]})) for sid in pgbench)
    assert kinds == [("execute",)] * 4 + [("simple",)] * 2
    for sid in pgbench:
        stmts = statements[sid]
        assert _strip(stmts[0].sql) == "BEGIN"
        assert _strip(stmts[-1].sql) == "END"
        for stmt in stmts:
            assert stmt.sqlstate is None
            if stmt.kind is StatementKind.EXECUTE:
                assert stmt.params is not None
                assert len(stmt.params) == stmt.sql.count("$")
                assert all(p is not None and p.lstrip("-").isdigit() for p in stmt.params)
            assert (stmt.duration_us is not None) is durations


@pytest.mark.parametrize("major", [15, 16, 18])
def test_recipe_log_csv_and_json_agree(make_cluster: Any, tmp_path: Path, major: int) -> None:
    """log_statement=all plus log_min_duration_statement=0: no double counting."""
    cluster = logged_clients(make_cluster, tmp_path, major, BOTH_FORMATS_WITH_DURATIONS)
    csv_files = cluster.log_files("*.csv")
    json_files = cluster.log_files("*.json")
    assert csv_files and json_files
    csv_out, json_out = tmp_path / "csv.pgtw", tmp_path / "json.pgtw"
    summary = capture(
        [str(p) for p in csv_files], csv_out, CaptureOptions(jobs=2, chunk_bytes=4096)
    )
    capture([str(p) for p in json_files], json_out, CaptureOptions(jobs=1))
    assert summary.skipped == {}
    assert summary.server_version is not None and summary.server_version.startswith(str(major))
    csv_w, json_w = read_workload(csv_out), read_workload(json_out)
    check_invariants(csv_w, durations=True)
    check_invariants(json_w, durations=True)
    # csvlog and jsonlog lines of different backends may interleave differently
    # (and so may the commit clock, which follows the log's order)
    assert without_clock(by_session(csv_w)) == without_clock(by_session(json_w))
    assert without_clock_sessions(csv_w) == without_clock_sessions(json_w)


@pytest.mark.parametrize("major", [16])
def test_duration_only_log(make_cluster: Any, tmp_path: Path, major: int) -> None:
    """log_min_duration_statement=0 alone: start = log time - duration."""
    settings = {"log_statement": "'none'", "log_min_duration_statement": "0"}
    cluster = logged_clients(make_cluster, tmp_path, major, settings)
    check_capture(cluster, tmp_path, jobs=1, durations=True)


@pytest.mark.parametrize("major", [18])
def test_statement_only_log(make_cluster: Any, tmp_path: Path, major: int) -> None:
    """The minimal recipe (log_statement=all, no durations), PostgreSQL 18 Parameters:."""
    settings = {"log_min_duration_statement": "-1"}
    cluster = logged_clients(make_cluster, tmp_path, major, settings)
    check_capture(cluster, tmp_path, jobs=2, durations=False)


@pytest.mark.slow
@pytest.mark.parametrize(("major", "mode"), [(16, "extended"), (18, "prepared"), (15, "simple")])
def test_many_concurrent_pgbench_clients(
    make_cluster: Any, tmp_path: Path, major: int, mode: str
) -> None:
    """8 concurrent clients x 300 transactions: nothing lost, duplicated or reordered."""
    cluster = make_cluster(major, Profile.CAPTURE, settings=BOTH_FORMATS_WITH_DURATIONS)
    cluster.run_tool("pgbench", "-i", "-q", "-s", "1")
    cluster.run_tool("pgbench", "-n", "-M", mode, "-c", "8", "-j", "2", "-t", "300")
    time.sleep(0.3)
    for pattern in ("*.csv", "*.json"):
        out = tmp_path / f"w{pattern[2:]}.pgtw"
        files = [str(p) for p in cluster.log_files(pattern)]
        summary = capture(files, out, CaptureOptions(jobs=2, chunk_bytes=64 << 10))
        assert summary.skipped == {}
        workload = read_workload(out)
        statements = by_session(workload)
        runs = [sid for sid in sessions_of(workload, "pgbench") if len(statements[sid]) == 2100]
        assert len(runs) == 8
        for sid in runs:
            stmts = statements[sid]
            assert [s.seq for s in stmts] == list(range(2100))
            assert all(a.offset_us <= b.offset_us for a, b in itertools.pairwise(stmts))
            assert [_strip(s.sql).split()[0] for s in stmts[:7]] == [
                "BEGIN", "UPDATE", "SELECT", "UPDATE", "UPDATE", "INSERT", "END",
            ]  # fmt: skip
            assert all(s.duration_us is not None and s.sqlstate is None for s in stmts)


@pytest.mark.parametrize("major", [16, 18])
def test_cancelled_statements_keep_their_sqlstate(
    make_cluster: Any, tmp_path: Path, major: int
) -> None:
    """A statement cancelled by pg_cancel_backend() from another session, and one
    cancelled by the client's own cancel request (a separate connection carrying
    only the request), are captured once each with SQLSTATE 57014; the session
    goes on, and the cancel request's connection adds no statement."""
    cluster = make_cluster(major, Profile.CAPTURE)

    def wait_active(admin: psycopg.Connection[Any], pid: int) -> None:
        for _ in range(200):
            row = admin.execute(
                "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if row is not None and row[0] == "active" and "pg_sleep" in row[1]:
                return
            time.sleep(0.02)
        raise AssertionError("the statement to cancel never started")

    with (
        psycopg.connect(cluster.dsn(), application_name="inv-victim", autocommit=True) as victim,
        psycopg.connect(cluster.dsn(), application_name="inv-admin", autocommit=True) as admin,
    ):
        pid = victim.info.backend_pid
        for how in ("pg_cancel_backend", "cancel request"):
            failure: list[str | None] = []

            def sleep(sql: str, failure: list[str | None] = failure) -> None:
                try:
                    victim.execute(sql)
                except psycopg.Error as exc:
                    failure.append(exc.sqlstate)

            thread = threading.Thread(target=sleep, args=(f"SELECT pg_sleep(30) /* {how} */",))
            thread.start()
            wait_active(admin, pid)
            if how == "pg_cancel_backend":
                admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
            else:
                victim.cancel()
            thread.join(20)
            assert not thread.is_alive()
            assert failure == ["57014"]
            victim.execute(f"SELECT 'after {how}'")
    time.sleep(0.3)  # let the logging collector flush
    out = tmp_path / "w.pgtw"
    summary = capture([str(p) for p in cluster.log_files("*.csv")], out, CaptureOptions(jobs=1))
    assert summary.skipped == {}
    workload = read_workload(out)
    (sid,) = sessions_of(workload, "inv-victim")
    got = [(s.sql, s.sqlstate) for s in by_session(workload)[sid]]
    assert got == [
        ("SELECT pg_sleep(30) /* pg_cancel_backend */", "57014"),
        ("SELECT 'after pg_cancel_backend'", None),
        ("SELECT pg_sleep(30) /* cancel request */", "57014"),
        ("SELECT 'after cancel request'", None),
    ]
    (admin_sid,) = sessions_of(workload, "inv-admin")
    # the cancel request's own connection sent no statement
    assert {s.session for s in workload.statements()} == {sid, admin_sid}
    admin_sql = [s.sql for s in by_session(workload)[admin_sid]]
    assert any("pg_cancel_backend" in sql for sql in admin_sql)
