"""Logs of hosted PostgreSQL as their platforms export them: hand-written from the
documented layouts (no server here writes them). Each export holds the same
session: a parameterized execute, a division by zero, a multi-line statement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from capture.errors import InputError
from capture.pipeline import CaptureOptions, capture
from capture.settings import platform_recipe
from capture.workload import read_workload

LOGS = Path(__file__).parent / "logs"

EXPECTED = [
    ("SELECT name FROM items WHERE id = $1", ("7",), None),
    ("SELECT 1/0", None, "22012"),
    ("SELECT 1\nFROM pg_class", None, None),
]


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("cloudsql.json", "Google Cloud SQL (Cloud Logging export), log_line_prefix"),
        ("cloudsql.jsonl", "Google Cloud SQL (Cloud Logging export), log_line_prefix"),
        ("cloudsql_jsonpayload.jsonl", "Google Cloud SQL (Cloud Logging export), log_line"),
        ("azure.json", "Azure Database for PostgreSQL (PostgreSQLLogs export)"),
        ("azure_diagnostics.json", "Azure Database for PostgreSQL (PostgreSQLLogs export)"),
        ("azure_pgsqlserverlogs.json", "Azure Database for PostgreSQL (PostgreSQLLogs export)"),
        ("cloudnativepg.json", "CloudNativePG (instance manager JSON)"),
    ],
)
def test_platform_export(tmp_path: Path, name: str, label: str) -> None:
    out = tmp_path / "w.pgtw"
    summary = capture([str(LOGS / name)], out, CaptureOptions(jobs=1))
    (fmt,) = summary.formats
    assert fmt.startswith(label)
    assert summary.skipped == {}
    workload = read_workload(out)
    got = [(s.sql, s.params, s.sqlstate) for s in workload.statements()]
    assert got == EXPECTED
    (session,) = workload.sessions.values()
    assert (session.user, session.database, session.application) == ("app", "shop", "web")
    assert session.client == "10.0.0.9:5000"
    assert (session.disconnect_us or 0) - (session.connect_us or 0) >= 4_000_000


def test_rds_download_name(tmp_path: Path) -> None:
    """A log downloaded from RDS keeps its name (``postgresql.log.YYYY-MM-DD-HH``);
    the prefix tells the platform."""
    path = tmp_path / "postgresql.log.2026-12-01-10"
    shutil.copy(LOGS / "rds_stderr.log", path)
    summary = capture([str(path)], tmp_path / "w.pgtw", CaptureOptions(jobs=1))
    assert summary.formats[0].endswith("; the AWS RDS/Aurora layout)")
    assert summary.statements == 4


@pytest.mark.parametrize(
    ("platform", "where"),
    [
        ("rds", "parameter group"),
        ("cloudsql", "database flags"),
        ("azure", "server parameters"),
        ("cloudnativepg", "postgresql:\n    parameters:"),
        ("heroku", "heroku pg:settings"),
        ("", "postgresql.conf"),
    ],
)
def test_platform_recipe(platform: str, where: str) -> None:
    recipe = platform_recipe(platform)
    assert where in recipe
    assert "log_statement" in recipe or "log-statement" in recipe


def test_refusal_names_the_platform(tmp_path: Path) -> None:
    """An export without statements: the advice is for the platform at hand."""
    lines = (LOGS / "cloudsql.jsonl").read_text().splitlines()
    path = tmp_path / "cloudsql.jsonl"
    path.write_text(lines[0] + "\n" + lines[1] + "\n")
    with pytest.raises(InputError) as info:
        capture([str(path)], tmp_path / "w.pgtw", CaptureOptions(jobs=1))
    assert "database flags" in (info.value.hint or "")


def test_cloudnativepg_before_1_22(tmp_path: Path) -> None:
    """Operators before 1.22 name the pod ``logging_podName`` and write ``ts`` as epoch
    seconds; a pod's log starts with many of the instance manager's own lines."""
    lines = (LOGS / "cloudnativepg_1.21.json").read_text().splitlines()
    manager = json.loads(lines[0])
    head = [json.dumps({**manager, "msg": f"step {n}"}) for n in range(60)]
    path = tmp_path / "pod.json"
    path.write_text("\n".join(head + lines) + "\n")
    out = tmp_path / "w.pgtw"
    summary = capture([str(path)], out, CaptureOptions(jobs=1))
    assert summary.formats == ("CloudNativePG (instance manager JSON)",)
    assert summary.skipped == {}
    got = [(s.sql, s.params, s.sqlstate) for s in read_workload(out).statements()]
    assert got == EXPECTED


def test_a_log_analytics_array_is_put_in_time_order(tmp_path: Path) -> None:
    """Rows of ``az monitor log-analytics query -o json`` come in no set order."""
    rows = json.loads((LOGS / "azure_diagnostics.json").read_text())
    times = [row["TimeGenerated"] for row in rows]
    assert times != sorted(times)  # the file is out of order
    summary = capture(
        [str(LOGS / "azure_diagnostics.json")], tmp_path / "w.pgtw", CaptureOptions(jobs=1)
    )
    assert summary.reordered == 0
    assert summary.statements == 3
