"""What each database the replay uses holds: its extensions and its size.

Two targets alike in version and settings can still differ in what they hold: an
extension installed on one only (statements that use it fail on the other, or are
planned without its operators and index types), another version of it, or a
database grown by earlier replays or restored from a bigger dump (less of it fits in
cache). The replay reads both before it starts and records them in the results
header (``databases``); compare lists what differs (``pgtraffic/compare/targets.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from replay.connection import connect
from replay.conninfo import ConnInfo

MAX_DATABASES = 16
"""Databases whose extensions are read, one connection each (the others are
recorded as not read); sizes are read for all, in one query."""

_SIZES_SQL = """
SELECT datname,
       CASE WHEN has_database_privilege(oid, 'CONNECT')
                 OR pg_has_role('pg_read_all_stats', 'MEMBER')
            THEN pg_database_size(oid) END
FROM pg_database
WHERE datname = any($1::text[])
"""
"""pg_database_size of each database, NULL where the user may not read it (it
raises without CONNECT or pg_read_all_stats)."""

_EXTENSIONS_SQL = "SELECT extname, extversion FROM pg_extension ORDER BY 1"

_CONNECT_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class DatabaseContents:
    """One database of the target, as the replay found it before it started."""

    size_bytes: int | None
    """``pg_database_size`` (None: not allowed to read it, or not recorded)."""
    extensions: Mapping[str, str] | None
    """Installed extension -> its version (None: could not be read, see ``error``)."""
    error: str | None = None
    """Why the extensions were not read."""

    def to_json(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size_bytes,
            "extensions": None if self.extensions is None else dict(self.extensions),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, obj: object) -> DatabaseContents:
        """Read one entry of the header's ``databases``; a malformed member is unknown."""
        if not isinstance(obj, Mapping):
            return cls(None, None, "not recorded")
        size = obj.get("size_bytes")
        extensions = obj.get("extensions")
        error = obj.get("error")
        return cls(
            size if isinstance(size, int) and not isinstance(size, bool) else None,
            {str(k): str(v) for k, v in extensions.items()}
            if isinstance(extensions, Mapping)
            else None,
            None if error is None else str(error),
        )


def databases_from_header(header: Mapping[str, Any]) -> dict[str, DatabaseContents] | None:
    """The header's ``databases`` (None: the results file did not record them, as files
    written before pgtraffic read them)."""
    databases = header.get("databases")
    if not isinstance(databases, Mapping):
        return None
    return {str(name): DatabaseContents.from_json(obj) for name, obj in databases.items()}


async def _extensions(conn: asyncpg.Connection) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in await conn.fetch(_EXTENSIONS_SQL)}


async def _extensions_elsewhere(
    dsn: str | ConnInfo, database: str, timeout_s: float
) -> tuple[dict[str, str] | None, str | None]:
    try:
        conn = await connect(
            dsn, database=database, timeout_s=timeout_s, fallback_application="pgtraffic"
        )
    except _CONNECT_ERRORS as exc:
        return None, f"cannot connect: {exc}"
    try:
        return await _extensions(conn), None
    except _CONNECT_ERRORS as exc:
        return None, f"cannot read pg_extension: {exc}"
    finally:
        await conn.close()


async def read_databases(
    conn: asyncpg.Connection,
    names: Iterable[str],
    dsn: str | ConnInfo,
    timeout_s: float = 10.0,
) -> dict[str, DatabaseContents]:
    """Size and extensions of each database in ``names`` that the target has.

    ``conn`` is already connected (to one of them or not); the others are reached
    with the same login, ``dsn``'s user, one short connection each. A database the
    target lacks is left out (the check for missing logins names it)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    sizes = {str(r[0]): r[1] for r in await conn.fetch(_SIZES_SQL, wanted)}
    current = str(await conn.fetchval("SELECT current_database()"))
    out: dict[str, DatabaseContents] = {}
    for i, name in enumerate(n for n in wanted if n in sizes):
        size = None if sizes[name] is None else int(sizes[name])
        extensions: dict[str, str] | None
        error: str | None = None
        if name == current:
            extensions = await _extensions(conn)
        elif i >= MAX_DATABASES:
            extensions, error = None, f"not read (the replay uses over {MAX_DATABASES} databases)"
        else:
            extensions, error = await _extensions_elsewhere(dsn, name, timeout_s)
        out[name] = DatabaseContents(size, extensions, error)
    return out
