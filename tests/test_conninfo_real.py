"""What --target takes, against real servers: key=value strings, the environment,
service files, the password file, several hosts, and libpq clients (psycopg)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from capture.records import StatementKind
from pgtraffic.compare.plans import explain_statement
from pgtraffic.servers import Cluster
from pgtraffic.servers.cluster import free_port
from replay.connection import connect
from replay.conninfo import ConninfoError
from replay.errors import TargetError
from replay.results import read_results
from replay.runner import ReplaySettings, replay_workload
from replay.sync import SyncMode
from tests.conftest import ClusterFactory
from tests.replay_helpers import outcomes, run_cli, simple, write_workload

pytestmark = pytest.mark.pg(">=16")

PASSWORD = r"pa:ss\word it's"
"""Needs escaping in a password file (``:`` and ``\\``) and quoting in key=value."""


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PG* variable of the machine's, and a HOME of the test's own (no ~/.pgpass)."""
    for name in list(os.environ):
        if name.startswith("PG"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _replay(tmp_path: Path, dsn: str, user: str = "postgres") -> dict[str, int]:
    """Replay three SELECTs onto ``dsn``; the count of statements per outcome."""
    stmts = [simple("a", i, i * 1000, f"SELECT {i}, current_user") for i in range(3)]
    workload = write_workload(tmp_path / "w.pgtw", stmts, user=user)
    out = tmp_path / "r.pgtr"
    replay_workload(workload, out, dsn, ReplaySettings(max_speed=True, sync=SyncMode.NONE))
    counts: dict[str, int] = {}
    for state, _ in outcomes(read_results(out)).values():
        counts[state or "ok"] = counts.get(state or "ok", 0) + 1
    return counts


def test_key_value_target_with_a_socket_directory(
    pg16: Cluster, tmp_path: Path, clean_env: Path
) -> None:
    dsn = f"host={pg16.socket_dir} port={pg16.port} dbname=postgres user=postgres"
    assert _replay(tmp_path, dsn) == {"ok": 3}


def test_target_from_the_environment_only(
    pg16: Cluster, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGHOST", str(pg16.socket_dir))
    monkeypatch.setenv("PGPORT", str(pg16.port))
    monkeypatch.setenv("PGUSER", "postgres")
    monkeypatch.setenv("PGDATABASE", "postgres")
    assert _replay(tmp_path, "") == {"ok": 3}
    assert _replay(tmp_path, "dbname=postgres application_name=from-env") == {"ok": 3}


def test_target_from_a_service_file(
    pg16: Cluster, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = tmp_path / "services.conf"
    services.write_text(
        f"[other]\nhost=nowhere\n[replay-target]\nhost={pg16.socket_dir}\n"
        f"port={pg16.port}\nuser=postgres\ndbname=postgres\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGPORT", "1")  # the service's port wins over the environment's
    assert _replay(tmp_path, "service=replay-target") == {"ok": 3}
    monkeypatch.setenv("PGSERVICE", "replay-target")
    assert _replay(tmp_path, "postgresql://") == {"ok": 3}


def _password_cluster(make_cluster: ClusterFactory) -> Cluster:
    cluster = make_cluster(16)
    quoted = PASSWORD.replace("'", "''")
    cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{quoted}'")
    cluster.require_passwords()
    return cluster


def _pgpass_line(*fields: str) -> str:
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields)


def test_password_from_a_password_file(
    make_cluster: ClusterFactory, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = _password_cluster(make_cluster)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(
        "# a socket directory that is not libpq's default is matched by its path\n"
        + _pgpass_line(str(cluster.socket_dir), str(cluster.port), "*", "app", PASSWORD)
        + "\n*:*:*:*:wrong\n"
    )
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    dsn = f"postgresql:///postgres?host={cluster.socket_dir}&port={cluster.port}&user=app"
    assert _replay(tmp_path, dsn, user="app") == {"ok": 3}

    pgpass.chmod(0o644)  # libpq ignores a password file others may read, and so do we
    with pytest.raises(TargetError) as caught:
        _replay(tmp_path, dsn, user="app")
    assert f"chmod 0600 {pgpass}" in (caught.value.hint or "")


def test_password_in_a_quoted_key_value_string(
    make_cluster: ClusterFactory, tmp_path: Path, clean_env: Path
) -> None:
    cluster = _password_cluster(make_cluster)
    escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    where = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres"
    dsn = f"{where} user=app password='{escaped}'"
    assert _replay(tmp_path, dsn, user="app") == {"ok": 3}


def test_several_hosts_first_that_answers(
    make_cluster: ClusterFactory, tmp_path: Path, clean_env: Path
) -> None:
    cluster = _password_cluster(make_cluster)
    closed = free_port()
    pgpass = clean_env / ".pgpass"
    pgpass.write_text(
        _pgpass_line("127.0.0.1", str(closed), "*", "*", "not-this-one")
        + "\n"
        + _pgpass_line("127.0.0.1", str(cluster.port), "*", "*", PASSWORD)
        + "\n"
    )
    pgpass.chmod(0o600)
    dsn = f"postgresql://app@127.0.0.1:{closed},127.0.0.1:{cluster.port}/postgres?sslmode=disable"

    async def whoami() -> tuple[str, int]:
        conn = await connect(dsn)
        try:
            row = await conn.fetchrow("SELECT current_user, inet_server_port()")
            assert row is not None
            return str(row[0]), int(row[1])
        finally:
            await conn.close()

    assert asyncio.run(whoami()) == ("app", cluster.port)


def test_malformed_target_is_a_usage_error_without_traceback(
    pgtraffic_cmd: list[str], tmp_path: Path
) -> None:
    workload = tmp_path / "w.pgtw"
    write_workload(workload, [simple("a", 0, 0, "SELECT 1")])
    for target, part in (
        ("host=db port=notaport", 'invalid port "notaport"'),
        ("postgresql://u:secret@db:notaport/x", 'invalid port "notaport"'),
        ("host='db", "unterminated quoted string"),
    ):
        result = run_cli(
            pgtraffic_cmd, "replay", str(workload), "--target", target, "-o", "r.pgtr", cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert part in result.stderr
        assert "Traceback" not in result.stderr
        assert "secret" not in result.stderr
        assert not (tmp_path / "r.pgtr").exists()


def test_psycopg_paths_take_key_value_strings(pg16: Cluster, clean_env: Path) -> None:
    stmt = simple("a", 0, 0, "SELECT 1")
    assert stmt.kind is StatementKind.SIMPLE
    dsn = f"host={pg16.socket_dir} port={pg16.port} user=postgres"
    assert explain_statement(dsn, stmt, "postgres") == ["Result"]
    with pytest.raises(ConninfoError, match='invalid port "x"'):
        explain_statement("host=db port=x", stmt, "postgres")
