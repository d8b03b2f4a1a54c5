"""The guards a replay passes before it sends anything: which server it is, whether it
may be written to, whether its logins exist, and which statements ``--read-only`` keeps.

A replay runs every captured write. These checks stop the accidents users have had:

- replaying onto the capture's own source server (same ``system_identifier`` as the
  one ``pgtraffic capture --source-dsn`` recorded in the workload header);
- writing onto a server nobody prepared as a replay target: a server is *prepared*
  when ``pgtraffic.replay_target`` is ``on`` for the target database (``ALTER
  DATABASE ... SET``, ``ALTER SYSTEM SET`` or postgresql.conf; pgtraffic's own
  throwaway servers set it), otherwise the CLI asks, or needs ``--allow-writes``;
- logins (user@database after ``--map-*``) that do not exist on the target, found
  from ``pg_roles`` and ``pg_database`` rather than from thousands of refused
  connections;
- ``--read-only``: only the query classes that cannot write (by pglast's parse,
  :mod:`capture.effects`) are sent, and every connection starts with
  ``default_transaction_read_only=on``, so a write the parse missed (a view over a
  function that writes) fails with SQLSTATE 25006 instead of writing.

Parsing is pure; the one coroutine that reads a server is :func:`read_identity`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import pglast
from pglast import ast

from capture.effects import classify
from capture.fields import field_dict
from capture.records import QueryClass
from replay.connection import connect, resolve_target

MARKER = "pgtraffic.replay_target"
"""The setting that marks a server (or one database) as prepared for replays."""
READ_ONLY_SETTINGS = {"default_transaction_read_only": "on"}
"""Startup settings of every ``--read-only`` replay connection (RESET and DISCARD ALL
go back to them, since they are the session's defaults)."""

_IDENTITY_SQL = """
SELECT current_setting('server_version'),
       current_setting('cluster_name'),
       (SELECT setting FROM pg_settings WHERE name = 'data_directory'),
       current_database(),
       pg_database_size(current_database()),
       pg_is_in_recovery(),
       coalesce(current_setting($1, true), '')
"""
_SYSTEM_ID_SQL = "SELECT system_identifier::text FROM pg_control_system()"


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What tells one PostgreSQL server from another, read over a connection.

    ``system_identifier`` is set by initdb and kept by physical copies (replicas,
    restored base backups); the rest says where the server is and what it holds.
    """

    system_identifier: str | None
    server_version: str
    host: str | None
    port: int | None
    data_directory: str | None = None
    """None when the role may not read it (superuser or pg_read_all_settings)."""
    cluster_name: str | None = None
    database: str | None = None
    database_size: int | None = None
    """Bytes of the database connected to."""
    in_recovery: bool = False
    """A standby: every write fails there."""
    prepared: bool = False
    """``pgtraffic.replay_target`` is on: prepared as a replay target."""

    def to_json(self) -> dict[str, Any]:
        return field_dict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ServerIdentity:
        port = obj.get("port")
        size = obj.get("database_size")
        return cls(
            system_identifier=_text(obj.get("system_identifier")),
            server_version=str(obj.get("server_version") or ""),
            host=_text(obj.get("host")),
            port=None if port is None else int(port),
            data_directory=_text(obj.get("data_directory")),
            cluster_name=_text(obj.get("cluster_name")),
            database=_text(obj.get("database")),
            database_size=None if size is None else int(size),
            in_recovery=bool(obj.get("in_recovery", False)),
            prepared=bool(obj.get("prepared", False)),
        )

    def describe(self) -> str:
        """One line for a terminal: where, which version, which system, how big."""
        where = f"{self.host or '?'}:{self.port}" if self.port else str(self.host or "?")
        parts = [where, f"PostgreSQL {self.server_version}"]
        if self.cluster_name:
            parts.append(f"cluster {self.cluster_name}")
        parts.append(f"system_identifier {self.system_identifier or 'unknown'}")
        if self.data_directory:
            parts.append(f"data directory {self.data_directory}")
        if self.database is not None:
            size = "" if self.database_size is None else f" ({_size(self.database_size)})"
            parts.append(f"database {self.database}{size}")
        if self.in_recovery:
            parts.append("a standby (read only)")
        return ", ".join(parts)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def _address(conn: asyncpg.Connection) -> tuple[str | None, int | None]:
    addr = conn._addr
    if isinstance(addr, tuple):
        return str(addr[0]), int(addr[1])
    path = str(addr)
    suffix = path.rsplit(".", 1)[-1]
    return path.rsplit("/", 1)[0], int(suffix) if suffix.isdigit() else None


async def read_identity(conn: asyncpg.Connection) -> ServerIdentity:
    """The identity of the server ``conn`` is connected to (reads only)."""
    row = await conn.fetchrow(_IDENTITY_SQL, MARKER)
    assert row is not None
    try:
        system_id = await conn.fetchval(_SYSTEM_ID_SQL)
    except asyncpg.PostgresError:  # execute revoked from this role: unknown
        system_id = None
    host, port = _address(conn)
    return ServerIdentity(
        system_identifier=None if system_id is None else str(system_id),
        server_version=str(row[0]),
        host=host,
        port=port,
        data_directory=_text(row[2]),
        cluster_name=_text(row[1]),
        database=str(row[3]),
        database_size=int(row[4]),
        in_recovery=bool(row[5]),
        prepared=str(row[6]).lower() in ("on", "true", "yes", "1"),
    )


@dataclass(frozen=True, slots=True)
class MissingLogin:
    """A user@database the workload logs in as that the target cannot accept."""

    user: str
    database: str
    sessions: int
    reason: str
    """What is wrong, as a sentence: ``role "ghost" does not exist``."""

    def to_json(self) -> dict[str, Any]:
        return field_dict(self)

    def describe(self) -> str:
        return f"{self.user}@{self.database}: {self.reason} ({self.sessions} sessions)"


async def missing_logins(
    conn: asyncpg.Connection,
    logins: Mapping[tuple[str, str], int],
    created: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset()),
) -> tuple[MissingLogin, ...]:
    """The logins (``(user, database) -> sessions``) the target lacks, from its
    catalogs; roles and databases in ``created`` (the workload makes them) count as there."""
    users = sorted({u for u, _ in logins})
    databases = sorted({d for _, d in logins})
    roles = {
        str(r[0]): bool(r[1])
        for r in await conn.fetch(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = any($1::text[])", users
        )
    }
    dbs = {
        str(r[0]): bool(r[1])
        for r in await conn.fetch(
            "SELECT datname, datallowconn FROM pg_database WHERE datname = any($1::text[])",
            databases,
        )
    }
    out = []
    for (user, database), sessions in sorted(logins.items()):
        reason = _login_problem(user, database, roles, dbs, created)
        if reason is not None:
            out.append(MissingLogin(user, database, sessions, reason))
    return tuple(out)


def _login_problem(
    user: str,
    database: str,
    roles: Mapping[str, bool],
    dbs: Mapping[str, bool],
    created: tuple[frozenset[str], frozenset[str]],
) -> str | None:
    problems = []
    if user not in created[0]:
        if user not in roles:
            problems.append(f'role "{user}" does not exist')
        elif not roles[user]:
            problems.append(f'role "{user}" is not permitted to log in (NOLOGIN)')
    if database not in created[1]:
        if database not in dbs:
            problems.append(f'database "{database}" does not exist')
        elif not dbs[database]:
            problems.append(f'database "{database}" does not allow connections')
    return "; ".join(problems) or None


def created_names(classes: Iterable[QueryClass]) -> tuple[frozenset[str], frozenset[str]]:
    """(roles, databases) the workload's own statements create (CREATE ROLE/USER/DATABASE)."""
    roles: set[str] = set()
    databases: set[str] = set()
    for qc in classes:
        text = qc.normalized.lstrip().upper()
        if not qc.parsed or not text.startswith("CREATE"):
            continue
        try:
            tree = pglast.parse_sql(qc.normalized)
        except Exception:  # pglast raises ParseError, and a few others on odd input
            continue
        for raw in tree:
            stmt = raw.stmt
            if isinstance(stmt, ast.CreateRoleStmt) and stmt.role:
                roles.add(stmt.role)
            elif isinstance(stmt, ast.CreatedbStmt) and stmt.dbname:
                databases.add(stmt.dbname)
    return frozenset(roles), frozenset(databases)


_MODE_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})


def _read_write_option(options: tuple[Any, ...] | None) -> bool:
    """A transaction mode list that does not clearly say READ ONLY on transaction_read_only."""
    for opt in options or ():
        if getattr(opt, "defname", None) != "transaction_read_only":
            continue
        arg = getattr(opt, "arg", None)
        value = getattr(getattr(arg, "val", None), "ival", None)
        if value != 1:
            return True
    return False


def lifts_read_only(sql: str) -> bool:
    """Whether ``sql`` may turn the read-only guard off: SET (or RESET) of
    ``default_transaction_read_only`` / ``transaction_read_only``, SET SESSION
    CHARACTERISTICS AS TRANSACTION, or BEGIN / START / SET TRANSACTION READ WRITE.
    Unparsable text may do anything."""
    try:
        tree = pglast.parse_sql(sql)
    except Exception:  # pglast raises ParseError, and a few others on odd input
        return True
    for raw in tree:
        stmt = raw.stmt
        if isinstance(stmt, ast.VariableSetStmt):
            name = (stmt.name or "").lower()
            if name in _MODE_SETTINGS or name == "session characteristics":
                return True
            if name == "transaction" and _read_write_option(stmt.args):
                return True
            if stmt.name is None:  # RESET ALL: back to the startup settings, still on
                continue
        elif isinstance(stmt, ast.TransactionStmt) and _read_write_option(stmt.options):
            return True
    return False


@dataclass(frozen=True, slots=True)
class WriteClasses:
    """The workload's query classes that may write (or may lift the read-only guard)."""

    writes: Mapping[str, int]
    """Fingerprint -> statements, classes that may write by pglast's parse."""
    guard_lifters: Mapping[str, int]
    """Fingerprint -> statements, classes that would turn read-only off (not writes)."""

    @property
    def statements(self) -> int:
        return sum(self.writes.values())

    @property
    def skipped_by_read_only(self) -> frozenset[str]:
        """The fingerprints ``--read-only`` does not send."""
        return frozenset(self.writes) | frozenset(self.guard_lifters)


def write_classes(classes: Iterable[QueryClass]) -> WriteClasses:
    """Which classes may write, by their normalized text (literals never change that)."""
    writes: dict[str, int] = {}
    lifters: dict[str, int] = {}
    for qc in classes:
        if not qc.parsed or classify(qc.normalized).may_write:
            writes[qc.fingerprint] = qc.count
        elif lifts_read_only(qc.normalized):
            lifters[qc.fingerprint] = qc.count
    return WriteClasses(writes, lifters)


def server_identity(dsn: str, timeout_s: float = 10.0) -> ServerIdentity:
    """Connect to ``dsn`` once and read its identity (for ``capture --source-dsn``)."""

    info = resolve_target(dsn)  # a malformed DSN: a UsageError naming the part

    async def go() -> ServerIdentity:
        conn = await connect(info, timeout_s=timeout_s, fallback_application="pgtraffic")
        try:
            return await read_identity(conn)
        finally:
            await conn.close()

    return asyncio.run(go())
