"""Which tables the workload reads have no planner statistics on the target.

``pg_restore`` leaves a database without statistics: until ``ANALYZE`` (or
autovacuum's, minutes later) runs, the planner guesses, and a replay measures those
guesses, not the server. Two targets restored at different times then differ by
whether autovacuum got to them yet. This check runs before a replay and names the
tables, so that the report can say so instead of a compare blaming the version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from capture.effects import effect_of
from capture.records import QueryClass

_UNANALYZED_SQL = """
SELECT n.nspname || '.' || c.relname AS name, c.relname AS bare
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND NOT EXISTS (SELECT 1 FROM pg_statistic s WHERE s.starelid = c.oid)
  AND (c.relname = any($1::text[]) OR n.nspname || '.' || c.relname = any($1::text[]))
  AND pg_relation_size(c.oid) > 0
ORDER BY 1
"""
"""Tables (also partitioned and materialized views) with data but no row in
``pg_statistic``: never analyzed since they were loaded. Empty tables are left out
(there is nothing to plan from)."""


@dataclass(frozen=True, slots=True)
class StatisticsGap:
    """Tables the workload touches that have no planner statistics on the target."""

    tables: tuple[str, ...]

    def warning(self) -> str:
        shown = ", ".join(self.tables[:8]) + (" ..." if len(self.tables) > 8 else "")
        return (
            f"{len(self.tables)} table(s) the workload uses have no planner statistics on "
            f"the target ({shown}): plans are guesses until ANALYZE runs. Run ANALYZE on the "
            "target after restoring, before replaying, on every target you will compare."
        )


def workload_relations(classes: Iterable[QueryClass]) -> frozenset[str]:
    """Relation names the workload's query classes read or write (as written in SQL,
    possibly schema-qualified)."""
    names: set[str] = set()
    for cls in classes:
        names.update(effect_of(cls.normalized, cls.parsed).relations)
    return frozenset(names)


async def statistics_gap(conn: asyncpg.Connection, relations: Iterable[str]) -> StatisticsGap:
    """The tables among ``relations`` that the target has no statistics for."""
    wanted = sorted({r.strip('"') for r in relations if r})
    if not wanted:
        return StatisticsGap(())
    rows = await conn.fetch(_UNANALYZED_SQL, wanted)
    return StatisticsGap(tuple(str(r["name"]) for r in rows))
