"""Helpers shared by the replay tests (this module holds no tests itself)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capture.records import QueryClass, Session, Statement, StatementKind
from capture.workload import Workload, WorkloadWriter, read_workload
from pgtraffic.servers import Cluster
from replay.results import Results, read_results
from replay.runner import ReplaySettings, replay_workload
from replay.sync import SyncMode

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def simple(
    session: str, seq: int, offset_us: int, sql: str, sqlstate: str | None = None
) -> Statement:
    return Statement(
        session, seq, offset_us, StatementKind.SIMPLE, sql, f"fp:{sql[:40]}", sqlstate=sqlstate
    )


def execute(
    session: str,
    seq: int,
    offset_us: int,
    sql: str,
    params: Sequence[str | None],
    name: str = "",
    sqlstate: str | None = None,
) -> Statement:
    return Statement(
        session,
        seq,
        offset_us,
        StatementKind.EXECUTE,
        sql,
        f"fp:{sql[:40]}",
        params=tuple(params),
        name=name,
        sqlstate=sqlstate,
    )


def write_workload(
    path: Path,
    statements: Iterable[Statement],
    *,
    user: str = "postgres",
    database: str = "postgres",
    connect: dict[str, int] | None = None,
    disconnect: dict[str, int] | None = None,
    classes: Iterable[QueryClass] = (),
) -> Workload:
    """A workload file from statements (any order); sessions derived from them."""
    stmts = sorted(statements, key=lambda s: (s.offset_us, s.session, s.seq))
    counts: dict[str, int] = {}
    for s in stmts:
        counts[s.session] = counts.get(s.session, 0) + 1
    for sid in connect or {}:
        counts.setdefault(sid, 0)
    writer = WorkloadWriter(path)
    for s in stmts:
        writer.write(s)
    end = max([s.offset_us for s in stmts] + list((disconnect or {}).values()) + [0])
    writer.close(
        capture_start=START,
        capture_end=START + dt.timedelta(microseconds=end),
        sessions=[
            Session(
                id=sid,
                user=user,
                database=database,
                application=f"app-{sid}",
                connect_us=(connect or {}).get(sid),
                disconnect_us=(disconnect or {}).get(sid),
                statements=n,
            )
            for sid, n in counts.items()
        ],
        classes=list(classes),
    )
    return read_workload(path)


def replay(
    workload: Workload,
    cluster: Cluster,
    out: Path,
    *,
    speed: float = 1.0,
    max_speed: bool = False,
    jump_idle: bool = False,
    workers: int = 1,
    **kwargs: Any,
) -> Results:
    """Replay the way the CLI does (replay.runner.replay_workload), and load the results.

    Sessions are independent (``sync=SyncMode.NONE``) unless ``sync`` is given: the
    tests written before causal sync assume so."""
    kwargs.setdefault("sync", SyncMode.NONE)
    settings = ReplaySettings(
        speed=speed, max_speed=max_speed, jump_idle=jump_idle, workers=workers, **kwargs
    )
    replay_workload(workload, out, cluster.dsn(), settings)
    return read_results(out)


def outcomes(results: Results) -> dict[tuple[str, int], tuple[str | None, str | None]]:
    """(session, index) -> (replay sqlstate, original sqlstate); asserts no duplicates."""
    out: dict[tuple[str, int], tuple[str | None, str | None]] = {}
    for session, index, _, _, _, _, _, state, orig in results.rows():
        assert (session, index) not in out, f"statement {session}#{index} recorded twice"
        out[(session, index)] = (state, orig)
    return out


def replayable_keys(workload: Workload) -> set[tuple[str, int]]:
    return {(s.session, s.seq) for s in workload.statements() if s.kind.replayable}


def run_quiet(cluster: Cluster, tool: str, *args: str) -> None:
    """Run a client tool with statement and connection logging off (setup, not workload)."""
    env = cluster.env()
    env["PGOPTIONS"] = (
        "-c log_statement=none -c log_min_duration_statement=-1 -c log_connections=off "
        "-c log_disconnections=off -c log_min_error_statement=panic"
    )
    subprocess.run(
        [str(cluster.installation.tool(tool)), *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )


def fetch(cluster: Cluster, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(cluster.dsn(), server_settings={"log_statement": "none"})
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(go())


def environ_without_pg() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def run_cli(
    cmd: Sequence[str],
    *args: str,
    timeout: float = 120,
    columns: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (``pgtraffic_cmd``) with ``args``, capturing its text output, never
    raising on its exit code; ``columns`` sets the terminal width its tables wrap at."""
    environ = dict(os.environ if env is None else env)
    if columns is not None:
        environ["COLUMNS"] = str(columns)
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environ,
        cwd=cwd,
    )
