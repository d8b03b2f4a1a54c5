"""compare on real replays: A/A, a dropped index, a missing function, the HTML report."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture.filters import Filters
from capture.pipeline import CaptureOptions, capture
from capture.records import QueryClass, Session, Statement, StatementKind
from capture.workload import WorkloadWriter
from pgtraffic.compare import ExplainTargets, FailOn, Verdict, compare_files, exit_code
from pgtraffic.compare.render_html import to_html
from pgtraffic.rehearsal import ReplaySettings, SilentReporter, replay_once
from pgtraffic.servers import Cluster, Profile
from pgtraffic.servers.privileges import current_account, run_as
from tests.conftest import require_version

DB = "shop"
SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, code int NOT NULL, note text NOT NULL);
INSERT INTO items SELECT g, g % 20000, repeat('x', 40) FROM generate_series(1, 200000) g;
CREATE INDEX items_code ON items (code);
CREATE FUNCTION price(n int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT n * 3';
ANALYZE items;
"""
CLIENT = """\\set c random(1, 20000)
SELECT count(*) FROM items WHERE code = :c;
SELECT price(:c);
SELECT id FROM items WHERE id = :c;
"""


def _prepare(cluster: Cluster, *, drop_index: bool = False, drop_function: bool = False) -> None:
    cluster.psql(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    cluster.psql(f'CREATE DATABASE "{DB}"')
    cluster.run_tool("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", SCHEMA, dbname=DB)
    if drop_index:
        cluster.psql("DROP INDEX items_code", dbname=DB)
    if drop_function:
        cluster.psql("DROP FUNCTION price(int)", dbname=DB)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workload captured from a real PostgreSQL 16 while pgbench ran (prepared protocol)."""
    inst = require_version(16)
    work = tmp_path_factory.mktemp("compare")
    source = Cluster.create(inst, profile=Profile.CAPTURE)
    try:
        _prepare(source)
        script = work / "client.pgbench"
        script.write_text(CLIENT)
        source.run_tool(
            "pgbench",
            "--no-vacuum",
            "-M",
            "prepared",
            "-c",
            "2",
            "-t",
            "150",
            "-f",
            str(script),
            dbname=DB,
        )
        out = work / "workload.pgtw"
        summary = capture(
            [str(p) for p in source.log_files()],
            out,
            CaptureOptions(filters=Filters(databases=(DB,), applications=("pgbench",))),
        )
        assert summary.statements == 2 * 150 * 3
        yield out
    finally:
        source.stop()


def _run(
    argv: list[str], *, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a program (the CLI, a browser) as ourselves, capturing its output."""
    return run_as(current_account(), argv, env=env, timeout=timeout)


def _replay(workload: Path, cluster: Cluster, out: Path) -> Path:
    replay_once(
        workload, cluster.dsn(DB), out, ReplaySettings(max_speed=True), SilentReporter(), "t"
    )
    return out


def test_a_a_on_one_server_reports_no_regression(
    workload: Path, pg16: Cluster, tmp_path: Path
) -> None:
    _prepare(pg16)
    first = _replay(workload, pg16, tmp_path / "a1.pgtr")
    second = _replay(workload, pg16, tmp_path / "a2.pgtr")
    c = compare_files(first, second)
    assert c.by_verdict(Verdict.REGRESSED) == []
    assert c.errors == ()
    assert c.rows == ()
    assert c.paired == 900
    assert len(c.classes) == 3
    assert exit_code(c, list(FailOn)) == 0


def test_dropped_index_is_a_regression_with_a_changed_plan(
    workload: Path, pg16: Cluster, make_cluster: object, tmp_path: Path
) -> None:
    candidate = make_cluster(16)  # type: ignore[operator]
    _prepare(pg16)
    _prepare(candidate, drop_index=True)
    base = _replay(workload, pg16, tmp_path / "base.pgtr")
    cand = _replay(workload, candidate, tmp_path / "cand.pgtr")
    c = compare_files(base, cand, explain=ExplainTargets(pg16.dsn(DB), candidate.dsn(DB)))
    regressed = c.by_verdict(Verdict.REGRESSED)
    # The class that lost its index comes first (worst first). Others may be slowed too:
    # at --max-speed they share the CPU with the sequential scans.
    assert regressed[0].text.rstrip(";") == "SELECT count(*) FROM items WHERE code = $1"
    assert regressed[0].ratio_p50 > 2
    by_text = {cls.text.rstrip(";"): cls for cls in c.classes}
    assert by_text["SELECT id FROM items WHERE id = $1"].verdict is not Verdict.IMPROVED
    changed = [p for p in c.plans if p.changed]
    assert [p.fingerprint for p in changed] == [regressed[0].fingerprint]
    assert "using items_code" in changed[0].baseline_plan
    assert "Seq Scan on items" in changed[0].candidate_plan
    assert exit_code(c, [FailOn.REGRESSION, FailOn.PLANS]) == 16 + 1 + 8


def test_missing_function_shows_as_new_errors_42883(
    workload: Path, pg16: Cluster, pg18: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    _prepare(pg16)
    _prepare(pg18, drop_function=True)
    base = _replay(workload, pg16, tmp_path / "base.pgtr")
    cand = _replay(workload, pg18, tmp_path / "cand.pgtr")
    c = compare_files(base, cand)
    assert [(d.change, d.candidate_sqlstate, d.count) for d in c.errors] == [("new", "42883", 300)]
    example = c.errors[0].examples[0]
    assert example.sql is not None and "price(" in example.sql
    # The CLI says the same, with the documented exit code for new errors.
    result = _run(
        [
            *pgtraffic_cmd,
            "compare",
            str(base),
            str(cand),
            "--fail-on",
            "errors",
            "--markdown",
            str(tmp_path / "r.md"),
            "--junit",
            str(tmp_path / "r.xml"),
        ]
    )
    assert result.returncode == 18, result.stderr
    assert "42883" in (tmp_path / "r.md").read_text()
    assert "new-error" in (tmp_path / "r.xml").read_text()


def test_results_of_different_workloads_are_refused(
    workload: Path, pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    _prepare(pg16)
    base = _replay(workload, pg16, tmp_path / "base.pgtr")
    other = tmp_path / "other.pgtw"
    writer = WorkloadWriter(other)
    writer.write(Statement("s1", 0, 0, StatementKind.SIMPLE, "SELECT 1", "f1"))
    now = dt.datetime.now(dt.UTC)
    writer.close(
        capture_start=now,
        capture_end=now,
        sessions=[Session("s1", "postgres", DB)],
        classes=[QueryClass("f1", "SELECT $1", True, 1)],
    )
    unrelated = _replay(other, pg16, tmp_path / "other.pgtr")
    result = _run([*pgtraffic_cmd, "compare", str(base), str(unrelated)])
    assert result.returncode == 3, result.stdout + result.stderr
    assert "replayed different workloads" in result.stderr
    assert "hint:" in result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_html_report_renders_its_charts_in_chromium(
    workload: Path, pg16: Cluster, pg18: Cluster, tmp_path: Path
) -> None:
    _prepare(pg16)
    _prepare(pg18)
    base = _replay(workload, pg16, tmp_path / "base.pgtr")
    cand = _replay(workload, pg18, tmp_path / "cand.pgtr")
    html = tmp_path / "report.html"
    html.write_text(to_html(compare_files(base, cand), version="test"))
    text = html.read_text()
    assert text.count("<svg") >= 3, "ratio, distribution and timeline charts"
    assert not re.search(r"(src|href)=[\"']?https?://", text), "self-contained: nothing to fetch"
    assert "<script src" not in text
    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    result = _run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            html.as_uri(),
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists()
    pixels = _png_colours(shot)
    # Chart lines are drawn in the baseline blue and candidate red: both must be on screen.
    assert pixels["blue"] > 50, pixels
    assert pixels["red"] > 50, pixels


def _png_colours(path: Path) -> dict[str, int]:
    """Count pixels near the chart colours (#1f77b4, #d62728) with matplotlib's PNG reader."""
    import matplotlib.image as mpimg
    import numpy as np

    img = np.asarray(mpimg.imread(path))[..., :3]

    def near(rgb: tuple[int, int, int]) -> int:
        target = np.array(rgb) / 255.0
        return int((np.abs(img - target).max(axis=-1) < 0.08).sum())

    return {"blue": near((0x1F, 0x77, 0xB4)), "red": near((0xD6, 0x27, 0x28))}


def test_cli_help_documents_exit_codes(pgtraffic_cmd: list[str]) -> None:
    argv = [sys.executable, "-m", "pgtraffic.cli", "compare", "--help"]
    result = _run(argv, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "17 = regressed classes" in result.stdout


def test_cli_unknown_option_is_a_usage_error(pgtraffic_cmd: list[str]) -> None:
    result = _run([*pgtraffic_cmd, "compare", "a.pgtr", "b.pgtr", "--no-such-option"], timeout=60)
    assert result.returncode == 2
    assert "No such option" in result.stderr
