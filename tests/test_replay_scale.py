"""Thousands of concurrent sessions on one replayer process (slow)."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from pgtraffic.servers import Cluster, Profile
from replay.report import build_report
from tests.replay_helpers import outcomes, replay, replayable_keys, simple, write_workload

pytestmark = [pytest.mark.pg(">=16"), pytest.mark.slow]

SESSIONS = 1500


def test_thousands_of_concurrent_sessions(make_cluster: Any, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster(
        16, Profile.TARGET, settings={"max_connections": str(SESSIONS + 50)}
    )
    stmts = []
    for i in range(SESSIONS):
        sid = f"s{i:04d}"
        stmts.append(simple(sid, 0, 3_000_000 + i, "SELECT 1"))
        stmts.append(
            simple(
                sid,
                1,
                20_000_000 + i,
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'",
            )
        )
    workload = write_workload(
        tmp_path / "w.pgtw",
        stmts,
        # all in within 1.5 s of the capture; on 2 cores the target needs up to ~15 s to
        # start 1,500 backends, so the census runs at 20 s and nobody leaves before 21 s
        connect={f"s{i:04d}": i * 1000 for i in range(SESSIONS)},
        disconnect={f"s{i:04d}": 21_000_000 for i in range(SESSIONS)},
    )
    results = replay(workload, cluster, tmp_path / "r.pgtr")
    got = outcomes(results)
    assert set(got) == replayable_keys(workload)
    assert all(state is None for state, _ in got.values())
    report = build_report(results)
    assert report.completed
    assert report.connections_opened == SESSIONS
    # every session was connected at once: the second statement saw them all
    backends = results.records["rows"][results.records["index"] == 1]
    assert backends.size == SESSIONS
    assert int(backends.max()) >= SESSIONS  # rows = client backends seen at that moment
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > SESSIONS
