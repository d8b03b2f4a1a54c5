"""Replay workloads captured from a real server's logs onto fresh 16 and 18 clusters."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capture.pipeline import CaptureOptions, capture
from capture.records import StatementKind
from capture.workload import Workload, read_workload
from pgtraffic.servers import Cluster, Profile
from replay.report import build_report
from replay.results import Results
from replay.runner import ReplaySettings, prepare_replay
from replay.sync import SyncMode
from tests.conftest import require_version
from tests.replay_helpers import fetch, outcomes, replay, replayable_keys, run_quiet

pytestmark = pytest.mark.pg(">=16")

PSQL_SCRIPT = """
CREATE TABLE items (id int PRIMARY KEY, name text, note text);
INSERT INTO items VALUES (1, 'it''s', 'multi
line');
BEGIN;
SAVEPOINT sp1;
SELECT * FROM nosuch_table;
ROLLBACK TO SAVEPOINT sp1;
INSERT INTO items VALUES (2, 'two', NULL);
COMMIT;
SET search_path = public;
CREATE TEMP TABLE scratch AS SELECT generate_series(1, 5) AS n;
UPDATE scratch SET n = n + 1;
INSERT INTO items SELECT n + 10, 'from temp', NULL FROM scratch;
SELECT 1/0;
SELEC broken;
"""

PSYCOPG_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("INSERT INTO items VALUES (%s, %s, %s)", (100, "it's\n'quoted' ✓", None)),
    ("INSERT INTO items VALUES (%s, %s, %s)", (101, "b", "")),
    ("UPDATE items SET note = %s WHERE id = %s", ("touched", 1)),
    ("SELECT name FROM items WHERE id = %s", (1,)),
    ("SELECT 1 / %s::int", (0,)),
    ("INSERT INTO items VALUES (%s, %s, %s)", (1, "duplicate", None)),
]


def _setup(cluster: Cluster, dbname: str = "postgres") -> None:
    run_quiet(cluster, "pgbench", "-i", "-q", "-s", "1", dbname)


def _fresh_database(cluster: Cluster, dbname: str) -> None:
    """``dbname`` recreated in the state the capture started from."""
    cluster.psql(f"DROP DATABASE IF EXISTS {dbname}")
    cluster.psql(f"CREATE DATABASE {dbname}")
    _setup(cluster, dbname)


def _replay_fresh(
    workload: Workload, cluster: Cluster, db: str, out: Path, **settings: Any
) -> Results:
    """Replay ``workload`` into ``db``, made afresh on ``cluster`` (the captured
    ``postgres`` database mapped to it)."""
    _fresh_database(cluster, db)
    return replay(workload, cluster, out, map_database={"postgres": db}, **settings)


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workload, Cluster]]:
    """A workload captured on PostgreSQL 16 from psql, psycopg and pgbench (3 modes)."""
    cluster = Cluster.create(require_version(16), profile=Profile.CAPTURE)
    try:
        tmp = tmp_path_factory.mktemp("capture")
        _setup(cluster)
        script = tmp / "script.sql"
        script.write_text(PSQL_SCRIPT)
        cluster.run_tool("psql", "-X", "-q", "-f", script, check=False)
        time.sleep(0.05)
        with psycopg.connect(cluster.dsn(), application_name="t-psycopg", autocommit=True) as c:
            for sql, params in PSYCOPG_CALLS:
                with contextlib.suppress(psycopg.Error):
                    c.execute(sql, params, prepare=True)
        for mode in ("simple", "extended", "prepared"):
            time.sleep(0.05)
            cluster.run_tool("pgbench", "-n", "-M", mode, "-c", "2", "-t", "15")
        time.sleep(0.5)
        out = tmp / "w.pgtw"
        capture([str(p) for p in cluster.log_files()], out, CaptureOptions(jobs=1))
        yield read_workload(out), cluster
    finally:
        cluster.stop()


@pytest.fixture(params=[16, 18], ids=lambda m: f"pg{m}")
def target(request: pytest.FixtureRequest) -> Cluster:
    cluster: Cluster = request.getfixturevalue(f"pg{request.param}")
    return cluster


STATE_SQL = [
    "SELECT sum(abalance)::bigint, count(*) FROM pgbench_accounts",
    "SELECT count(*), sum(delta)::bigint FROM pgbench_history",
    "SELECT sum(tbalance)::bigint FROM pgbench_tellers",
    "SELECT id, name, note FROM items ORDER BY id",
]


def test_replay_matches_original(
    captured: tuple[Workload, Cluster], target: Cluster, tmp_path: Path
) -> None:
    workload, source = captured
    db = "rt_timed"
    results = _replay_fresh(workload, target, db, tmp_path / "r.pgtr", speed=1.0)
    got = outcomes(results)
    # every replayable statement executed exactly once
    assert set(got) == replayable_keys(workload)
    assert len(got) > 150
    # deterministic workload: each statement's outcome matches the original, except
    # where the log lacked the parameters (capture marks those params_truncated)
    inexact = {(s.session, s.seq) for s in workload.statements() if s.params_truncated}
    diverged = {k: v for k, v in got.items() if v[0] != v[1] and k not in inexact}
    assert diverged == {}
    report = build_report(results)
    assert report.divergence.compared - report.divergence.agreed <= len(inexact)
    assert {"42P01", "22012", "42601", "23505"} <= set(report.errors)
    assert report.completed
    # and the data ends up the same as on the source
    for sql in STATE_SQL:
        assert _fetch_db(target, db, sql) == fetch(source, sql), sql


def test_max_speed_runs_everything_once(
    captured: tuple[Workload, Cluster], pg16: Cluster, tmp_path: Path
) -> None:
    workload, _ = captured
    results = _replay_fresh(
        workload, pg16, "rt_fast", tmp_path / "r.pgtr", max_speed=True, workers=2
    )
    assert set(outcomes(results)) == replayable_keys(workload)
    report = build_report(results)
    assert report.completed
    assert report.sessions == len(workload.sessions)
    assert len(report.divergence.new_errors) <= 2  # cross-session order is not kept


def _fetch_db(cluster: Cluster, db: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def test_speed_two_halves_the_captured_time(
    captured: tuple[Workload, Cluster], pg16: Cluster, tmp_path: Path
) -> None:
    workload, _ = captured
    span_us = prepare_replay(workload, ReplaySettings(speed=1.0)).plan.capture_span_us
    results = _replay_fresh(workload, pg16, "rt_speed2", tmp_path / "r.pgtr", speed=2.0)
    assert set(outcomes(results)) == replayable_keys(workload)
    report = build_report(results)
    assert report.run_time_s is not None
    # the run covers half the captured span (plus start-up and the final disconnects)
    assert span_us / 2e6 - 0.05 < report.run_time_s < span_us / 2e6 + 1.0
    recs = results.records
    last = int(recs["intended_us"].max())
    assert abs(int(recs["start_us"].max()) - last) < 200_000


def test_direct_simple_path_matches_asyncpg_path(
    captured: tuple[Workload, Cluster], pg16: Cluster, tmp_path: Path
) -> None:
    """Simple-protocol statements sent by pgtraffic's own channel give the same
    outcome, statement by statement (SQLSTATE and row count), and the same data,
    as when asyncpg sends them."""
    workload, _ = captured
    runs: dict[bool, dict[tuple[str, int], tuple[int, str | None]]] = {}
    for direct in (True, False):
        db = f"rt_direct_{str(direct).lower()}"
        results = _replay_fresh(
            workload,
            pg16,
            db,
            tmp_path / f"{db}.pgtr",
            speed=4.0,
            direct_simple=direct,
            sync=SyncMode.COMMIT,  # no session may overtake one it depends on
        )
        runs[direct] = {
            (session, index): (rows, state)
            for session, index, _, _, _, _, rows, state, _ in results.rows()
        }
    assert len(runs[True]) > 150
    assert runs[True] == runs[False]
    for sql in STATE_SQL:
        assert _fetch_db(pg16, "rt_direct_true", sql) == _fetch_db(pg16, "rt_direct_false", sql)
    simple = sum(1 for s in workload.statements() if s.kind is StatementKind.SIMPLE)
    assert simple > 50  # the channel carried a real share of the workload
