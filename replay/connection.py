"""The asyncpg edge: connecting to the target and sending statements faithfully.

asyncpg encodes parameters in the binary format of the type the server inferred,
but a captured workload holds every parameter as the text the server logged. We
register pass-through *text* codecs for every type on each replay connection, so
a Bind carries the logged strings in text format and the server parses them with
its own input functions, exactly as it did for the original (libpq) client:
numeric precision, time zones, arrays, json and user types survive untouched, and
a value the server rejects fails with the server's own SQLSTATE. Result columns
come back as text and are dropped at once; only the command tag is kept.

Extended-protocol statements go through asyncpg's protocol layer directly (the
public API has no "prepare named, bind text, keep only the tag" call): a named
statement is parsed once per connection and then only bound and executed, as the
original client did; an unnamed one is sent as Parse/Bind/Execute/Sync every time.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from capture.fields import field_dict
from replay.protocol import IDLE, WireChannel, extended_messages, query_message

TypeEntry = tuple[int, str, str]
"""(oid, name, schema) of a server data type."""

TYPE_CATALOG_SQL = """
SELECT t.oid::int, t.typname::text, n.nspname::text
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype <> 'p'
"""

KEY_SETTINGS = (
    "server_version",
    "max_connections",
    "shared_buffers",
    "work_mem",
    "effective_cache_size",
    "synchronous_commit",
    "fsync",
    "jit",
    "max_parallel_workers_per_gather",
    "random_page_cost",
    "TimeZone",
    "DateStyle",
)

_FORGETS = re.compile(r"\b(?:deallocate|discard)\b", re.IGNORECASE)
"""Simple statements that may drop prepared statements."""

_COUNTED_TAGS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "SELECT", "MERGE", "FETCH", "MOVE", "COPY"}
)


def _rows_of_tag(status: str | bytes | None) -> int:
    if status is None:
        return -1
    if isinstance(status, bytes):
        status = status.decode("utf-8", "replace")
    head, _, count = status.rpartition(" ")
    if head and count.isdigit() and head.split(" ", 1)[0] in _COUNTED_TAGS:
        return int(count)
    return -1


_TAG_ROWS: dict[str | bytes | None, int] = {}
"""Command tags seen so far and their row counts (a replay sees few distinct tags)."""
_TAG_ROWS_MAX = 4096


def rows_from_status(status: str | bytes | None) -> int:
    """Rows affected/returned according to a command tag, or -1 when it has no count."""
    rows = _TAG_ROWS.get(status)
    if rows is None:
        rows = _rows_of_tag(status)
        if len(_TAG_ROWS) >= _TAG_ROWS_MAX:
            _TAG_ROWS.clear()
        _TAG_ROWS[status] = rows
    return rows


def _identity(value: Any) -> Any:
    return value


def install_text_codecs(conn: asyncpg.Connection, types: Sequence[TypeEntry]) -> set[int]:
    """Make every type in ``types`` travel as text, both ways, on ``conn``."""
    settings = conn._protocol.get_settings()
    for oid, name, schema in types:
        settings.add_python_codec(oid, name, schema, [], "scalar", _identity, _identity, "text")
    return {oid for oid, _, _ in types}


@dataclass(frozen=True, slots=True)
class ConnectSpec:
    """Where and as whom one replay connection logs in."""

    dsn: str
    user: str | None
    database: str | None
    application: str | None = None
    timeout_s: float = 10.0


@dataclass(slots=True)
class ReplayConnection:
    """One target connection replaying one original session."""

    conn: asyncpg.Connection
    text_oids: set[int]
    named: dict[str, tuple[str, Any]] = field(default_factory=dict)
    unnamed: collections.OrderedDict[str, Any] = field(default_factory=collections.OrderedDict)
    unnamed_cache_size: int = 64
    query: Any = None
    """The protocol's simple-query coroutine function: ``await query(sql, None)``."""
    channel: WireChannel | None = None
    """Sends statements without asyncpg (None: asyncpg sends them)."""
    prepared: dict[str, str] = field(default_factory=dict)
    """Statement names the channel prepared on this connection, with their SQL."""
    unsure: set[str] = field(default_factory=set)
    """Names whose prepared statement may or may not exist now (after an error, a
    DEALLOCATE or DISCARD): prepared again, after a Close, when next used."""
    codecs_pending: Sequence[TypeEntry] | None = None
    """Types whose text codecs are installed when asyncpg is first used: with a
    channel, asyncpg may never send anything on this connection."""

    def __post_init__(self) -> None:
        self.query = self.conn._protocol.query

    @classmethod
    async def open(
        cls, spec: ConnectSpec, types: Sequence[TypeEntry], *, direct_simple: bool = True
    ) -> ReplayConnection:
        """Connect; ``direct_simple``: send statements through a
        :class:`WireChannel` (else through asyncpg's query paths)."""
        settings = {"application_name": spec.application} if spec.application else {}
        conn = await asyncpg.connect(
            spec.dsn,
            user=spec.user,
            database=spec.database,
            timeout=spec.timeout_s,
            statement_cache_size=0,
            server_settings=settings,
        )
        channel = WireChannel.for_connection(conn) if direct_simple else None
        if channel is not None:
            return cls(conn=conn, text_oids=set(), channel=channel, codecs_pending=types)
        try:
            oids = install_text_codecs(conn, types)
        except BaseException:
            conn.terminate()
            raise
        return cls(conn=conn, text_oids=oids)

    def in_transaction(self) -> bool:
        """The session is inside a transaction block on the target (it may hold locks)."""
        channel = self.channel
        if channel is not None and channel.installed:
            return channel.transaction_status != IDLE
        return bool(self.conn.is_in_transaction())

    def is_closed(self) -> bool:
        channel = self.channel
        return bool(self.conn.is_closed()) or (channel is not None and channel.lost)

    def message(self, kind_execute: bool, sql: str, params: Any, name: Any) -> bytes:
        """The messages that send one statement on the channel, as the original
        client sent it: a named statement is parsed once and then only bound and
        executed, an unnamed one parsed every time, a simple one as a Query."""
        if not kind_execute:
            if self.prepared and _FORGETS.search(sql):
                self.unsure.update(self.prepared)
                self.prepared.clear()
            return query_message(sql)
        if not name:
            return extended_messages(sql, params or (), "", parse=True, close=False)
        if self.prepared.get(name) == sql:
            return extended_messages(sql, params or (), name, parse=False, close=False)
        close = name in self.prepared or name in self.unsure
        self.unsure.discard(name)
        self.prepared[name] = sql
        return extended_messages(sql, params or (), name, parse=True, close=close)

    def failed(self, name: Any) -> None:
        """A statement of ``name`` failed: whether it is still prepared is unknown."""
        if name and self.prepared.pop(name, None) is not None:
            self.unsure.add(name)

    def use_asyncpg(self) -> asyncpg.Connection:
        """The asyncpg connection, ready for asyncpg to send on: call this before
        any direct use of ``conn`` (the channel may hold its transport)."""
        channel = self.channel
        if channel is not None and channel.installed:
            channel.release()
        if self.codecs_pending is not None:
            self.text_oids = install_text_codecs(self.conn, self.codecs_pending)
            self.codecs_pending = None
        return self.conn

    async def execute(self, sql: str, params: Sequence[str | None], name: str | None) -> int:
        """Parse (if needed), bind text parameters, execute; rows from the command tag."""
        self.use_asyncpg()
        if name:
            entry = self.named.get(name)
            if entry is None or entry[0] != sql:
                state = await self._prepare(sql, named=True)
                self.named[name] = (sql, state)
            else:
                state = entry[1]
        else:
            state = self.unnamed.get(sql)
            if state is None:
                state = await self._prepare(sql, named=False)
                self.unnamed[sql] = state
                if len(self.unnamed) > self.unnamed_cache_size:
                    self.unnamed.popitem(last=False)
            else:
                self.unnamed.move_to_end(sql)
            state.mark_unprepared()  # Parse/Bind/Execute/Sync in one round trip
        try:
            _, status, _ = await self.conn._protocol.bind_execute(
                state, tuple(params), "", 0, True, None
            )
        except asyncpg.PostgresError:
            if not name:
                self.unnamed.pop(sql, None)
            raise
        return rows_from_status(status)

    async def _prepare(self, sql: str, *, named: bool) -> Any:
        try:
            state = await self.conn._get_statement(sql, None, named=named, use_cache=False)
        except (asyncpg.UnsupportedClientFeatureError, asyncpg.InternalClientError):
            # asyncpg met a type created during the replay (a composite, say) and
            # cannot build a codec for it: make every such type text, then retry.
            await self._refresh_types()
            return await self.conn._get_statement(sql, None, named=named, use_cache=False)
        types = (*state._get_parameters(), *(a.type for a in state._get_attributes()))
        if any(t.oid not in self.text_oids for t in types):
            # A type created during the replay (an enum, a domain): make it text too
            # and prepare again so the statement picks the codec up.
            await self._refresh_types()
            state = await self.conn._get_statement(sql, None, named=named, use_cache=False)
        return state

    async def _refresh_types(self) -> None:
        rows = await self.conn.fetch(TYPE_CATALOG_SQL)
        new = [(int(r[0]), str(r[1]), str(r[2])) for r in rows if int(r[0]) not in self.text_oids]
        self.text_oids |= install_text_codecs(self.conn, new)

    async def close(self, timeout_s: float = 5.0) -> None:
        channel = self.channel
        if channel is not None and (channel.busy or channel.lost or channel.abandoned):
            self.conn.terminate()  # a statement in flight (cancelled replay) or gone
            return
        try:
            if channel is not None and channel.installed:
                channel.release()  # asyncpg says goodbye (Terminate) on its own protocol
            await self.conn.close(timeout=timeout_s)
        except Exception:
            self.conn.terminate()


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """Identity of a replay target, read before the replay starts."""

    host: str
    port: int | None
    database: str
    user: str
    server_version: str
    settings: Mapping[str, str]
    types: tuple[TypeEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return field_dict(self, exclude=("types",), settings=dict(self.settings))


async def probe_target(dsn: str, timeout_s: float = 10.0) -> TargetInfo:
    """Connect once to read the target's identity, key settings and type catalog."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s, statement_cache_size=0)
    try:
        row = await conn.fetchrow("SELECT current_database(), current_user")
        settings = {
            r[0]: r[1]
            for r in await conn.fetch(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings "
                "WHERE name = any($1::text[])",
                list(KEY_SETTINGS),
            )
        }
        types = tuple((int(r[0]), str(r[1]), str(r[2])) for r in await conn.fetch(TYPE_CATALOG_SQL))
        addr = conn._addr
        port: int | None
        if isinstance(addr, tuple):
            host, port = str(addr[0]), int(addr[1])
        else:
            path = str(addr)
            host = path.rsplit("/", 1)[0]
            suffix = path.rsplit(".", 1)[-1]
            port = int(suffix) if suffix.isdigit() else None
        return TargetInfo(
            host=host,
            port=port,
            database=str(row[0]),
            user=str(row[1]),
            server_version=settings.get("server_version", ""),
            settings=settings,
            types=types,
        )
    finally:
        await conn.close()
