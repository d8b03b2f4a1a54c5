"""Relations the target ties to others, where ``--sync rows`` cannot order by row.

A write to a table with a foreign key checks rows of another table; one with a
trigger or rule may write anything; a view or a partitioned (or inherited)
table shares its rows with relations of other names; a row security policy may
read other tables. The capture knows of such ties only when the log holds the
DDL that made them (capture.effects.couplings); this check asks the target
before a replay, and a replay in ``rows`` mode whose workload touches a tied
relation keeps ``commit`` order instead, saying which relations and why.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

_TIED_SQL = """
SELECT DISTINCT c.relname AS name, t.why
FROM (
    SELECT conrelid AS oid, 'foreign key ' || conname AS why
    FROM pg_constraint WHERE contype = 'f'
    UNION ALL
    SELECT confrelid, 'referenced by foreign key ' || conname
    FROM pg_constraint WHERE contype = 'f'
    UNION ALL
    SELECT tgrelid, 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT ev_class, 'rule ' || rulename FROM pg_rewrite WHERE rulename <> '_RETURN'
    UNION ALL
    SELECT inhrelid, 'partition or child table' FROM pg_inherits
    UNION ALL
    SELECT inhparent, 'partitioned or parent table' FROM pg_inherits
    UNION ALL
    SELECT oid, 'view' FROM pg_class WHERE relkind IN ('v', 'm')
    UNION ALL
    SELECT polrelid, 'row security policy ' || polname FROM pg_policy
) t
JOIN pg_class c ON c.oid = t.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND c.relname = any($1::text[])
ORDER BY 1, 2
"""


async def tied_relations(conn: asyncpg.Connection, relations: Iterable[str]) -> tuple[str, ...]:
    """``"name (why)"`` for each relation among ``relations`` that the target ties to
    others, in the database ``conn`` is connected to."""
    wanted = sorted({r.strip('"').rsplit(".", 1)[-1] for r in relations if r})
    if not wanted:
        return ()
    rows = await conn.fetch(_TIED_SQL, wanted)
    return tuple(f"{r['name']} ({r['why']})" for r in rows)


def rows_fallback_note(tied: tuple[str, ...]) -> str:
    """Why a ``--sync rows`` replay keeps ``commit`` order."""
    shown = ", ".join(tied[:6]) + (f" and {len(tied) - 6} more" if len(tied) > 6 else "")
    return (
        f"--sync rows kept commit order: the target ties relations the workload uses to "
        f"others ({shown}), so a write there may check or change rows no key names"
    )
