"""The bundled gitlab scenario on real PostgreSQL 16 and 18 servers.

Loads a small scale once per version (module fixture), then checks the data is
deterministic, that every client script runs under pgbench in simple and
prepared protocol, and that the plan changes the scenario promises are real.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from capture.errors import UsageError
from capture.normalize import fingerprint
from pgtraffic.scenario import (
    ClientScript,
    LoadResult,
    Scenario,
    client_command,
    count_rows,
    get_scenario,
    instantiate,
    load,
    parse_summary,
    run_client,
    scale_text,
)
from pgtraffic.servers import Cluster

SCALE = 0.02
SCRIPTS = get_scenario().scripts

# Content digest of the generated rows: equal digests mean equal data.
DIGEST_SQL = """
SELECT md5(string_agg(x, ';' ORDER BY x)) FROM (
    SELECT concat_ws(',', 'u', id, username, name, state, created_at) FROM users
    UNION ALL SELECT concat_ws(',', 'p', id, namespace_id, name, star_count, last_activity_at)
        FROM projects
    UNION ALL SELECT concat_ws(',', 'i', id, project_id, iid, author_id, state, created_at)
        FROM issues
    UNION ALL SELECT concat_ws(',', 'b', id, pipeline_id, project_id, status, duration, created_at)
        FROM ci_builds
    UNION ALL SELECT concat_ws(',', 'n', id, project_id, noteable_type, noteable_id, note)
        FROM notes
    UNION ALL SELECT concat_ws(',', 'ii', usage, project_id, last_value) FROM internal_ids
) AS t (x)
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A scenario loaded for the tests: where, what :func:`load` made, and a digest of it."""

    cluster: Cluster
    result: LoadResult
    digest: str


def _drop(cluster: Cluster, dbname: str) -> None:
    cluster.psql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _load(cluster: Cluster, scenario: Scenario) -> Iterator[Loaded]:
    dbname = f"gitlab_test_{uuid.uuid4().hex[:8]}"
    try:
        result = load(cluster, scenario, SCALE, dbname=dbname)
        digest = cluster.psql(DIGEST_SQL, dbname=dbname)
        yield Loaded(cluster, result, digest)
    finally:
        _drop(cluster, dbname)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return get_scenario("gitlab")


@pytest.fixture(scope="module")
def gitlab16(pg16: Cluster, scenario: Scenario) -> Iterator[Loaded]:
    yield from _load(pg16, scenario)


@pytest.fixture(scope="module")
def gitlab18(pg18: Cluster, scenario: Scenario) -> Iterator[Loaded]:
    yield from _load(pg18, scenario)


@pytest.fixture(params=[16, 18], ids=lambda m: f"pg{m}")
def loaded(request: pytest.FixtureRequest) -> Loaded:
    fixture = "gitlab16" if request.param == 16 else "gitlab18"
    result: Loaded = request.getfixturevalue(fixture)
    return result


# --- pure ----------------------------------------------------------------------


def test_scenario_files_and_weights(scenario: Scenario) -> None:
    assert [p.name for p in scenario.setup_files] == ["schema.sql", "data.sql", "indexes.sql"]
    assert all(p.is_file() for p in scenario.setup_files)
    names = {s.name for s in scenario.scripts}
    assert {"builds_by_project", "users_in_list", "create_issue", "finish_build"} <= names
    assert all(s.weight > 0 and s.path.suffix == ".pgbench" for s in scenario.scripts)


def test_unknown_scenario_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no bundled scenario") as info:
        get_scenario("jira")
    assert info.value.hint is not None
    assert "gitlab" in info.value.hint


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_every_statement_parses(script: ClientScript) -> None:
    statements = script.statements()
    assert statements
    for sql in statements:
        assert not sql.lstrip().startswith(("\\", "--"))
        _key, parsed = fingerprint(instantiate(sql))
        assert parsed, sql


def test_instantiate_keeps_casts() -> None:
    assert instantiate("SELECT :a::bigint, ':' || :b_2, x::text", 7) == (
        "SELECT 7::bigint, ':' || 7, x::text"
    )


def test_plan_change_fingerprints_match_captured_forms(scenario: Scenario) -> None:
    keys = scenario.plan_change_fingerprints()
    assert len(keys) == len(scenario.plan_changes)
    skip = next(c for c in scenario.plan_changes if c.script == "builds_by_project")
    # What a capture sees: literals (simple protocol) or $n (extended): one class.
    sql = scenario.plan_change_sql(skip)
    literal = fingerprint(sql.replace(":p", "4242"))[0]
    param = fingerprint(sql.replace(":p", "$1"))[0]
    assert keys[literal] is skip
    assert keys[param] is skip


def test_row_counts_follow_scale(scenario: Scenario) -> None:
    full = scenario.row_counts(1)
    assert full["ci_builds"] == 1_250_000
    assert full["namespaces"] == 55_000
    assert 2_500_000 < sum(full.values()) < 3_000_000
    tiny = scenario.row_counts(0.0001)
    assert tiny["users"] == 5
    assert tiny["projects"] == 2
    assert tiny["internal_ids"] == 4


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_scale_must_be_positive(bad: float) -> None:
    with pytest.raises(UsageError, match="scale"):
        scale_text(bad)


def test_scale_text() -> None:
    assert scale_text(1) == "1"
    assert scale_text(0.05) == "0.05"
    assert scale_text(2.5) == "2.5"


def test_client_command(pg16: Cluster, scenario: Scenario) -> None:
    cmd = client_command(
        pg16, scenario, seconds=3, clients=4, protocol="prepared", rate=50, scale=0.5
    )
    assert cmd[0].endswith("pgbench")
    assert "--protocol=prepared" in cmd
    assert "--time=3" in cmd
    assert "--client=4" in cmd
    assert "--rate=50" in cmd
    assert "--define=scale=0.5" in cmd
    weighted = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-f"]
    assert weighted == [s.option for s in scenario.scripts]
    assert cmd[-1] == "gitlab"
    with pytest.raises(UsageError, match="protocol"):
        client_command(pg16, scenario, seconds=3, clients=1, protocol="copy")  # type: ignore[arg-type]


def test_parse_summary_requires_totals() -> None:
    out = (
        "number of transactions actually processed: 120\n"
        "number of failed transactions: 2 (1.6%)\ntps = 59.5 (without initial connection time)\n"
    )
    summary = parse_summary(out, ["pgbench"])
    assert (summary.transactions, summary.failed, summary.tps) == (120, 2, 59.5)
    with pytest.raises(Exception, match="no summary"):
        parse_summary("pgbench: error: boom", ["pgbench"])


# --- real servers ---------------------------------------------------------------


def test_load_counts_are_deterministic(
    gitlab16: Loaded, gitlab18: Loaded, scenario: Scenario
) -> None:
    expected = scenario.row_counts(SCALE)
    assert gitlab16.result.rows == expected
    assert gitlab18.result.rows == expected
    # Same rows on 16 and 18, not only the same counts.
    assert gitlab16.digest == gitlab18.digest
    assert re.fullmatch(r"[0-9a-f]{32}", gitlab16.digest)


def test_second_load_is_identical(gitlab18: Loaded, scenario: Scenario) -> None:
    again = f"gitlab_test_{uuid.uuid4().hex[:8]}"
    try:
        result = load(gitlab18.cluster, scenario, SCALE, dbname=again)
        assert result.rows == gitlab18.result.rows
        assert gitlab18.cluster.psql(DIGEST_SQL, dbname=again) == gitlab18.digest
        with pytest.raises(UsageError, match="already exists"):
            load(gitlab18.cluster, scenario, SCALE, dbname=again)
    finally:
        _drop(gitlab18.cluster, again)


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_each_script_runs(loaded: Loaded, script: ClientScript, protocol: str) -> None:
    result = loaded.cluster.run_tool(
        "pgbench",
        "--no-vacuum",
        f"--protocol={protocol}",
        "--client=2",
        "--transactions=8",
        f"--define=scale={scale_text(SCALE)}",
        "-f",
        script.path,
        loaded.result.dbname,
        dbname=loaded.result.dbname,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = parse_summary(result.stdout, [])
    assert summary.transactions == 16
    assert summary.failed == 0


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
def test_weighted_client_runs(loaded: Loaded, scenario: Scenario, protocol: str) -> None:
    before = count_rows(loaded.cluster, scenario, loaded.result.dbname)
    summary = run_client(
        loaded.cluster,
        scenario,
        seconds=2,
        clients=2,
        protocol=protocol,  # type: ignore[arg-type]
        scale=SCALE,
        dbname=loaded.result.dbname,
    )
    assert summary.transactions > 20
    assert summary.failed == 0
    assert summary.tps > 0
    after = count_rows(loaded.cluster, scenario, loaded.result.dbname)
    # create_issue inserted issues and notes; nothing was deleted.
    assert after["issues"] >= before["issues"]
    assert after["ci_builds"] == before["ci_builds"]


def _explain(loaded: Loaded, sql: str) -> str:
    return loaded.cluster.psql(
        f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {sql}", dbname=loaded.result.dbname
    )


def test_skip_scan_on_18_only(gitlab16: Loaded, gitlab18: Loaded, scenario: Scenario) -> None:
    change = next(c for c in scenario.plan_changes if c.feature == "btree skip scan")
    project = scenario.row_counts(SCALE)["projects"] // 2
    sql = instantiate(scenario.plan_change_sql(change), project)
    index = "index_ci_builds_on_status_and_project_id_and_created_at"
    plan16 = _explain(gitlab16, sql)
    plan18 = _explain(gitlab18, sql)
    assert index not in plan16, plan16
    assert "Seq Scan on ci_builds" in plan16
    assert index in plan18, plan18
    assert "Index Cond: (project_id = " in plan18
    searches = re.search(r"Index Searches: (\d+)", plan18)
    assert searches is not None, plan18
    # One descent per status value (seven) and a few more, not one per index page.
    assert 2 <= int(searches.group(1)) <= 20


def test_in_values_becomes_any_on_18(
    gitlab16: Loaded, gitlab18: Loaded, scenario: Scenario
) -> None:
    change = next(c for c in scenario.plan_changes if c.feature.startswith("IN (VALUES"))
    sql = instantiate(scenario.plan_change_sql(change), 3)
    plan16 = _explain(gitlab16, sql)
    plan18 = _explain(gitlab18, sql)
    assert "Values Scan" in plan16, plan16
    assert "= ANY" not in plan16
    assert "Values Scan" not in plan18, plan18
    assert "= ANY" in plan18


def test_long_in_list_shares_descents_on_18(gitlab18: Loaded, scenario: Scenario) -> None:
    change = next(c for c in scenario.plan_changes if not c.shape_changes)
    sql = scenario.plan_change_sql(change)
    # 24 neighbouring iids of the biggest project: a handful of leaf pages.
    iids = {f":i{k}": str(k) for k in range(24, 0, -1)}
    for var, value in iids.items():
        sql = sql.replace(var, value)
    plan18 = _explain(gitlab18, sql.replace(":p", "1"))
    searches = re.search(r"Index Searches: (\d+)", plan18)
    assert searches is not None, plan18
    assert int(searches.group(1)) < 24


@pytest.mark.slow
def test_default_scale_loads_quickly(pg18: Cluster, scenario: Scenario) -> None:
    dbname = f"gitlab_test_{uuid.uuid4().hex[:8]}"
    try:
        result = load(pg18, scenario, 1, dbname=dbname)
        assert result.rows == scenario.row_counts(1)
        assert result.seconds < 90, f"loading scale 1 took {result.seconds:.1f}s"
    finally:
        _drop(pg18, dbname)
