"""pgbench's TPC-B with 8 clients: row-lock conflicts must show as latency, not as a hang.

pgreplay -r hangs on such captures (it insists on the global log order while the
server grants row locks in another order); pgtraffic keeps sessions independent.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture.pipeline import CaptureOptions, capture
from capture.workload import Workload, read_workload
from pgtraffic.servers import Cluster, Profile
from replay.results import read_results
from tests.conftest import require_version
from tests.replay_helpers import fetch, outcomes, replayable_keys, run_quiet

pytestmark = [pytest.mark.pg(">=16"), pytest.mark.slow]


@pytest.fixture(scope="module")
def tpcb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workload, Cluster]]:
    cluster = Cluster.create(require_version(16), profile=Profile.CAPTURE)
    try:
        run_quiet(cluster, "pgbench", "-i", "-q", "-s", "1")
        cluster.run_tool("pgbench", "-n", "-c", "8", "-j", "2", "-T", "4")
        time.sleep(0.5)
        out = tmp_path_factory.mktemp("tpcb") / "tpcb.pgtw"
        capture([str(p) for p in cluster.log_files()], out, CaptureOptions(jobs=1))
        yield read_workload(out), cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("mode", ["--speed=1", "--max-speed"])
def test_tpcb_replays_to_completion(
    tpcb: tuple[Workload, Cluster],
    make_cluster: Any,
    pgtraffic_cmd: list[str],
    tmp_path: Path,
    mode: str,
) -> None:
    workload, source = tpcb
    target: Cluster = make_cluster(16, Profile.TARGET)
    run_quiet(target, "pgbench", "-i", "-q", "-s", "1")
    out = tmp_path / "r.pgtr"
    result = subprocess.run(
        [
            *pgtraffic_cmd,
            "replay",
            str(workload.path),
            "--target",
            target.dsn(),
            "-o",
            str(out),
            mode,
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # a hang would raise TimeoutExpired
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["completed"] is True
    results = read_results(out)
    assert set(outcomes(results)) == replayable_keys(workload)
    assert len(results) > 1000
    assert set(report["errors"]) <= {"40P01"}, report["errors"]
    # lock waits are latency: some statements waited far longer than the typical one
    assert report["latency_p99_ms"] > report["latency_p50_ms"]
    if not report["errors"]:
        sql = (
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint, "
            "(SELECT sum(tbalance) FROM pgbench_tellers)::bigint"
        )
        assert fetch(target, sql) == fetch(source, sql)
