"""`pgtraffic rehearse` on real logs and two real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgtraffic.rehearsal import server_identity
from pgtraffic.servers import Cluster, Profile
from tests.conftest import ClusterFactory
from tests.replay_helpers import run_cli
from tests.test_compare import CLIENT, DB, _prepare


def _captured_source(make_cluster: ClusterFactory, tmp_path: Path, *pgbench: str) -> list[str]:
    """A capture-ready PostgreSQL 16 that logged pgbench running CLIENT (``pgbench``: its
    options); its log files as rehearse's ``--log`` options."""
    source = make_cluster(16, Profile.CAPTURE)
    _prepare(source)
    script = tmp_path / "client.pgbench"
    script.write_text(CLIENT)
    source.run_tool("pgbench", "--no-vacuum", *pgbench, "-f", str(script), dbname=DB)
    return [arg for log in source.log_files() for arg in ("--log", str(log))]


def test_rehearse_cli_end_to_end(
    make_cluster: ClusterFactory, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    logs = _captured_source(make_cluster, tmp_path, "-M", "extended", "-c", "2", "-t", "60")
    baseline = make_cluster(16)
    candidate = make_cluster(18)
    _prepare(baseline)
    _prepare(candidate, drop_function=True)
    work = tmp_path / "rehearsal"
    result = run_cli(
        pgtraffic_cmd,
        "rehearse",
        *logs,
        "--baseline",
        baseline.dsn(DB),
        "--candidate",
        candidate.dsn(DB),
        "--workdir",
        str(work),
        "--max-speed",
        "--application",
        "pgbench",
        "--fail-on",
        "errors",
        timeout=600,
        columns=120,
    )
    # The missing function on the candidate fails the price() calls: new errors, 16 + 2.
    assert result.returncode == 18, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "report.html").exists()
    assert (work / "workload.pgtw").exists()
    out = run_cli(
        pgtraffic_cmd,
        "compare",
        str(work / "baseline.pgtr"),
        str(work / "candidate.pgtr"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    new = [e for e in data["errors"] if e["change"] == "new"]
    assert {e["candidate_sqlstate"] for e in new} == {"42883"}
    assert sum(e["count"] for e in new) == 120


def test_bad_replay_options_are_refused_before_any_work(
    tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    """rehearse and demo check their replay options (shared with replay) first: no
    capture, no server started, no workdir."""
    work = tmp_path / "work"
    common = ["--workdir", str(work)]
    runs = [
        ["rehearse", "--log", "x.csv", "--baseline", "a", "--candidate", "b", "--speed", "0"],
        ["rehearse", "--log", "x.csv", "--baseline", "a", "--candidate", "b", "--sync", "scn"],
        ["demo", "--sync-timeout", "0"],
        ["demo", "--workers", "65"],
    ]
    for argv in runs:
        result = run_cli(pgtraffic_cmd, *argv, *common)
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert not work.exists()


def test_rehearse_refuses_one_server_twice(
    pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    """The same server under two spellings (TCP and its unix socket) is recognised from
    the server itself and refused before anything runs: no capture, no workdir."""
    work = tmp_path / "work"
    log = tmp_path / "pg.csv"
    log.write_text("")
    for candidate in (pg16.dsn(), pg16.socket_dsn()):
        argv = ["rehearse", "--log", str(log), "--baseline", pg16.dsn(), "--candidate", candidate]
        result = run_cli(pgtraffic_cmd, *argv, "--workdir", str(work), columns=200)
        err = " ".join(result.stderr.split())
        assert result.returncode == 2, result.stdout + result.stderr
        assert "--baseline and --candidate are the same server and database" in err
        assert "system identifier" in err and "--allow-same-server" in err
        assert not work.exists()


def test_one_server_identity_tells_servers_apart(pg16: Cluster, pg18: Cluster) -> None:
    a, b = server_identity(pg16.dsn()), server_identity(pg16.socket_dsn("template1"))
    other = server_identity(pg18.dsn())
    assert a is not None and b is not None and other is not None
    assert a.same_server(b) and a.database != b.database
    assert not a.same_server(other)
    assert a.system_identifier and a.data_directory == str(pg16.data_dir.resolve())


@pytest.mark.slow  # CI's time budget: the default run keeps a sibling
def test_rehearse_runs_an_a_a_on_one_server_when_allowed(
    make_cluster: ClusterFactory, pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    logs = _captured_source(make_cluster, tmp_path, "-c", "1", "-t", "20")
    _prepare(pg16)
    work = tmp_path / "rehearsal"
    args = ["rehearse", "--workdir", str(work), "--max-speed", "--no-explain", *logs]
    args += ["--baseline", pg16.dsn(DB), "--candidate", pg16.dsn(DB), "--allow-same-server"]
    args += ["--application", "pgbench"]
    result = run_cli(pgtraffic_cmd, *args, timeout=600, columns=200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = " ".join(result.stdout.split())
    assert "baseline and candidate are the same server" in out
    assert "the candidate replays on the state the baseline replay left" in out
    assert "both runs replayed on the same server" in out  # and the report says it too


def _two_round_rehearsal(
    make_cluster: ClusterFactory, tmp_path: Path, *options: str, reset_echo: str
) -> tuple[list[str], Path, Path]:
    """The arguments of ``rehearse --rounds 2`` (and ``options``) of a pgbench capture
    onto two separate, prepared 16s at --max-speed, its workdir, and the file its
    --reset-command (the last argument) appends ``echo "<reset_echo>"`` to."""
    logs = _captured_source(make_cluster, tmp_path, "-c", "2", "-t", "40")
    baseline, candidate = make_cluster(16), make_cluster(16)
    _prepare(baseline)
    _prepare(candidate)
    work = tmp_path / "rehearsal"
    resets = tmp_path / "resets.txt"
    args = ["rehearse", "--rounds", "2", *options, *logs]
    args += ["--baseline", baseline.dsn(DB), "--candidate", candidate.dsn(DB)]
    args += ["--workdir", str(work), "--max-speed", "--application", "pgbench", "--no-explain"]
    args += ["--reset-command", f'echo "{reset_echo}" >> {resets}']
    return args, work, resets


def test_rehearse_rounds_reset_before_every_replay_in_balanced_order(
    make_cluster: ClusterFactory, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    args, work, resets = _two_round_rehearsal(make_cluster, tmp_path, reset_echo="$PGTRAFFIC_SIDE")
    result = run_cli(pgtraffic_cmd, *args, timeout=600, columns=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # A B B A, a reset before each replay
    assert resets.read_text().split() == ["baseline", "candidate", "candidate", "baseline"]
    for name in ("baseline", "baseline-2", "candidate", "candidate-2"):
        assert (work / f"{name}.pgtr").exists()
    assert "2 baseline and 2 candidate rounds" in " ".join(result.stdout.split())
    failing = run_cli(pgtraffic_cmd, *args[:-1], "exit 3", timeout=600)
    assert failing.returncode == 1
    assert "the reset command failed for the baseline (exit 3)" in " ".join(failing.stderr.split())
    assert "Traceback" not in failing.stderr
