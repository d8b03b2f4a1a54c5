"""Timing and faults on real servers: speed, a restarted target, too many connections."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pgtraffic.servers import Cluster, Profile
from replay.report import build_report
from tests.replay_helpers import outcomes, replay, replayable_keys, simple, write_workload

pytestmark = pytest.mark.pg(">=16")


def _ticks(sessions: int, every_us: int, until_us: int, sql: str = "SELECT 1") -> list[Any]:
    return [
        simple(f"s{s}", i, i * every_us + s, sql)
        for s in range(sessions)
        for i in range(until_us // every_us + 1)
    ]


def test_speed_two_takes_half_the_time(pg16: Cluster, tmp_path: Path) -> None:
    stmts = _ticks(2, 250_000, 2_000_000)
    workload = write_workload(
        tmp_path / "w.pgtw",
        stmts,
        connect={"s0": 0, "s1": 0},
        disconnect={"s0": 2_000_100, "s1": 2_000_100},
    )
    started = time.monotonic()
    results = replay(workload, pg16, tmp_path / "r.pgtr", speed=2.0)
    elapsed = time.monotonic() - started
    recs = results.records
    assert set(outcomes(results)) == replayable_keys(workload)
    assert int(recs["intended_us"].max()) == pytest.approx(1_000_000, abs=2)
    # each statement started at its intended time, so the last about 1 s in
    assert int(recs["start_us"].max()) == pytest.approx(1_000_000, abs=60_000)
    lag = recs["start_us"] - recs["intended_us"]
    assert lag.min() >= 0
    report = build_report(results)
    assert report.lag_p99_ms is not None and report.lag_p99_ms < 60
    assert report.run_time_s == pytest.approx(1.0, abs=0.4)
    assert 0.9 < elapsed < 4.0


def test_jump_idle_skips_the_quiet_stretch(pg16: Cluster, tmp_path: Path) -> None:
    stmts = [simple("a", 0, 0, "SELECT 1"), simple("b", 0, 5_000_000, "SELECT 2")]
    workload = write_workload(
        tmp_path / "w.pgtw",
        stmts,
        connect={"a": 0, "b": 4_900_000},
        disconnect={"a": 10_000, "b": 5_010_000},
    )
    results = replay(workload, pg16, tmp_path / "r.pgtr", jump_idle=True)
    assert len(results) == 2
    assert int(results.records["start_us"].max()) < 1_000_000


@pytest.mark.parametrize(
    "how", [pytest.param("restart", marks=pytest.mark.slow), "kill-9"]
)  # CI's time budget: the default run keeps the harsher of the two
def test_target_restart_mid_replay(make_cluster: Any, tmp_path: Path, how: str) -> None:
    cluster: Cluster = make_cluster(16, Profile.TARGET)
    # 6 s of ticks: a restart after kill -9 (crash recovery) takes seconds on a
    # loaded machine, and the last statements must come after it
    stmts = _ticks(3, 50_000, 6_000_000)
    workload = write_workload(
        tmp_path / "w.pgtw",
        stmts,
        connect={f"s{i}": 0 for i in range(3)},
        disconnect={f"s{i}": 6_050_000 for i in range(3)},
    )
    box: dict[str, Any] = {}

    def run() -> None:
        box["results"] = replay(workload, cluster, tmp_path / "r.pgtr", reconnect_interval_s=0.2)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.2)
    if how == "kill-9":
        pid = cluster.postmaster_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        report = cluster.stop(remove=False)  # reaps the backends the postmaster left
        assert report.died_unexpectedly
    else:
        cluster.stop(remove=False)
    time.sleep(0.5)
    cluster.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the replay hung after the target restarted"
    results = box["results"]
    got = outcomes(results)
    assert set(got) == replayable_keys(workload)  # each statement recorded exactly once
    failed = {state for state, _ in got.values() if state is not None}
    assert failed, "the restart left no trace"
    assert failed <= {"57P01", "57P02", "08001", "08003", "08006", "57P03"}, failed
    closing = build_report(results)
    assert closing.completed
    assert sum(closing.connections_lost.values()) >= 1
    assert closing.reconnects >= 1
    # after the restart the sessions reconnected and their last statements succeeded
    for s in range(3):
        last = max(i for (sid, i) in got if sid == f"s{s}")
        assert got[(f"s{s}", last)] == (None, None)


def test_too_many_connections_is_recorded(make_cluster: Any, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster(
        16, Profile.TARGET, settings={"max_connections": "5", "superuser_reserved_connections": "0"}
    )
    stmts = [simple(f"s{i}", 0, 100_000, "SELECT pg_sleep(0.3)") for i in range(8)]
    stmts += [simple(f"s{i}", 1, 500_000, "SELECT 1") for i in range(8)]
    workload = write_workload(
        tmp_path / "w.pgtw",
        stmts,
        connect={f"s{i}": 0 for i in range(8)},
        disconnect={f"s{i}": 900_000 for i in range(8)},
    )
    results = replay(workload, cluster, tmp_path / "r.pgtr")
    got = outcomes(results)
    assert set(got) == replayable_keys(workload)
    report = build_report(results)
    assert report.completed
    assert report.connect_failures.get("53300", 0) >= 3
    assert report.connections_opened <= 5
    assert report.errors.get("08003", 0) >= 3  # statements of sessions without a connection
    assert sum(1 for state, _ in got.values() if state is None) >= 8
