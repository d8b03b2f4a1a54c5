"""`pgtraffic demo`, end to end on embedded PostgreSQL 16 and 18 (shortened window)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
import pytest

from pgtraffic.compare import Verdict
from pgtraffic.rehearsal import DemoSettings, demo
from pgtraffic.scenario import get_scenario
from pgtraffic.servers import registry
from tests.conftest import require_version
from tests.replay_helpers import run_cli


@pytest.mark.slow  # 70 s; CI's budget. Default siblings: rehearse end to end (16 -> 18,
# tests/test_rehearse.py) and a plan change flagged (tests/test_compare.py)
def test_demo_flags_skip_scan_as_improved_with_a_changed_plan(tmp_path: Path) -> None:
    require_version(16)
    require_version(18)
    before = {r.name for r in registry.records()}
    result = demo(tmp_path, DemoSettings(seconds=12, clients=4, scale=0.1, rate=60))
    c = result.comparison
    assert result.workload.exists()
    assert result.capture.statements > 500
    assert result.capture.skipped_total == 0
    assert c.paired == c.baseline.statements == c.candidate.statements

    changes = get_scenario().plan_change_fingerprints()
    skip_scan = next(fp for fp, ch in changes.items() if ch.feature == "btree skip scan")
    cls = next(x for x in c.classes if x.fingerprint == skip_scan)
    assert cls.verdict is Verdict.IMPROVED, cls
    assert cls.ratio_p50 < 0.5
    plan = next(p for p in c.plans if p.fingerprint == skip_scan)
    assert plan.changed
    assert "Seq Scan on ci_builds" in plan.baseline_plan
    assert "index_ci_builds_on_status_and_project_id" in plan.candidate_plan

    # Both runs replayed every captured statement, on schedule, without new errors.
    assert c.new_errors == 0
    assert result.replay_summaries[0].completed is True
    assert result.replay_summaries[1].completed is True
    # Nothing left running: the demo stops its three servers.
    mine = [r for r in registry.records() if r.owner_pid == os.getpid() and r.name not in before]
    assert mine == []


@pytest.mark.slow  # CI's time budget: the default run keeps a sibling
def test_demo_cli_writes_the_report_and_keeps_servers(
    tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    require_version(16)
    require_version(18)
    work = tmp_path / "demo"
    env = dict(os.environ, COLUMNS="120", PGTRAFFIC_STATE_DIR=str(tmp_path / "state"))
    argv = ["demo", "--seconds", "5", "--scale", "0.02", "--rate", "40", "--workdir", str(work)]
    result = run_cli(pgtraffic_cmd, *argv, "--keep", timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "report.html").exists()
    assert "HTML report:" in result.stdout
    for step in (
        "Start a capture-ready PostgreSQL 16",
        "Load the gitlab scenario",
        "Replay onto the candidate server",
        "Compare the two replays",
    ):
        assert f"✓ {step}" in result.stdout, step
    # --keep: the three servers are still running, their DSNs printed, until stopped.
    dsns = re.findall(r"^  (pg\d+-\d+): (postgresql://\S+)$", result.stdout, re.M)
    assert len(dsns) == 3, result.stdout[-2000:]
    try:
        for _, dsn in dsns:
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                assert conn.execute("SELECT count(*) FROM projects").fetchone() is not None
    finally:
        stopped = run_cli(pgtraffic_cmd, "servers", "stop", "--all", timeout=300, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count("stopped (fast)") == 3
