"""Replay's guards (replay.safety, issue #12): logins that cannot connect are named,
the capture's source is refused, writes onto an unprepared server need a yes,
``--read-only`` sends only reads on read-only connections, and the max_connections
warning counts the sessions the chosen pace really opens at once."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from capture.records import Session
from capture.workload import WorkloadWriter, read_workload
from pgtraffic.servers import Cluster, Profile
from replay.errors import TargetRefusedError
from replay.results import read_results
from replay.runner import ReplaySettings, inspect_target, prepare_replay, target_warnings
from replay.sync import SyncMode
from tests.conftest import ClusterFactory
from tests.replay_helpers import START, fetch, replay, simple, write_workload

pytestmark = pytest.mark.pg(">=16")


def _run(cmd: list[str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run pgtraffic with wide output (rich wraps at 80 columns without a terminal)."""
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def _reads(tmp_path: Path, sessions: int = 2) -> Path:
    stmts = [
        simple(f"s{n}", i, n * 1000 + i * 100, "SELECT 1")
        for n in range(sessions)
        for i in range(10)
    ]
    path = tmp_path / "reads.pgtw"
    write_workload(path, stmts)
    return path


def test_a_role_the_target_lacks_is_named_before_and_after(
    pg16: Cluster, pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    """--map-user postgres=ghost: refused before the replay starts, naming the role;
    with --allow-missing-logins the replay runs, says no session could connect, names
    the server's message in the terminal, the JSON and the results file, exits 6."""
    wl = _reads(tmp_path)
    out = tmp_path / "r.pgtr"
    base = ["replay", str(wl), "--target", pg16.dsn(), "-o", str(out), "--max-speed"]
    refused = _run(pgtraffic_cmd, *base, "--no-progress", "--map-user", "postgres=ghost")
    assert refused.returncode == 7, refused.stderr
    assert 'role "ghost" does not exist' in refused.stderr
    assert "ghost@postgres" in refused.stderr and "2 sessions" in refused.stderr
    assert "--map-user" in refused.stderr
    assert not out.exists()

    args = [*base, "--no-progress", "--map-user", "postgres=ghost", "--allow-missing-logins"]
    ran = _run(pgtraffic_cmd, *args, "--json")
    assert ran.returncode == 6, ran.stderr
    assert "no session could connect" in ran.stderr
    assert 'role "ghost" does not exist' in ran.stderr
    report = json.loads(ran.stdout)
    [failure] = report["login_failures"]
    assert (failure["user"], failure["database"], failure["sqlstate"]) == (
        "ghost",
        "postgres",
        "28000",
    )
    assert 'role "ghost" does not exist' in failure["message"]
    assert failure["sessions"] == 2
    assert any(w.startswith("no session could connect") for w in report["warnings"])
    [summary] = read_results(out).summaries  # kept in the results file
    assert [f["message"] for f in summary["login_failures"]] == [failure["message"]]
    table = _run(pgtraffic_cmd, "results", "report", str(out))
    assert 'role "ghost" does not exist' in table.stdout
    assert "no session could connect" in table.stdout


def _by_database(path: Path, databases: dict[str, str]) -> Path:
    """One session per entry (session id -> database), five SELECTs each, as postgres."""
    writer = WorkloadWriter(path)
    stmts = [
        simple(sid, i, i * 100 + n, "SELECT 1") for n, sid in enumerate(databases) for i in range(5)
    ]
    for statement in sorted(stmts, key=lambda s: s.offset_us):
        writer.write(statement)
    writer.close(
        capture_start=START,
        capture_end=START + dt.timedelta(seconds=1),
        sessions=[Session(sid, "postgres", db, statements=5) for sid, db in databases.items()],
        classes=[],
    )
    return path


def test_a_missing_database_is_named_and_a_partial_failure_is_not_clean(
    pg16: Cluster, pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    """One session's database does not exist: refused up front, naming it; allowed, the
    other session replays, the run exits 6 and names the database with the server's
    message."""
    wl = _by_database(tmp_path / "w.pgtw", {"good": "postgres", "lost": "nowhere"})
    out = tmp_path / "r.pgtr"
    args = ["replay", str(wl), "--target", pg16.dsn(), "-o", str(out), "--no-progress"]
    refused = _run(pgtraffic_cmd, *args, "--max-speed")
    assert refused.returncode == 7, refused.stderr
    assert 'database "nowhere" does not exist' in refused.stderr
    ran = _run(pgtraffic_cmd, *args, "--max-speed", "--json", "--allow-missing-logins")
    assert ran.returncode == 6, ran.stderr
    assert "login will fail: postgres@nowhere" in ran.stderr  # warned before the start
    report = json.loads(ran.stdout)
    [failure] = report["login_failures"]
    assert failure["database"] == "nowhere" and failure["sqlstate"] == "3D000"
    assert 'database "nowhere" does not exist' in failure["message"]
    assert 'database "nowhere" does not exist' in ran.stderr
    assert report["connections_opened"] == 1
    assert not any(w.startswith("no session could connect") for w in report["warnings"])
    assert any(w.startswith("1 sessions could not log in") for w in report["warnings"])


def test_replaying_onto_the_capture_source_is_refused(
    make_cluster: ClusterFactory, pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    """capture --source-dsn records the source's identity; replay onto that server is
    refused (nothing written), onto another server it runs, and --read-only onto the
    source is allowed (it cannot write)."""
    source = make_cluster(16, Profile.CAPTURE)
    source.psql("CREATE TABLE victim (x int); INSERT INTO victim SELECT generate_series(1, 10)")
    source.psql("TRUNCATE victim")
    time.sleep(0.5)
    wl = tmp_path / "w.pgtw"
    logs = [str(p) for p in source.log_files()]
    cap = _run(pgtraffic_cmd, "capture", *logs, "-o", str(wl), "-q", "--source-dsn", source.dsn())
    assert cap.returncode == 0, cap.stderr
    header = read_workload(wl).header
    system_id = source.psql("SELECT system_identifier FROM pg_control_system()")
    assert header.source["system_identifier"] == system_id
    assert header.source["port"] == source.port
    assert header.source["server_version"] == source.psql("SHOW server_version")
    source.psql("INSERT INTO victim SELECT generate_series(1, 10)")

    out = tmp_path / "r.pgtr"
    args = ["replay", str(wl), "-o", str(out), "--no-progress", "--max-speed"]
    refused = _run(pgtraffic_cmd, *args, "--target", source.dsn(), "--allow-writes")
    assert refused.returncode == 7, refused.stderr
    assert "captured on" in refused.stderr and system_id in refused.stderr
    assert "--read-only" in refused.stderr
    assert source.psql("SELECT count(*) FROM victim") == "10"  # not truncated
    assert not out.exists()

    guarded = _run(pgtraffic_cmd, *args, "--target", source.dsn(), "--read-only")
    assert guarded.returncode == 0, guarded.stderr
    assert source.psql("SELECT count(*) FROM victim") == "10"

    bad = _run(
        pgtraffic_cmd,
        "capture",
        *logs,
        "-o",
        str(tmp_path / "x.pgtw"),
        "-q",
        "--source-dsn",
        "postgresql://postgres@127.0.0.1:1/postgres",
    )
    assert bad.returncode == 5 and "--source-dsn" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_writes_onto_an_unprepared_server_need_a_yes(
    make_cluster: ClusterFactory, pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    """A server not marked pgtraffic.replay_target: the target's identity is shown;
    without a terminal, writes are refused unless --allow-writes; a read-only workload
    goes ahead; marking the database makes it a replay target."""
    target = make_cluster(16)
    target.psql("ALTER DATABASE postgres SET pgtraffic.replay_target = off")
    target.psql("CREATE TABLE t (x int)")
    wl = tmp_path / "w.pgtw"
    write_workload(wl, [simple("a", i, i * 100, f"INSERT INTO t VALUES ({i})") for i in range(5)])
    out = tmp_path / "r.pgtr"
    args = ["replay", str(wl), "--target", target.dsn(), "-o", str(out), "--no-progress"]
    refused = _run(pgtraffic_cmd, *args, "--max-speed")
    assert refused.returncode == 7, refused.stderr
    system_id = target.psql("SELECT system_identifier FROM pg_control_system()")
    assert f"system_identifier {system_id}" in refused.stderr  # shown before writing
    assert "not marked as a replay target" in refused.stderr
    assert "pgtraffic.replay_target = on" in refused.stderr  # the way out
    assert target.psql("SELECT count(*) FROM t") == "0"

    reads = _run(
        pgtraffic_cmd,
        "replay",
        str(_reads(tmp_path)),
        "--target",
        target.dsn(),
        "-o",
        str(out),
        "--no-progress",
        "--max-speed",
    )
    assert reads.returncode == 0, reads.stderr

    allowed = _run(pgtraffic_cmd, *args, "--max-speed", "--allow-writes", "--force")
    assert allowed.returncode == 0, allowed.stderr
    assert target.psql("SELECT count(*) FROM t") == "5"
    header = read_results(out).header
    assert header["target_identity"]["system_identifier"] == system_id

    target.psql("ALTER DATABASE postgres SET pgtraffic.replay_target = on")
    marked = _run(pgtraffic_cmd, *args, "--max-speed", "--force")
    assert marked.returncode == 0, marked.stderr
    assert target.psql("SELECT count(*) FROM t") == "10"


def test_on_a_terminal_replay_asks_before_writing(
    make_cluster: ClusterFactory, pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    """With a terminal on stdin the question is asked: no leaves the server untouched
    (exit 7), yes replays the writes."""
    import pty

    target = make_cluster(16)
    target.psql("ALTER DATABASE postgres SET pgtraffic.replay_target = off")
    target.psql("CREATE TABLE t (x int)")
    wl = tmp_path / "w.pgtw"
    write_workload(wl, [simple("a", i, i * 100, f"INSERT INTO t VALUES ({i})") for i in range(5)])
    args = ["replay", str(wl), "--target", target.dsn(), "--no-progress", "--max-speed"]
    for answer, code, rows in (("n", 7, "0"), ("y", 0, "5")):
        terminal, stdin = pty.openpty()
        proc = subprocess.Popen(
            [*pgtraffic_cmd, *args, "-o", str(tmp_path / f"{answer}.pgtr")],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "400"},
        )
        os.close(stdin)
        try:
            os.write(terminal, f"{answer}\n".encode())
            out, err = proc.communicate(timeout=120)
        finally:
            os.close(terminal)
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == code, err
        assert "Replay the workload's writes onto this server?" in out
        assert "5 statements (5 query classes) may write" in err
        assert target.psql("SELECT count(*) FROM t") == rows


def test_read_only_sends_reads_skips_writes_and_guards_what_the_parse_misses(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """--read-only: reads are sent, writes (and statements that would lift the guard)
    are counted as skipped by class, and a write the parse cannot see (a view over a
    function that inserts) fails with 25006 instead of writing."""
    target = make_cluster(16)
    target.psql(
        "CREATE TABLE t (x int); "
        "CREATE FUNCTION bump() RETURNS int LANGUAGE sql "
        "AS 'INSERT INTO t VALUES (99) RETURNING x'; "
        "CREATE VIEW sneaky AS SELECT bump() AS x"
    )
    sqls = [
        "SELECT count(*) FROM t",
        "INSERT INTO t VALUES (1)",
        "SELECT * FROM sneaky",
        "SET default_transaction_read_only = off",
        "INSERT INTO t VALUES (2)",
        "SELECT * FROM sneaky",
        "SELECT 2",
    ]
    stmts = [simple("a", i, i * 1000, sql) for i, sql in enumerate(sqls)]
    wl = write_workload(tmp_path / "w.pgtw", stmts)
    results = replay(wl, target, tmp_path / "r.pgtr", max_speed=True, read_only=True)
    states = {(sqls[row[1]], row[7]) for row in results.rows()}
    assert ("SELECT count(*) FROM t", None) in states
    assert ("SELECT 2", None) in states
    assert ("SELECT * FROM sneaky", "25006") in states
    assert len(results) == 4  # the two inserts and the SET were not sent
    assert fetch(target, "SELECT count(*) FROM t") == [(0,)]
    from replay.report import build_report

    report = build_report(results)
    assert report.read_only and sum(report.read_only_skipped.values()) == 3
    assert set(report.read_only_skipped) == {f"fp:{sqls[i][:40]}" for i in (1, 3, 4)}
    assert results.header["read_only"] is True
    # the same workload without --read-only writes (the guard is what stopped it)
    replay(wl, target, tmp_path / "w.pgtr", max_speed=True)
    assert fetch(target, "SELECT count(*) FROM t") == [(4,)]


def _sequential_sessions(path: Path, count: int, *, sync: bool) -> Path:
    """``count`` sessions one after the other (none overlaps another in the capture)."""
    writer = WorkloadWriter(path)
    sessions = []
    for n in range(count):
        sid = f"s{n}"
        writer.write(simple(sid, 0, n * 10_000 + 1_000, "SELECT 1"))
        sessions.append(
            Session(
                sid,
                "postgres",
                "postgres",
                connect_us=n * 10_000,
                disconnect_us=n * 10_000 + 5_000,
                statements=1,
                disconnect_order=n + 1 if sync else 0,
                after_disconnects=n if sync else 0,
            )
        )
    writer.close(
        capture_start=START,
        capture_end=START + dt.timedelta(microseconds=count * 10_000),
        sessions=sessions,
        classes=[],
        sync={"commits": 0, "disconnects": count} if sync else None,
    )
    return path


def test_max_connections_warning_counts_what_the_pace_opens(pg16: Cluster, tmp_path: Path) -> None:
    """250 sessions that never overlapped, onto a target with max_connections=200: at
    --max-speed with --sync none all may connect at once (warned); with --sync commit
    each waits for the disconnections before it (the captured peak, 1, holds); in time
    no warning either."""
    info = inspect_target(pg16.dsn())
    limit = int(info.settings["max_connections"])
    count = limit + 50
    wl = read_workload(_sequential_sessions(tmp_path / "w.pgtw", count, sync=True))

    def warnings(max_speed: bool, sync: SyncMode) -> tuple[str, ...]:
        plan = prepare_replay(wl, ReplaySettings(max_speed=max_speed, sync=sync)).plan
        assert plan.peak_sessions == 1
        return target_warnings(info, plan)

    [warning] = warnings(True, SyncMode.NONE)
    assert f"{count} sessions at once" in warning and "53300" in warning
    assert "--sync none" in warning
    assert warnings(True, SyncMode.COMMIT) == ()
    assert warnings(True, SyncMode.OBJECTS) == ()
    assert warnings(False, SyncMode.NONE) == ()
    # without sync members the commit mode cannot keep the order: all at once again
    plain = read_workload(_sequential_sessions(tmp_path / "p.pgtw", count, sync=False))
    plan = prepare_replay(plain, ReplaySettings(max_speed=True, sync=SyncMode.COMMIT)).plan
    assert plan.replay_peak_sessions == count
    assert len(target_warnings(info, plan)) == 1


def test_without_anyone_to_ask_writes_onto_an_unprepared_server_need_allow_writes(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """rehearse and capacity replay through the API with nobody to ask: writes onto a
    server not marked as a replay target are refused unless allow_writes."""
    target = make_cluster(16)
    target.psql("ALTER DATABASE postgres SET pgtraffic.replay_target = off")
    target.psql("CREATE TABLE t (x int)")
    wl = write_workload(
        tmp_path / "w.pgtw",
        [simple("a", i, i * 100, f"INSERT INTO t VALUES ({i})") for i in range(3)],
    )
    with pytest.raises(TargetRefusedError, match="not marked as a replay target"):
        replay(wl, target, tmp_path / "r.pgtr", max_speed=True)
    assert target.psql("SELECT count(*) FROM t") == "0"
    replay(wl, target, tmp_path / "r2.pgtr", max_speed=True, allow_writes=True)
    assert target.psql("SELECT count(*) FROM t") == "3"
