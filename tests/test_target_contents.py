"""Extensions and database sizes: read before a replay, recorded in the results
header, listed by compare when the two targets differ (#14)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture.records import QueryClass
from pgtraffic.compare import compare_files
from pgtraffic.compare.render_html import to_html
from pgtraffic.compare.render_text import noise_lines, to_json, to_markdown
from pgtraffic.compare.targets import (
    ExtensionDifference,
    SizeDifference,
    target_differences,
)
from pgtraffic.servers import Cluster
from replay.results import read_results
from replay.runner import ReplaySettings, ResultsHeader, inspect_target, replay_workload
from replay.sync import SyncMode
from replay.target_contents import databases_from_header
from tests.replay_helpers import simple, write_workload

MB = 1024 * 1024


def _db(size_mb: float | None, **extensions: str) -> dict[str, Any]:
    return {
        "size_bytes": None if size_mb is None else int(size_mb * MB),
        "extensions": {"plpgsql": "1.0", **extensions},
        "error": None,
    }


def _header(**databases: dict[str, Any]) -> dict[str, Any]:
    return {"target": {"settings": {"work_mem": "4MB"}}, "databases": databases}


def test_extensions_on_one_side_or_in_another_version_are_listed() -> None:
    base = _header(app=_db(100, hstore="1.8", vector="0.7.0"))
    cand = _header(app=_db(100, pg_trgm="1.6", vector="0.8.0"))
    diffs = target_differences(base, cand)
    assert diffs
    assert diffs.extensions == (
        ExtensionDifference("app", "hstore", "1.8", None),
        ExtensionDifference("app", "pg_trgm", None, "1.6"),
        ExtensionDifference("app", "vector", "0.7.0", "0.8.0"),
    )
    assert diffs.sizes == ()
    lines = diffs.lines()
    assert "extension hstore 1.8 is installed in database app on the baseline only" in lines[0]
    assert "statements that use it fail on the other side" in lines[0]
    assert "on the candidate only" in lines[1]
    assert lines[2].startswith("extension vector in database app: 0.7.0 -> 0.8.0")
    assert not target_differences(base, base)


@pytest.mark.parametrize(
    ("base_mb", "cand_mb", "listed"),
    [
        (6.9, 7.1, False),  # empty databases on 16 and 18
        (7.0, 14.5, False),  # twice as big, but under 8 MB apart
        (100, 119, False),  # 19 MB apart, but under 20%
        (100, 125, True),
        (500, 100, True),
        (7.5, 30, True),
    ],
)
def test_database_sizes_are_listed_beyond_20_percent_and_8_mb(
    base_mb: float, cand_mb: float, listed: bool
) -> None:
    diffs = target_differences(_header(app=_db(base_mb)), _header(app=_db(cand_mb)))
    assert bool(diffs) is listed
    if listed:
        assert diffs.sizes == (SizeDifference("app", int(base_mb * MB), int(cand_mb * MB)),)
        assert "keeps less of itself in cache" in diffs.lines()[0]


def test_one_database_a_side_is_compared_whatever_its_name() -> None:
    diffs = target_differences(_header(app=_db(10)), _header(app_copy=_db(10, citext="1.6")))
    assert diffs.extensions == (ExtensionDifference("app / app_copy", "citext", None, "1.6"),)
    assert diffs.unknown == ()


def test_what_was_not_recorded_or_read_is_said_and_not_a_difference() -> None:
    old: dict[str, Any] = {"target": {"settings": {"work_mem": "4MB"}}}  # before #14
    new = _header(app=_db(10, pg_trgm="1.6"))
    for base, cand, side in (
        (old, new, "baseline's"),
        (new, old, "candidate's"),
        (old, old, "either"),
    ):
        diffs = target_differences(base, cand)
        assert not diffs
        assert len(diffs.unknown) == 1
        assert "not recorded" in diffs.unknown[0]
        assert side in diffs.unknown[0]
    unread = _header(
        app={"size_bytes": None, "extensions": None, "error": "cannot connect: denied"},
        other=_db(10),
    )
    diffs = target_differences(unread, _header(app=_db(10, pg_trgm="1.6"), more=_db(10)))
    assert not diffs
    assert diffs.unknown == (
        "database(s) used on the baseline only, not compared: other",
        "database(s) used on the candidate only, not compared: more",
        "extensions of database app not compared (baseline: cannot connect: denied)",
        "size of database app not compared (not readable on one side)",
    )
    # a malformed member is unknown, not a crash
    assert databases_from_header({"databases": {"app": 3}}) is not None
    assert target_differences({"databases": {"app": 3}}, new).unknown


def test_results_header_reads_files_without_databases() -> None:
    header = ResultsHeader.from_json({"workload_id": "w"})
    assert header.databases is None
    assert header.to_json()["databases"] is None
    recorded = ResultsHeader.from_json({"workload_id": "w", "databases": {"app": _db(8)}})
    assert recorded.to_json()["databases"] == {"app": _db(8)}


@pytest.fixture
def database_pair(pg16: Cluster, pg18: Cluster) -> Iterator[str]:
    """One new database on each server, of the same name (dropped afterwards)."""
    name = f"contents_{uuid.uuid4().hex[:8]}"
    for cluster in (pg16, pg18):
        cluster.psql(f"CREATE DATABASE {name}")
    yield name
    for cluster in (pg16, pg18):
        cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.pg(">=16")
def test_replay_records_extensions_and_sizes_and_compare_lists_the_differences(
    pg16: Cluster, pg18: Cluster, database_pair: str, tmp_path: Path
) -> None:
    db = database_pair
    available = pg18.psql("SELECT name FROM pg_available_extensions WHERE name = 'pg_trgm'", db)
    if available != "pg_trgm":
        pytest.skip("pg_trgm is not installed with PostgreSQL 18 here")
    # the candidate has pg_trgm and ~35 MB more data; the baseline neither
    pg18.psql(
        "CREATE EXTENSION pg_trgm; CREATE TABLE pad AS "
        "SELECT g AS id, repeat('x', 200) AS filler FROM generate_series(1, 150000) g",
        db,
    )
    trgm = pg18.psql("SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm'", db)
    sql = "SELECT 1"
    workload = write_workload(
        tmp_path / "w.pgtw",
        [simple("s1", 0, 1000, sql)],
        database=db,
        classes=[QueryClass(f"fp:{sql}", sql, True, 1)],
    )
    settings = ReplaySettings(max_speed=True, sync=SyncMode.NONE)
    # the baseline's DSN names the database; the candidate's another (read over a
    # second connection)
    replay_workload(workload, tmp_path / "base.pgtr", pg16.dsn(db), settings)
    replay_workload(workload, tmp_path / "cand.pgtr", pg18.dsn("postgres"), settings)

    base = read_results(tmp_path / "base.pgtr").header["databases"]
    cand = read_results(tmp_path / "cand.pgtr").header["databases"]
    assert set(base) == set(cand) == {db}  # the database the sessions used only
    assert "plpgsql" in base[db]["extensions"] and "pg_trgm" not in base[db]["extensions"]
    assert cand[db]["extensions"]["pg_trgm"] == trgm
    assert cand[db]["size_bytes"] > base[db]["size_bytes"] + 30 * 1024 * 1024

    c = compare_files(tmp_path / "base.pgtr", tmp_path / "cand.pgtr")
    assert c.targets is not None
    assert ExtensionDifference(db, "pg_trgm", None, trgm) in c.targets.extensions
    assert [d.database for d in c.targets.sizes] == [db]
    assert c.targets.unknown == ()
    noise = noise_lines(c)
    assert any(
        f"pg_trgm {trgm} is installed in database {db} on the candidate only" in line
        for line in noise
    )
    assert any(f"database {db}: " in line and "cache" in line for line in noise)
    data = json.loads(to_json(c))
    assert {"database": db, "name": "pg_trgm", "baseline": None, "candidate": trgm} in data[
        "targets"
    ]["extensions"]
    assert data["targets"]["sizes"][0]["database"] == db
    assert f"extension pg_trgm {trgm}" in to_markdown(c)
    assert f"extension pg_trgm {trgm}" in to_html(c, version="test")


def test_data_checksums_and_the_io_method_are_listed_between_16_and_18(
    pg16: Cluster, pg18: Cluster
) -> None:
    """initdb of 18 turns data checksums on, and 18 reads through I/O workers: both make
    reads that miss shared buffers cost more on 18 than on 16, whatever the query."""
    headers = [{"target": inspect_target(c.dsn()).to_json()} for c in (pg16, pg18)]
    diffs = {d.name: (d.baseline, d.candidate) for d in target_differences(*headers).settings}
    assert diffs["data_checksums"] == ("off", "on")
    assert diffs["io_method"] == (None, "worker")
