"""The pre-replay check for tables without planner statistics, on real servers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from capture.records import QueryClass
from pgtraffic.compare import compare_files
from pgtraffic.compare.render_text import noise_lines
from pgtraffic.servers import Cluster
from replay.planner_stats import statistics_gap, workload_relations
from replay.results import read_results
from tests.replay_helpers import replay, simple, write_workload

pytestmark = pytest.mark.pg(">=16")


def _classes(*sql: str) -> list[QueryClass]:
    return [QueryClass(f"fp{i}", text, True, 1) for i, text in enumerate(sql)]


def _gap(cluster: Cluster, relations: frozenset[str]) -> tuple[str, ...]:
    async def run() -> tuple[str, ...]:
        conn = await asyncpg.connect(cluster.dsn())
        try:
            return (await statistics_gap(conn, relations)).tables
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.mark.parametrize("major", [16, 18])
def test_tables_loaded_without_analyze_are_named(major: int, pg16: Cluster, pg18: Cluster) -> None:
    cluster = pg16 if major == 16 else pg18
    t = f"fresh_{uuid.uuid4().hex[:8]}"
    cluster.psql(
        f"CREATE TABLE {t} (id int primary key, v text); "
        f"INSERT INTO {t} SELECT g, 'x' FROM generate_series(1, 5000) g; "
        f"CREATE TABLE {t}_empty (id int); "
        f"CREATE TABLE {t}_done (id int); INSERT INTO {t}_done VALUES (1); ANALYZE {t}_done"
    )
    relations = workload_relations(
        _classes(
            f"SELECT v FROM {t} WHERE id = $1",
            f"INSERT INTO {t}_empty VALUES ($1)",
            f"SELECT count(*) FROM {t}_done",
            "BEGIN",
        )
    )
    assert relations == {t, f"{t}_empty", f"{t}_done"}
    # loaded, never analyzed: named; empty: nothing to plan from; analyzed: fine
    assert _gap(cluster, relations) == (f"public.{t}",)
    cluster.psql(f"ANALYZE {t}")
    assert _gap(cluster, relations) == ()


def test_no_relations_no_query(pg16: Cluster) -> None:
    assert _gap(pg16, frozenset()) == ()


def test_replay_warns_and_records_tables_without_statistics_and_compare_lists_them(
    pg16: Cluster, pg18: Cluster, tmp_path: Path
) -> None:
    t = f"restored_{uuid.uuid4().hex[:8]}"
    sql = f"SELECT count(*) FROM {t}"
    for cluster in (pg16, pg18):
        cluster.psql(f"CREATE TABLE {t} AS SELECT g AS id FROM generate_series(1, 1000) g")
    pg16.psql(f"ANALYZE {t}")  # the baseline was analyzed, the candidate not
    workload = write_workload(
        tmp_path / "w.pgtw",
        [simple("s1", 0, 1000, sql)],
        classes=[QueryClass(f"fp:{sql[:40]}", sql, True, 1)],
    )
    replay(workload, pg16, tmp_path / "base.pgtr", max_speed=True)
    replay(workload, pg18, tmp_path / "cand.pgtr", max_speed=True)
    assert read_results(tmp_path / "base.pgtr").header["unanalyzed_tables"] == []
    assert read_results(tmp_path / "cand.pgtr").header["unanalyzed_tables"] == [f"public.{t}"]
    c = compare_files(tmp_path / "base.pgtr", tmp_path / "cand.pgtr")
    assert c.targets is not None
    assert c.targets.candidate_unanalyzed == (f"public.{t}",)
    assert any("without planner statistics on the candidate" in line for line in noise_lines(c))
