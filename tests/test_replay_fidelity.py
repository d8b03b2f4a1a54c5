"""Replay fidelity: text parameters reach the server unchanged, through real protocol paths."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from pgtraffic.servers import Cluster, Profile
from tests.replay_helpers import (
    execute,
    outcomes,
    replay,
    replayable_keys,
    simple,
    write_workload,
)

pytestmark = pytest.mark.pg(">=16")

SETUP = "CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TYPE pair AS (a int, b text)"

# (column type, logged text values): each value is bound as text and must be stored
# exactly as the server's own input function reads it.
TYPED_VALUES: list[tuple[str, list[str | None]]] = [
    ("int4", ["42", "-7", None]),
    ("int8", ["9223372036854775807"]),
    ("numeric", ["3.14159265358979323846264338327950288419716939937510", "1e-20"]),
    ("float8", ["0.1", "1e-300", "-Infinity"]),
    ("text", ["it's\nmulti 'line' ✓ \\ back", ""]),
    ("varchar(10)", ["abc"]),
    ("bool", ["t", "false", "yes"]),
    ("date", ["2024-02-29"]),
    ("timestamptz", ["2024-01-01 10:00:00.123456+05:30", "epoch"]),
    ("timestamp", ["2024-01-01 10:00:00.123456"]),
    ("interval", ["1 day 02:03:04.5", "P1Y2M"]),
    ("json", ['{"b": 1,  "a": [1, 2]}']),
    ("jsonb", ['{"b":1,"a":[1,2]}']),
    ("int4[]", ["{1,NULL,3}"]),
    ("text[]", ['{"a b",c,"d\\"e"}']),
    ("uuid", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
    ("bytea", ["\\x00ff10"]),
    ("inet", ["192.168.1.5/24"]),
    ("point", ["(1.5,2)"]),
    ("int4range", ["[1,10)"]),
    ("mood", ["happy"]),
    ("pair", ['(1,"x y")']),
]


@pytest.fixture(params=[16, 18], ids=lambda m: f"pg{m}")
def target(request: pytest.FixtureRequest) -> Cluster:
    cluster: Cluster = request.getfixturevalue(f"pg{request.param}")
    return cluster


def _db(cluster: Cluster, name: str) -> None:
    cluster.psql(f"DROP DATABASE IF EXISTS {name}")
    cluster.psql(f"CREATE DATABASE {name}")


def test_text_parameters_round_trip(target: Cluster, tmp_path: Path) -> None:
    _db(target, "fid")
    stmts = [simple("a", 0, 0, SETUP)]
    seq = 1
    for n, (typ, _) in enumerate(TYPED_VALUES):
        stmts.append(simple("a", seq, seq * 1000, f"CREATE TABLE v{n} (id int, v {typ})"))
        seq += 1
    for n, (_, values) in enumerate(TYPED_VALUES):
        for i, value in enumerate(values):
            # named statement, prepared once and reused within the session
            stmts.append(
                execute(
                    "a",
                    seq,
                    seq * 1000,
                    f"INSERT INTO v{n} VALUES ($1, $2)",
                    [str(i), value],
                    name=f"ins{n}",
                )
            )
            seq += 1
    # the server, not the client, rejects bad input, with the original SQLSTATE
    stmts.append(
        execute(
            "a",
            seq,
            seq * 1000,
            "INSERT INTO v0 VALUES ($1, $2)",
            ["9", "notanint"],
            sqlstate="22P02",
        )
    )
    workload = write_workload(tmp_path / "w.pgtw", stmts, database="fid")
    results = replay(workload, target, tmp_path / "r.pgtr", max_speed=True)
    got = outcomes(results)
    assert set(got) == replayable_keys(workload)
    assert {k: v for k, v in got.items() if v[0] != v[1]} == {}

    for n, (typ, values) in enumerate(TYPED_VALUES):
        rows = _fetch_db(target, "fid", f"SELECT id, v::text FROM v{n} ORDER BY id")
        assert [r[0] for r in rows] == list(range(len(values))), typ
        for (_, text), value in zip(rows, values, strict=True):
            if value is None:
                assert text is None
                continue
            expected = _fetch_db(target, "fid", f"SELECT ($1::text)::{typ}::text", value)[0][0]
            assert text == expected, (typ, value, text, expected)
    # json keeps its text exactly: proof the value was not re-encoded on the way
    assert _fetch_db(target, "fid", "SELECT v::text FROM v11")[0][0] == '{"b": 1,  "a": [1, 2]}'


def _fetch_db(cluster: Cluster, db: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import asyncio

    import asyncpg

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(cluster.dsn(db))
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


def test_protocol_reaches_server_as_original(make_cluster: Any, tmp_path: Path) -> None:
    """Named: one parse under the original name, then bind/execute each time; unnamed:
    parse/bind/execute each time; simple: a plain statement. Checked in the target's
    own log."""
    cluster = make_cluster(
        16,
        Profile.TARGET,
        settings={"log_min_duration_statement": "0", "log_min_messages": "log"},
    )
    stmts = [simple("s", 0, 0, "SELECT 'simple-marker'; SELECT 2")]
    seq = 1
    for i in range(3):
        stmts.append(
            execute("s", seq, seq * 1000, "SELECT $1::int AS named_marker", [str(i)], name="P_1")
        )
        seq += 1
    for i in range(3):
        stmts.append(execute("s", seq, seq * 1000, "SELECT $1::text AS unnamed_marker", [f"v{i}"]))
        seq += 1
    workload = write_workload(tmp_path / "w.pgtw", stmts)
    results = replay(workload, cluster, tmp_path / "r.pgtr", max_speed=True)
    assert len(results) == 7
    assert list(results.records["rows"][1:]) == [1] * 6

    def read_log() -> str:
        return "\n".join(p.read_text() for p in cluster.log_files("*.log"))

    # the logging collector writes asynchronously: wait for the last statements
    deadline = time.monotonic() + 10
    log = read_log()
    while time.monotonic() < deadline and (
        "simple-marker" not in log or len(re.findall(r"execute <unnamed>", log)) < 3
    ):
        time.sleep(0.1)
        log = read_log()

    def count(pattern: str) -> int:
        return len(re.findall(pattern, log))

    assert count(r"statement: SELECT 'simple-marker'; SELECT 2") == 1
    named = "P_1"  # the original client's name
    assert count(rf"parse {named}: SELECT \$1::int AS named_marker") == 1
    assert count(rf"bind {named}: SELECT \$1::int AS named_marker") == 3
    assert count(rf"execute {named}: SELECT \$1::int AS named_marker") == 3
    assert count(r"bind <unnamed>: SELECT \$1::text AS unnamed_marker") == 3
    assert count(r"execute <unnamed>: SELECT \$1::text AS unnamed_marker") == 3
    # exactly libpq's messages: no extra Parse/Describe round trip
    assert count(r"parse <unnamed>: SELECT \$1::text AS unnamed_marker") == 3
    # parameters went as the logged text
    for i in range(3):
        assert f"$1 = 'v{i}'" in log
