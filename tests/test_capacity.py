"""Capacity sweeps on real servers: the same starting state at every step, the knee.

Workloads are written by hand (tests/replay_helpers.write_workload) so that what
each step must do is known exactly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from capture.workload import Workload
from pgtraffic.capacity.model import Problem, culprits, judge_step
from pgtraffic.capacity.reset import Reset, ResetMode
from pgtraffic.capacity.sweep import Sweep, SweepPlan, run_sweep
from pgtraffic.servers import Cluster, Profile
from replay.runner import ReplaySettings
from replay.sync import SyncMode
from tests.replay_helpers import fetch, simple, write_workload

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


def test_template_reset_gives_every_step_the_same_start(make_cluster: Any, tmp_path: Path) -> None:
    target, sweep = _sweep_inserts(make_cluster, tmp_path, (1.0, 2.0, 4.0), ResetMode.TEMPLATE)
    assert [s.speed for s in sweep.steps] == [1.0, 2.0, 4.0]
    for step in sweep.steps:
        assert step.errors == {}, step.errors
        assert step.statements == 100
    assert sweep.steps[1].reset_s > 0
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


def test_connections_running_out_is_what_breaks(make_cluster: Any, tmp_path: Path) -> None:
    """12 sessions, started 0.25 s apart, each running 10 statements of 80 ms 100 ms
    apart: at speed 1 about 4 are connected at once; time compression does not shorten
    the statements, so at speed 4 (a session every 62 ms, each busy 0.8 s) about 13
    would be, and the target has room for 6 client connections."""
    target: Cluster = make_cluster(
        16,
        Profile.TARGET,
        settings={"max_connections": "9", "superuser_reserved_connections": "3"},
    )
    stmts = [
        simple(f"s{s:02d}", i, s * 250_000 + i * 100_000, "SELECT pg_sleep(0.08)")
        for s in range(12)
        for i in range(10)
    ]
    connect = {f"s{s:02d}": s * 250_000 for s in range(12)}
    disconnect = {f"s{s:02d}": s * 250_000 + 1_000_000 for s in range(12)}
    workload = write_workload(tmp_path / "w.pgtw", stmts, connect=connect, disconnect=disconnect)
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
    done = subprocess.run(
        [
            *pgtraffic_cmd,
            "capacity",
            str(workload.path),
            "--target",
            target.dsn(),
            "-o",
            str(tmp_path / "cap"),
            "--speeds",
            "1,2",
            "--sync",
            "none",
            "--json",
            "--html",
            str(tmp_path / "cap.html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [round(s["speed"]) for s in report["steps"]] == [1, 2]
    for step in report["steps"]:
        assert step["offered_statements_per_s"] > 0
        assert step["achieved_statements_per_s"] > 0
    assert report["knee"]["reason"]
    assert "<svg" in (tmp_path / "cap.html").read_text()
