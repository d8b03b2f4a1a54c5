"""``pgtraffic replay`` and ``pgtraffic results`` end to end, in subprocesses."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgtraffic.servers import Cluster
from pgtraffic.servers.cluster import free_port
from replay.results import CSV_COLUMNS, read_results
from replay.runner import FinalSummary, ResultsHeader
from tests.replay_helpers import execute, simple, write_workload

pytestmark = pytest.mark.pg(">=16")


def _workload(tmp_path: Path, seconds: float = 1.0) -> Path:
    n = int(seconds / 0.02)
    stmts = [simple("a", 0, 0, "CREATE TEMP TABLE t (x int)")]
    stmts += [
        execute("a", i, i * 20_000, "INSERT INTO t VALUES ($1)", [str(i)], name="ins")
        for i in range(1, n)
    ]
    stmts += [simple("b", i, i * 20_000 + 7, "SELECT 1/0", sqlstate="22012") for i in range(n)]
    path = tmp_path / "w.pgtw"
    write_workload(path, stmts)
    return path


def _run(cmd: list[str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_dry_run_does_not_connect(pgtraffic_cmd: list[str], tmp_path: Path) -> None:
    wl = _workload(tmp_path)
    result = _run(pgtraffic_cmd, "replay", str(wl), "--dry-run", "--json", "--speed", "2")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    assert plan["sessions"] == 2
    assert plan["replayable"] == plan["statements"] == 100
    assert plan["intended_duration_us"] == pytest.approx(980_007 / 2, abs=1)
    assert plan["logins"] == {"postgres@postgres": 2}
    mapped = _run(
        pgtraffic_cmd,
        "replay",
        str(wl),
        "--dry-run",
        "--json",
        "--map-user",
        "postgres=alice",
        "--map-database",
        "postgres=shop",
    )
    assert json.loads(mapped.stdout)["logins"] == {"alice@shop": 2}
    bad = _run(pgtraffic_cmd, "replay", str(wl), "--dry-run", "--map-user", "alice")
    assert bad.returncode == 2
    assert "OLD=NEW" in bad.stderr


def test_sync_options_reach_the_plan(pgtraffic_cmd: list[str], tmp_path: Path) -> None:
    wl = _workload(tmp_path)
    default = json.loads(_run(pgtraffic_cmd, "replay", str(wl), "--dry-run", "--json").stdout)
    assert (default["sync"], default["sync_timeout_s"]) == ("rows", 10.0)
    chosen = _run(
        pgtraffic_cmd,
        "replay",
        str(wl),
        "--dry-run",
        "--json",
        "--sync",
        "objects",
        "--sync-timeout",
        "2.5",
    )
    assert chosen.returncode == 0, chosen.stderr
    plan = json.loads(chosen.stdout)
    assert (plan["sync"], plan["sync_timeout_s"]) == ("objects", 2.5)
    for bad_args in (["--sync", "scn"], ["--sync-timeout", "0"], ["--speed", "-1"]):
        bad = _run(pgtraffic_cmd, "replay", str(wl), "--dry-run", *bad_args)
        assert bad.returncode == 2, (bad_args, bad.stderr)


def test_replay_json_report_and_csv_export(
    pgtraffic_cmd: list[str], pg16: Cluster, tmp_path: Path
) -> None:
    wl = _workload(tmp_path, 0.5)
    out = tmp_path / "r.pgtr"
    result = _run(
        pgtraffic_cmd,
        "replay",
        str(wl),
        "--target",
        pg16.dsn(),
        "-o",
        str(out),
        "--max-speed",
        "--json",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL {pg16.version}" in result.stderr  # target identity shown first
    report = json.loads(result.stdout)
    assert report["statements"] == 50
    assert report["completed"] is True
    assert report["errors"] == {"22012": 25}
    assert report["divergence"]["agreement_rate"] == 1.0
    assert report["fidelity"] == "maximum speed"
    loaded = read_results(out)
    header = ResultsHeader.from_json(loaded.header)
    assert header.max_speed and header.speed is None
    assert header.target["server_version"] == pg16.version
    assert header.to_json().items() <= loaded.header.items()  # the file format is unchanged
    assert loaded.final is not None and FinalSummary.from_json(loaded.final).completed
    csv_path = tmp_path / "r.csv"
    result = _run(pgtraffic_cmd, "results", "export", str(out), "-o", str(csv_path))
    assert result.returncode == 0, result.stderr
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 50
    inserts = [r for r in rows if r["session"] == "a" and r["index"] != "0"]
    assert {r["rows"] for r in inserts} == {"1"}
    assert {r["sqlstate"] for r in rows if r["session"] == "b"} == {"22012"}


def test_unreachable_target_fails_before_starting(pgtraffic_cmd: list[str], tmp_path: Path) -> None:
    wl = _workload(tmp_path)
    out = tmp_path / "r.pgtr"
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = _run(pgtraffic_cmd, "replay", str(wl), "--target", dsn, "-o", str(out))
    assert result.returncode == 5
    assert "cannot reach the replay target" in result.stderr
    assert not out.exists()
    out.write_bytes(b"an earlier run")  # left alone, and not reported as this run's
    again = _run(pgtraffic_cmd, "replay", str(wl), "--target", dsn, "-o", str(out), "--force")
    assert again.returncode == 5
    assert again.stdout == "" and "results:" not in again.stderr
    assert out.read_bytes() == b"an earlier run"


def _replay_cmd(
    pgtraffic_cmd: list[str], workload: Path, target: Cluster, out: Path, *extra: str
) -> list[str]:
    return [
        *pgtraffic_cmd,
        "replay",
        str(workload),
        "--target",
        target.dsn(),
        "-o",
        str(out),
        "--no-progress",
        *extra,
    ]


def _wait_for_results(out: Path, statements: int, timeout_s: float = 30) -> None:
    """Until a running replay's results file holds more than ``statements`` (or the
    timeout passes: the caller's assertions then say what went wrong)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if out.exists() and len(read_results(out)) > statements:
            return


def test_results_readable_after_kill_9(
    pgtraffic_cmd: list[str], pg16: Cluster, tmp_path: Path
) -> None:
    wl = _workload(tmp_path, 6.0)
    out = tmp_path / "r.pgtr"
    proc = subprocess.Popen(
        _replay_cmd(pgtraffic_cmd, wl, pg16, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_results(out, 60)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    results = read_results(out)
    assert 60 < len(results) < 600
    assert results.final is None
    result = _run(pgtraffic_cmd, "results", "report", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["completed"] is False
    assert report["statements"] == len(results)
    assert any("did not finish" in w for w in report["warnings"])


def test_ctrl_c_stops_cleanly(pgtraffic_cmd: list[str], pg16: Cluster, tmp_path: Path) -> None:
    wl = _workload(tmp_path, 6.0)
    out = tmp_path / "r.pgtr"
    proc = subprocess.Popen(
        _replay_cmd(pgtraffic_cmd, wl, pg16, out, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_results(out, 40)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    results = read_results(out)
    assert results.final is not None and results.final["completed"] is False
    assert results.damaged_bytes == 0
    assert json.loads(stdout)["completed"] is False  # the report of what ran is printed
    assert 40 < len(results) < 600


def test_a_replay_whose_sessions_cannot_connect_is_not_a_clean_exit(
    pg16: Cluster, pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    """Every session logs in as a role the target lacks: the replay runs to its end,
    says loudly that nothing was sent, and exits 6, never 0."""
    wl = _workload(tmp_path, 0.2)
    out = tmp_path / "r.pgtr"
    args = ["--target", pg16.dsn(), "-o", str(out), "--max-speed", "--no-progress"]
    args.append("--allow-missing-logins")  # else refused before the start (test_replay_safety)
    result = _run(pgtraffic_cmd, "replay", str(wl), *args, "--map-user", "postgres=ghost", "--json")
    assert result.returncode == 6, result.stderr
    assert "incomplete replay" in result.stderr
    report = json.loads(result.stdout)
    assert report["connect_failures"] == {"28000": 2}
    assert report["errors"] == {"08003": 20}
    table = _run(pgtraffic_cmd, "results", "report", str(out))
    assert "INCOMPLETE" in table.stdout
