"""The pre-replay check for tables without planner statistics, on real servers."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from capture.records import QueryClass
from pgtraffic.servers import Cluster
from replay.planner_stats import statistics_gap, workload_relations

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
