"""compare on real replays: A/A, a dropped index, a missing function, the HTML report."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from rich.console import Console

from capture.filters import Filters
from capture.pipeline import CaptureOptions, capture
from capture.records import QueryClass, Session, Statement, StatementKind
from capture.workload import WorkloadWriter
from pgtraffic.compare import (
    INCOMPLETE_EXIT,
    Comparison,
    ExplainTargets,
    FailOn,
    Verdict,
    compare_files,
    exit_code,
)
from pgtraffic.compare.render_html import to_html
from pgtraffic.compare.render_text import (
    floor_text,
    noise_lines,
    terminal,
    to_json,
    to_junit,
    to_markdown,
)
from pgtraffic.compare.rounds import balanced_order
from pgtraffic.rehearsal import ReplaySettings, SilentReporter, replay_once
from pgtraffic.servers import Cluster, Profile
from pgtraffic.servers.cluster import free_port
from pgtraffic.servers.privileges import current_account, give_to, run_as
from replay.results import read_results
from replay.runner import replay_workload
from replay.sync import SyncMode
from tests.conftest import ClusterFactory, require_version
from tests.replay_helpers import simple, write_workload
from tests.test_replay_sync import sql_stmt, sync_workload, two_sessions

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


def _a_a(
    workload: Path, cluster: Cluster, tmp_path: Path, names: tuple[str, str] = ("a1", "a2")
) -> tuple[Path, Path]:
    """Two replays of ``workload`` on ``cluster`` (prepared afresh first), as
    ``tmp_path/<name>.pgtr``: an A/A pair."""
    _prepare(cluster)
    first, second = names
    return (
        _replay(workload, cluster, tmp_path / f"{first}.pgtr"),
        _replay(workload, cluster, tmp_path / f"{second}.pgtr"),
    )


def test_a_a_on_one_server_reports_no_regression(
    workload: Path, pg16: Cluster, tmp_path: Path
) -> None:
    first, second = _a_a(workload, pg16, tmp_path)
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


# ---- results that must not look like an all-clear -------------------------------------


def _timed_workload(path: Path, seconds: float = 6.0) -> Path:
    """Two sessions sending a cheap SELECT every 20 ms for ``seconds``."""
    n = int(seconds / 0.02)
    stmts = [simple(s, i, i * 20_000 + k, "SELECT 1") for k, s in enumerate("ab") for i in range(n)]
    write_workload(path, stmts)
    return path


def _stopped_replay(cmd: list[str], wl: Path, target: Cluster, out: Path, sig: int) -> Path:
    """A CLI replay of ``wl`` stopped by ``sig`` once it has recorded some statements."""
    argv = [*cmd, "replay", str(wl), "--target", target.dsn(), "-o", str(out), "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if out.exists() and len(read_results(out)) > 40:
                break
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 40 < len(read_results(out)) < 600, "stopped part way"
    return out


def _full_replay(wl: Path, target: Cluster, out: Path, **settings: Any) -> Path:
    settings.setdefault("max_speed", True)
    settings.setdefault("sync", SyncMode.NONE)
    replay_workload(wl, out, target.dsn(), ReplaySettings(**settings))
    return out


def test_an_interrupted_run_is_named_in_every_report_and_fails_compare(
    pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    wl = _timed_workload(tmp_path / "w.pgtw")
    base = _full_replay(wl, pg16, tmp_path / "base.pgtr")
    cand = _stopped_replay(pgtraffic_cmd, wl, pg16, tmp_path / "cand.pgtr", signal.SIGINT)
    md, html, xml = tmp_path / "r.md", tmp_path / "r.html", tmp_path / "r.xml"
    reports = ["--markdown", str(md), "--html", str(html), "--junit", str(xml)]
    result = _run([*pgtraffic_cmd, "compare", str(base), str(cand), "--json", *reports])
    assert result.returncode == 6, result.stderr  # never 0, even without --fail-on
    data = json.loads(result.stdout)
    assert data["complete"] is False
    assert list(data["incomplete"]) == ["candidate"]
    assert "interrupted" in data["incomplete"]["candidate"][0]
    assert data["candidate"]["completeness"]["finished"] is False
    assert data["summary"]["headline"].startswith("INCOMPLETE (candidate run)")
    assert "incomplete:" in result.stderr and "INCOMPLETE" in result.stderr
    assert "the candidate run" in md.read_text() and "INCOMPLETE" in md.read_text()
    assert '<p class="incomplete">the candidate run' in html.read_text()
    junit = ElementTree.parse(xml).getroot()
    failed = [c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None]
    assert failed[0] == "the candidate run is complete"  # then any regressions
    assert "the baseline run is complete" not in failed
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props["candidate.complete"] == "false" and props["baseline.complete"] == "true"
    # Accepted explicitly: the usual exit code, and the terminal still says it.
    accepted = _run(
        [
            *pgtraffic_cmd,
            "compare",
            str(base),
            str(cand),
            "--allow-incomplete",
            "--fail-on",
            "errors",
        ],
        env={"COLUMNS": "150", "PATH": ""},
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "INCOMPLETE RUN" in accepted.stdout
    assert "interrupted before it finished" in " ".join(accepted.stdout.split())


def test_a_killed_run_is_incomplete(
    pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    wl = _timed_workload(tmp_path / "w.pgtw")
    base = _stopped_replay(pgtraffic_cmd, wl, pg16, tmp_path / "base.pgtr", signal.SIGKILL)
    cand = _full_replay(wl, pg16, tmp_path / "cand.pgtr")
    c = compare_files(base, cand)
    assert [side for side, _ in c.incomplete_runs()] == ["baseline"]
    assert c.baseline.completeness.killed
    assert "killed" in c.baseline.completeness.reasons()[0]
    assert exit_code(c, []) == INCOMPLETE_EXIT == 6
    assert exit_code(c, [], allow_incomplete=True) == 0


def test_sessions_that_could_not_connect_make_a_run_incomplete(
    pg16: Cluster, tmp_path: Path
) -> None:
    """A role that may log in but never gets a connection (CONNECTION LIMIT 0): every
    session's connect fails (53300) and none of its statements is sent."""
    pg16.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'capped') THEN "
        "CREATE ROLE capped LOGIN CONNECTION LIMIT 0; END IF; END $$"
    )
    wl = _timed_workload(tmp_path / "w.pgtw", 0.2)
    base = _full_replay(wl, pg16, tmp_path / "base.pgtr")
    cand = _full_replay(wl, pg16, tmp_path / "cand.pgtr", map_user={"postgres": "capped"})
    c = compare_files(base, cand)
    reasons = c.candidate.completeness.reasons()
    assert len(reasons) == 2 and reasons[0].endswith(" connection attempts failed")
    assert c.candidate.completeness.connect_failures >= 2
    assert reasons[1] == "20 of 20 statements were not sent"
    assert c.baseline.complete
    assert exit_code(c, list(FailOn)) == 6
    assert "20 of 20 statements were not sent" in to_markdown(c)


def test_sync_timeouts_make_a_run_incomplete(pg16: Cluster, tmp_path: Path) -> None:
    a, b = two_sessions()
    wl = tmp_path / "w.pgtw"
    sync_workload(
        wl,
        [
            sql_stmt(a, 0, 0, "SELECT pg_sleep(2)", commit=1),
            sql_stmt(b, 0, 0, "SELECT 1", after=1),
        ],
    )
    base = _full_replay(wl, pg16, tmp_path / "base.pgtr", sync=SyncMode.COMMIT)
    cand = _full_replay(wl, pg16, tmp_path / "cand.pgtr", sync=SyncMode.COMMIT, sync_timeout_s=0.3)
    c = compare_files(base, cand)
    assert c.baseline.complete
    assert c.candidate.completeness.sync_timeouts == 1
    assert "1 sync waits timed out" in c.candidate.completeness.reasons()[0]
    assert exit_code(c, []) == 6


def test_lag_is_not_applicable_at_max_speed(workload: Path, pg16: Cluster, tmp_path: Path) -> None:
    first, second = _a_a(workload, pg16, tmp_path)  # --max-speed
    c = compare_files(first, second)
    for run in (c.baseline, c.candidate):
        assert math.isnan(run.lag_p50_ms) and math.isnan(run.lag_max_ms)
        assert run.lag_text() == "n/a (--max-speed: no schedule)"
    data = json.loads(to_json(c))
    assert data["baseline"]["lag_p50_ms"] is None and data["candidate"]["lag_p99_ms"] is None
    assert all(p["baseline_lag_p95_ms"] is None for p in data["timeline"])
    assert "n/a (--max-speed" in to_markdown(c)
    assert "n/a (--max-speed" in to_html(c, version="test")
    assert "n/a (--max-speed" in _terminal_text(c)


def _terminal_text(c: Comparison) -> str:
    console = Console(width=150, record=True, file=io.StringIO())
    console.print(terminal(c, width=150))
    return " ".join(console.export_text().split())


def _password_server(make_cluster: ClusterFactory) -> Cluster:
    """A server where ``alice`` must give her password (``secret``) over TCP."""
    cluster = make_cluster(16)
    cluster.psql("CREATE ROLE alice LOGIN PASSWORD 'secret'")
    hba = cluster.data_dir / "pg_hba.conf"
    hba.write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    give_to(cluster.account, hba)
    cluster.psql("SELECT pg_reload_conf()")
    return cluster


def test_plans_from_unreachable_servers_are_not_called_unchanged(
    workload: Path,
    pg16: Cluster,
    make_cluster: ClusterFactory,
    tmp_path: Path,
    pgtraffic_cmd: list[str],
) -> None:
    base, cand = _a_a(workload, pg16, tmp_path)
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/{DB}"
    c = compare_files(base, cand, explain=ExplainTargets(pg16.dsn(DB), closed))
    assert len(c.plans) == 3 and not any(p.compared for p in c.plans)
    assert {p.failed for p in c.plans} == {"candidate"}
    assert all("Connection refused" in (p.error or "") for p in c.plans)
    assert exit_code(c, [FailOn.PLANS]) == 16 + 8
    text = _terminal_text(c)
    assert "no change" not in text
    assert "Plans not compared" in text and "candidate: cannot connect" in text
    # A wrong password on a real server with password auth, through the CLI.
    locked = _password_server(make_cluster)
    wrong = f"postgresql://alice:wrong@127.0.0.1:{locked.port}/{DB}"
    md, xml = tmp_path / "r.md", tmp_path / "r.xml"
    result = _run(
        [
            *pgtraffic_cmd,
            "compare",
            str(base),
            str(cand),
            "--explain",
            "--baseline-dsn",
            wrong,
            "--candidate-dsn",
            pg16.dsn(DB),
            "--fail-on",
            "plans",
            "--markdown",
            str(md),
            "--junit",
            str(xml),
        ],
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert result.returncode == 24, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "no change" not in out
    assert "Plans not compared" in out and "password authentication failed" in out
    assert "plans of 3 of 3 explained classes could not be compared" in md.read_text()
    assert 'password authentication failed for user "alice"' in md.read_text()
    assert 'type="plan-not-compared"' in xml.read_text()


def test_a_class_whose_explain_fails_is_not_unchanged(
    workload: Path, pg16: Cluster, pg18: Cluster, tmp_path: Path
) -> None:
    _prepare(pg16)
    _prepare(pg18, drop_function=True)
    base = _replay(workload, pg16, tmp_path / "base.pgtr")
    cand = _replay(workload, pg18, tmp_path / "cand.pgtr")
    c = compare_files(base, cand, explain=ExplainTargets(pg16.dsn(DB), pg18.dsn(DB)))
    failed = c.unexplained
    assert [p.text.rstrip(";") for p in failed] == ["SELECT price($1)"]
    assert failed[0].failed == "candidate" and "42883" in (failed[0].error or "")
    assert sum(p.compared for p in c.plans) == 2
    assert exit_code(c, [FailOn.PLANS], allow_incomplete=False) == 16 + 8
    assert json.loads(to_json(c))["summary"]["plans_not_compared"] == 1
    assert "not compared" in to_html(c, version="test")


def test_explain_without_the_workload_says_plans_were_not_compared(
    workload: Path, pg16: Cluster, tmp_path: Path
) -> None:
    base, cand = _a_a(workload, pg16, tmp_path, ("base", "cand"))
    moved = tmp_path / "elsewhere.pgtw"
    shutil.copy(workload, moved)
    workload.rename(tmp_path / "gone.pgtw")  # the path the results name no longer exists
    try:
        c = compare_files(base, cand, explain=ExplainTargets(pg16.dsn(DB), pg16.dsn(DB)))
    finally:
        (tmp_path / "gone.pgtw").rename(workload)
    assert c.plans == () and c.explain_error is not None
    assert "--workload" in c.explain_error
    assert exit_code(c, [FailOn.PLANS]) == 16 + 8
    assert "Plans were not compared" in _terminal_text(c)


def test_a_file_compared_with_itself_is_pointed_out(
    workload: Path, pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    _prepare(pg16)
    first = _replay(workload, pg16, tmp_path / "a1.pgtr")
    result = _run([*pgtraffic_cmd, "compare", str(first), str(first), "--json"])
    assert result.returncode == 0, result.stderr
    assert "are the same file" in " ".join(result.stderr.split())
    assert "are the same file" in json.loads(result.stdout)["notices"][0]
    copy = tmp_path / "copy.pgtr"
    shutil.copy(first, copy)
    c = compare_files(first, copy)
    assert len(c.notices) == 1 and "hold the same replay" in c.notices[0]
    assert "hold the same replay" in _terminal_text(c)
    assert "notice.1" in to_junit(c)
    second = _replay(workload, pg16, tmp_path / "a2.pgtr")
    c = compare_files(first, second)
    assert len(c.notices) == 1 and "same server (127.0.0.1:" in c.notices[0]


def test_rounds_a_a_flags_nothing_and_gives_each_class_a_noise_floor(
    workload: Path, pg16: Cluster, tmp_path: Path
) -> None:
    _prepare(pg16)
    runs: dict[str, list[Path]] = {"A": [], "B": []}
    for k, side in enumerate(balanced_order(2)):
        runs[side].append(_replay(workload, pg16, tmp_path / f"{side}{k}.pgtr"))
    c = compare_files(runs["A"], runs["B"])
    assert c.rounds is not None
    assert (c.rounds.baseline, c.rounds.candidate) == (2, 2)
    assert c.rounds.statements == 900
    assert [label for label, _ in c.rounds.runs] == [
        "baseline round 1",
        "baseline round 2",
        "candidate round 1",
        "candidate round 2",
    ]
    assert c.by_verdict(Verdict.REGRESSED) == c.by_verdict(Verdict.IMPROVED) == []
    for cls in c.classes:
        assert cls.rounds is not None and cls.rounds.floor is not None
        assert cls.test.method == "rounds-t"
        assert floor_text(cls).startswith("±")
    assert "2 baseline and 2 candidate rounds" in noise_lines(c)[0]
    assert "floor" in to_markdown(c)
    assert json.loads(to_json(c))["rounds"]["baseline"] == 2
    # one file a side: compare says no floor was measured
    single = compare_files(runs["A"][0], runs["B"][0])
    assert "no noise floor was measured" in noise_lines(single)[0]


@pytest.mark.slow  # CI's time budget: rounds stay in test_rehearse and test_concurrent (real)
def test_rounds_catch_a_dropped_index(
    workload: Path, pg16: Cluster, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    candidate = make_cluster(16)
    _prepare(pg16)
    _prepare(candidate, drop_index=True)
    runs: dict[str, list[Path]] = {"A": [], "B": []}
    for k, side in enumerate(balanced_order(2)):
        target = pg16 if side == "A" else candidate
        runs[side].append(_replay(workload, target, tmp_path / f"{side}{k}.pgtr"))
    c = compare_files(runs["A"], runs["B"])
    regressed = c.by_verdict(Verdict.REGRESSED)
    assert regressed and regressed[0].text.rstrip(";") == (
        "SELECT count(*) FROM items WHERE code = $1"
    )
    effect = regressed[0].rounds
    assert effect is not None and effect.consistent and effect.ratio > 2
    assert all(r > 2 for r in effect.round_ratios)


def test_a_results_file_given_twice_among_rounds_is_pointed_out(
    workload: Path, pg16: Cluster, tmp_path: Path
) -> None:
    a, b = _a_a(workload, pg16, tmp_path, ("a", "b"))
    c = compare_files([a, a], [b, b])
    assert any("given twice among the rounds" in n for n in c.notices)
