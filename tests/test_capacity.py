"""Capacity sweeps on real servers: the same starting state at every step, the knee.

Most workloads are written by hand (tests/replay_helpers.write_workload) so that
what each step must do is known exactly; the hot-row workload is captured from a
real pgbench run, and pgbench itself, on the same target with the same script and
clients, measured right before and after the sweep, is the ceiling the knee must
find.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture.filters import Filters
from capture.pipeline import CaptureOptions, capture
from capture.workload import Workload, read_workload
from pgtraffic.capacity.model import Problem, culprits, judge_step
from pgtraffic.capacity.reset import Reset, ResetMode
from pgtraffic.capacity.sweep import Sweep, SweepPlan, run_sweep
from pgtraffic.servers import Cluster, Profile
from replay.runner import ReplaySettings
from replay.sync import SyncMode
from tests.conftest import require_version
from tests.replay_helpers import fetch, run_cli, run_quiet, simple, write_workload

pytestmark = pytest.mark.pg(">=16")


def inserts(path: Path, sessions: int = 4, per_session: int = 25) -> Workload:
    """Each session inserts its own keys, 20 ms apart: a second run without a reset
    would fail every insert with 23505."""
    stmts = [
        simple(f"s{s}", i, i * 20_000, f"INSERT INTO items VALUES ({s * 1000 + i})")
        for s in range(sessions)
        for i in range(per_session)
    ]
    return write_workload(path, stmts)


def _sweep_inserts(
    make_cluster: Any, tmp_path: Path, speeds: tuple[float, ...], reset: ResetMode
) -> tuple[Cluster, Sweep]:
    """A sweep of :func:`inserts` at ``speeds`` on a new target with an ``items`` table."""
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql("CREATE TABLE items (id int PRIMARY KEY)")
    workload = inserts(tmp_path / "w.pgtw")
    sweep = run_sweep(
        workload.path,
        target.dsn(),
        tmp_path / "cap",
        plan=SweepPlan(speeds=speeds),
        settings=ReplaySettings(sync=SyncMode.NONE),
        reset=Reset(reset, target.dsn(), ("postgres",)),
    )
    return target, sweep


def _six_client_target(make_cluster: Any) -> Cluster:
    """A new target with room for 6 client connections (9, 3 of them kept for superusers)."""
    target: Cluster = make_cluster(
        16,
        Profile.TARGET,
        settings={"max_connections": "9", "superuser_reserved_connections": "3"},
    )
    return target


def _sleepers(path: Path, sessions: int, gap_us: int, sleep_s: str, stay_us: int) -> Workload:
    """``sessions`` read-only sessions connecting ``gap_us`` apart, each running 10
    ``pg_sleep(sleep_s)`` 100 ms apart and disconnecting ``stay_us`` after it connected."""
    names = [f"s{s:0{len(str(sessions - 1))}d}" for s in range(sessions)]  # s0.. or s00..
    stmts = [
        simple(name, i, s * gap_us + i * 100_000, f"SELECT pg_sleep({sleep_s})")
        for s, name in enumerate(names)
        for i in range(10)
    ]
    connect = {name: s * gap_us for s, name in enumerate(names)}
    disconnect = {name: s * gap_us + stay_us for s, name in enumerate(names)}
    return write_workload(path, stmts, connect=connect, disconnect=disconnect)


def test_template_reset_gives_every_step_the_same_start(make_cluster: Any, tmp_path: Path) -> None:
    target, sweep = _sweep_inserts(make_cluster, tmp_path, (1.0, 2.0, 4.0), ResetMode.TEMPLATE)
    assert [s.speed for s in sweep.steps] == [1.0, 2.0, 4.0]
    for step in sweep.steps:
        assert step.errors == {}, step.errors
        assert step.statements == 100
    assert sweep.steps[1].reset_s > 0
    # every step started from the same rows: each inserted all 100 again
    assert [s.database.get("tup_inserted") for s in sweep.steps] == [100, 100, 100]
    assert fetch(target, "SELECT count(*) FROM items") == [(100,)]
    # the template copy is gone after the sweep
    assert fetch(target, "SELECT count(*) FROM pg_database WHERE datname LIKE '%pgtraffic%'") == [
        (0,)
    ]
    saved = json.loads((tmp_path / "cap" / "capacity.json").read_text())
    assert len(saved["steps"]) == 3
    assert saved["knee"]["reason"]


def test_without_a_reset_the_second_step_fails_and_is_not_sustained(
    make_cluster: Any, tmp_path: Path
) -> None:
    _, sweep = _sweep_inserts(make_cluster, tmp_path, (1.0, 2.0), ResetMode.NONE)
    assert sweep.steps[0].new_errors == {}
    assert sweep.steps[1].new_errors == {"23505": 100}
    assert Problem.NEW_ERRORS in {f.problem for f in judge_step(sweep.steps[1], [])}
    assert sweep.knee.step in (0, None)  # None when the loaded machine made step 1 lag


@pytest.mark.slow  # CI's time budget: the default run keeps a sibling
def test_connections_running_out_is_what_breaks(make_cluster: Any, tmp_path: Path) -> None:
    """12 sessions, started 0.25 s apart, each running 10 statements of 80 ms 100 ms
    apart: at speed 1 about 4 are connected at once; time compression does not shorten
    the statements, so at speed 4 (a session every 62 ms, each busy 0.8 s) about 13
    would be, and the target has room for 6 client connections."""
    target = _six_client_target(make_cluster)
    workload = _sleepers(tmp_path / "w.pgtw", 12, 250_000, "0.08", 1_000_000)
    sweep = run_sweep(
        workload.path,
        target.dsn(),
        tmp_path / "cap",
        plan=SweepPlan(speeds=(1.0, 2.0, 4.0)),
        settings=ReplaySettings(sync=SyncMode.NONE),
        reset=Reset(ResetMode.NONE, target.dsn(), ("postgres",)),
    )
    assert "53300" not in sweep.steps[0].connect_failures
    assert sweep.steps[2].connect_failures.get("53300", 0) > 0
    problems = {f.problem for f in judge_step(sweep.steps[2], [])}
    assert Problem.REFUSED in problems
    assert sweep.knee.step in (0, 1, None)
    assert any("53300" in c for c in culprits(sweep.steps[0], sweep.steps[2]))


def test_capacity_command_prints_the_knee(
    make_cluster: Any, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql("CREATE TABLE items (id int PRIMARY KEY)")
    workload = inserts(tmp_path / "w.pgtw", sessions=2, per_session=10)
    done = _capacity(
        pgtraffic_cmd,
        workload.path,
        target,
        tmp_path / "cap",
        "--speeds",
        "1,2",
        "--sync",
        "none",
        "--json",
        "--html",
        str(tmp_path / "cap.html"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [round(s["speed"]) for s in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["offered_statements_per_s"] > 0
        assert step["achieved_statements_per_s"] > 0
    assert report["knee"]["reason"]
    assert "<svg" in (tmp_path / "cap.html").read_text()
    # PostgreSQL 16 from the wheel has no pg_stat_statements: said, with how to install it
    assert "shared_preload_libraries" in report["pg_stat_statements"]
    assert "parameter group" in report["pg_stat_statements"]
    assert report["sync"] == "none" and "as asked" in report["sync_reason"]
    assert "step 1/2: speed 1" in done.stderr and "left" in done.stderr


def _cli(cmd: list[str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run_cli(cmd, *args, timeout=timeout)


def _capacity(
    cmd: list[str], workload: Path, target: Cluster, out: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``pgtraffic capacity`` of ``workload`` on ``target``, the run written to ``out``."""
    return _cli(
        cmd, "capacity", str(workload), "-t", target.dsn(), "-o", str(out), *args, timeout=timeout
    )


def test_scale_up_until_connections_run_out(
    make_cluster: Any, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    """3 concurrent read-only sessions, each 10 statements of 50 ms 100 ms apart; the
    target has 9 connections (the sweep's own sampler takes one): x2 (6 sessions)
    fits, x4 (12) does not, and the report says connections ran out."""
    target = _six_client_target(make_cluster)
    workload = _sleepers(tmp_path / "w.pgtw", 3, 20_000, "0.05", 1_050_000)
    html = tmp_path / "cap.html"
    done = _capacity(
        pgtraffic_cmd,
        workload.path,
        target,
        tmp_path / "cap",
        "--reset",
        "none",
        "--scale",
        "1,2,4",  # at speed 1: the default speed of a scale sweep
        "--json",
        "--html",
        str(html),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    steps = report["steps"]
    assert [s["scale"] for s in steps] == [1, 2, 4]
    assert [s["statements"] for s in steps] == [30, 60, 120]
    assert steps[1]["connect_failures"] == {}
    assert steps[2]["connect_failures"].get("53300", 0) > 0
    assert report["knee"]["step"] == 1 and report["knee"]["scale"] == 2
    assert "ran out of connections (max_connections)" in report["knee"]["reason"]
    assert "x4 sessions" in report["knee"]["reason"]
    assert "max_connections" in html.read_text()
    assert "step 3/3: speed 1 x4 sessions" in done.stderr
    # the scaled workload is in the output folder, copies carrying the reads
    scaled = read_workload(tmp_path / "cap" / "workload-x4-reads-ddl-order.pgtw")
    assert len(scaled.sessions) == 12
    assert report["sync"] == "ddl"  # capacity's default


@pytest.mark.slow  # CI's time budget: the default run keeps a sibling
def test_capacity_compare_puts_two_runs_side_by_side(
    make_cluster: Any, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    """A run "before", then a run "after" drawn against it (--baseline), then both
    compared after the fact (capacity-compare)."""
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql("CREATE TABLE items (id int PRIMARY KEY)")
    run_sweep(
        inserts(tmp_path / "before.pgtw", sessions=2, per_session=10).path,
        target.dsn(),
        tmp_path / "before",
        plan=SweepPlan(speeds=(1.0, 2.0)),
        settings=ReplaySettings(sync=SyncMode.NONE),
        reset=Reset(ResetMode.TEMPLATE, target.dsn(), ("postgres",)),
    )
    workload = inserts(tmp_path / "after.pgtw", sessions=2, per_session=20)
    with_baseline = tmp_path / "after.html"
    done = _capacity(
        pgtraffic_cmd,
        workload.path,
        target,
        tmp_path / "after",
        "--speeds",
        "1,2",
        "--baseline",
        str(tmp_path / "before"),
        "--html",
        str(with_baseline),
    )
    assert done.returncode == 0, done.stderr
    assert "knee:" in done.stdout and "sync: ddl:" in done.stdout
    assert "pg_stat_statements is not installed" in done.stdout
    page = with_baseline.read_text()
    assert "Knees side by side" in page and "before" in page and "after" in page
    runs = [tmp_path / "before", tmp_path / "after"]
    out = tmp_path / "cmp.html"
    done = _cli(pgtraffic_cmd, "capacity-compare", *map(str, runs), "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["runs"]
    assert [r["label"].split()[0] for r in rows] == ["before", "after"]
    assert rows[0]["ratio"] == pytest.approx(1.0)
    first, second = (r["knee_statements_per_s"] for r in rows)
    if first and second:
        assert rows[1]["ratio"] == pytest.approx(second / first)
    page = out.read_text()
    assert "Knees side by side" in page and "before" in page and "after" in page
    # a folder that is not a capacity run: a clear error, exit 2
    bad = _cli(pgtraffic_cmd, "capacity-compare", str(runs[0]), str(tmp_path))
    assert bad.returncode == 2
    assert "capacity.json" in bad.stderr and "Traceback" not in bad.stderr


def test_pg_stat_statements_deltas_per_step(make_cluster: Any, tmp_path: Path) -> None:
    target: Cluster = make_cluster(
        18, Profile.TARGET, settings={"shared_preload_libraries": "'pg_stat_statements'"}
    )
    target.psql("CREATE EXTENSION pg_stat_statements")
    target.psql("CREATE TABLE items (id int PRIMARY KEY)")
    workload = inserts(tmp_path / "w.pgtw", sessions=2, per_session=10)
    sweep = run_sweep(
        workload.path,
        target.dsn(),
        tmp_path / "cap",
        plan=SweepPlan(speeds=(1.0, 2.0)),
        settings=ReplaySettings(sync=SyncMode.NONE),
        reset=Reset(ResetMode.TEMPLATE, target.dsn(), ("postgres",)),
    )
    assert sweep.statements_note is None
    for step in sweep.steps:
        inserts_run = [t for t in step.top_statements if t.query.startswith("INSERT INTO items")]
        assert [t.calls for t in inserts_run] == [20]
        assert inserts_run[0].total_exec_ms > 0
        # pgtraffic's own monitoring queries are left out
        own = ("pgtraffic-capacity", "pg_stat_activity", "pg_stat_database", "pg_stat_statements")
        assert not [t.query for t in step.top_statements if any(o in t.query for o in own)]
    saved = json.loads((tmp_path / "cap" / "capacity.json").read_text())
    assert saved["pg_stat_statements"] == "installed"
    assert saved["steps"][0]["top_statements"][0]["mean_exec_ms"] >= 0


HOT_SETUP = "CREATE TABLE hot (id int PRIMARY KEY, n bigint); INSERT INTO hot VALUES (1, 0)"
HOT_SCRIPT = "UPDATE hot SET n = n + 1 WHERE id = 1;\n"
HOT_CLIENTS = 8


@pytest.fixture(scope="module")
def hot_row(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(workload, pgbench script): 8 pgbench clients updating one row at 300/s for
    4 s, captured from a capture-ready PostgreSQL 16."""
    work = tmp_path_factory.mktemp("hot")
    script = work / "hot.sql"
    script.write_text(HOT_SCRIPT)
    source = Cluster.create(require_version(16), profile=Profile.CAPTURE)
    try:
        run_quiet(source, "psql", "-X", "-q", "-c", HOT_SETUP)
        source.run_tool(
            "pgbench", "-n", "-f", script, "-c", str(HOT_CLIENTS), "-j", "2", "-R", "300", "-T", "4"
        )
        time.sleep(0.6)  # let the logging collector write the last records
        out = work / "hot.pgtw"
        capture(
            [str(p) for p in source.log_files()],
            out,
            CaptureOptions(filters=Filters(applications=("pgbench",))),
        )
        yield out, script
    finally:
        source.stop()


def _pgbench_tps(target: Cluster, script: Path) -> float:
    done = target.run_tool(
        "pgbench", "-n", "-f", script, "-c", str(HOT_CLIENTS), "-j", "2", "-T", "4"
    )
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    assert match is not None, done.stdout
    return float(match[1])


@pytest.mark.slow
def test_until_knee_finds_the_hot_row_ceiling_pgbench_reaches(
    hot_row: tuple[Path, Path], make_cluster: Any, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    """Every statement updates the one row: the target's ceiling is how fast it can
    hand that row's lock from one transaction to the next. pgbench with the same
    script and clients measures it right before and right after the sweep (the
    machine is shared: the knee must be within 20% of one of the two, or between)."""
    workload, script = hot_row
    assert read_workload(workload).header.counts["statements"] > 600  # about 1,200
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql(HOT_SETUP)
    before = _pgbench_tps(target, script)
    done = _capacity(
        pgtraffic_cmd,
        workload,
        target,
        tmp_path / "cap",
        "--until-knee",
        "--reset",
        "none",
        "--json",
    )
    after = _pgbench_tps(target, script)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    knee = report["knee"]["achieved_statements_per_s"]
    assert knee is not None, report["knee"]["reason"]
    assert report["sync"] == "ddl"
    # within 20% of pgbench before or after, or between the two (the machine's load
    # changed during the sweep: pgbench alone has moved by 2x within a minute here)
    low, high = sorted((before, after))
    assert 0.8 * low <= knee <= 1.2 * high, (knee, before, after, report["knee"]["reason"])


@pytest.mark.slow
def test_hot_row_updates_queue_on_the_row_lock_not_on_the_captured_commit_order(
    hot_row: tuple[Path, Path], make_cluster: Any, tmp_path: Path
) -> None:
    """Why capacity's default is --sync ddl (docs/capacity.md): at speed 4, replayed in
    captured commit order the hot-row updates wait for each other's commit one round
    trip at a time (sync waits, few updates on the target at once); left to the
    target (ddl order) they queue on the row lock as pgbench's clients do."""
    workload, _ = hot_row
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql(HOT_SETUP)
    steps: dict[str, list[Any]] = {}
    for k, mode in enumerate(("commit", "ddl", "commit", "ddl")):  # interleaved: shared machine
        sweep = run_sweep(
            workload,
            target.dsn(),
            tmp_path / f"cap{k}-{mode}",
            plan=SweepPlan(speeds=(4.0,)),
            settings=ReplaySettings(sync=SyncMode.COMMIT),
            reset=Reset(ResetMode.NONE, target.dsn(), ("postgres",)),
            ddl_order=mode == "ddl",
        )
        steps.setdefault(mode, []).append(sweep.steps[0])
    for step in steps["commit"]:
        assert step.sync_wait_s > 1.0  # each update waited for the commits before it
    for step in steps["ddl"]:
        assert step.sync_wait_s == 0.0
        assert step.waits.get("Lock", 0.0) > 0.4, step.waits  # queued on the row lock
    # how many updates were on the target at once: the captured order lets few through
    active = {m: [round(s.active_backends, 2) for s in v] for m, v in steps.items()}
    rates = {m: [round(s.achieved_statements_per_s) for s in v] for m, v in steps.items()}
    assert max(active["commit"]) < min(active["ddl"]), (active, rates)
