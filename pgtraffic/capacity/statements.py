"""``pg_stat_statements`` over a step, where the target has it.

Read once before and once after each step (the I/O edge: :func:`snapshot`); the
deltas of the statements that ran (:func:`top_deltas`, pure) are what the step adds
to the report: calls, total and mean execution time, shared blocks read. When the
extension is missing, :func:`availability` says so and how to install it, and the
sweep goes on without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg

from pgtraffic.capacity.model import StatementDelta
from replay.conninfo import libpq_dsn

MARK = "/* pgtraffic-capacity */"
"""In the text of pgtraffic's own monitoring queries (after their SELECT: pg_stat_statements
drops a leading comment), so they are left out."""
TOP = 10

INSTALL_HINT = (
    "add pg_stat_statements to shared_preload_libraries (postgresql.conf, then restart the "
    "server; on Amazon RDS and Aurora, in the DB instance's parameter group, then reboot), "
    "then run CREATE EXTENSION pg_stat_statements in the target database"
)


@dataclass(frozen=True, slots=True)
class Counters:
    """One statement's cumulative pg_stat_statements counters."""

    query: str
    calls: int
    total_exec_ms: float
    shared_blks_read: int


Snapshot = Mapping[tuple[int, int, int], Counters]
"""pg_stat_statements keyed by (userid, dbid, queryid)."""


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    defaults = {"connect_timeout": "10", "fallback_application_name": "pgtraffic capacity"}
    return psycopg.connect(libpq_dsn(dsn, os.environ, defaults=defaults), autocommit=True)


def availability(dsn: str) -> str | None:
    """None when the target database has pg_stat_statements; else why not and what to do."""
    with _connect(dsn) as conn:
        row = conn.execute(
            f"SELECT {MARK} current_database(), "
            "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'), "
            "current_setting('shared_preload_libraries')"
        ).fetchone()
    assert row is not None
    database, created, preload = str(row[0]), bool(row[1]), str(row[2])
    if created and "pg_stat_statements" in preload:
        return None
    if "pg_stat_statements" in preload:
        return (
            f"pg_stat_statements is loaded but not created in database {database}: "
            "run CREATE EXTENSION pg_stat_statements there to see the top statements per step"
        )
    return f"pg_stat_statements is not installed on the target: {INSTALL_HINT}"


def snapshot(dsn: str, databases: Sequence[str]) -> Snapshot:
    """The counters of the statements run in ``databases`` (all when empty)."""
    with _connect(dsn) as conn:
        total = "total_exec_time" if conn.info.server_version >= 130000 else "total_time"
        where = ""
        params: tuple[object, ...] = ()
        if databases:
            where = "AND dbid IN (SELECT oid FROM pg_database WHERE datname = ANY(%s))"
            params = (list(databases),)
        rows = conn.execute(
            f"SELECT {MARK} userid::bigint, dbid::bigint, queryid, min(query), sum(calls), "
            f"sum({total}), sum(shared_blks_read) FROM pg_stat_statements "
            f"WHERE queryid IS NOT NULL AND query NOT LIKE '%%pgtraffic-capacity%%' {where} "
            "GROUP BY 1, 2, 3",
            params,
        ).fetchall()
    return {(_int(r[0]), _int(r[1]), _int(r[2])): _counters(r) for r in rows}


def _int(value: object) -> int:
    return int(str(value))


def _counters(row: Sequence[object]) -> Counters:
    return Counters(str(row[3]), _int(row[4]), float(str(row[5])), _int(row[6]))


def top_deltas(before: Snapshot, after: Snapshot, top: int = TOP) -> tuple[StatementDelta, ...]:
    """The statements that ran between the snapshots, most execution time first."""
    out = []
    for key, now in after.items():
        then = before.get(key)
        calls = now.calls - (then.calls if then else 0)
        if calls <= 0:  # did not run, or the counters were reset meanwhile
            continue
        out.append(
            StatementDelta(
                query=now.query,
                calls=calls,
                total_exec_ms=max(0.0, now.total_exec_ms - (then.total_exec_ms if then else 0)),
                shared_blks_read=max(
                    0, now.shared_blks_read - (then.shared_blks_read if then else 0)
                ),
            )
        )
    out.sort(key=lambda d: (-d.total_exec_ms, -d.calls))
    return tuple(out[:top])
