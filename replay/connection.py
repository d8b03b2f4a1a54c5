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
import os
import pwd
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg

from capture.fields import field_dict
from replay.conninfo import (
    ConnInfo,
    ConninfoError,
    Endpoint,
    PassEntry,
    build_conninfo,
    merge,
    parse_conninfo,
    parse_pgpass,
    parse_service,
)
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
    "data_checksums",
    "io_method",
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


# --- where to connect: the DSN, the environment and libpq's files ---------------------

SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")
"""Where a server's unix socket is looked for when no host is given: libpq has one
directory built in (/var/run/postgresql on Debian, /tmp upstream); the first of
these that holds the port's socket is taken (else the first that exists)."""

SYSTEM_SERVICE_DIR = "/etc/postgresql-common"
"""libpq's system-wide pg_service.conf directory when PGSYSCONFDIR is not set (Debian's)."""

_UTF8 = ("utf8", "utf-8", "unicode", "auto")
_IGNORED = frozenset(
    {
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "sslcompression",
        "sslsni",
        "sslkeylogfile",
        "max_protocol_version",
    }
)
"""Keywords that only tune how libpq talks; asyncpg's defaults are used instead."""
_HARMLESS = {
    "channel_binding": ("disable", "prefer"),
    "gssencmode": ("disable", "prefer"),
    "sslcertmode": ("disable", "allow"),
    "load_balance_hosts": ("disable",),
    "min_protocol_version": ("3.0",),
    "gssdelegation": ("0",),
    "replication": ("0", "off", "false", "no"),
}
"""Keywords asyncpg cannot honour, with the values that ask for nothing it lacks."""
_PASSED = frozenset(
    {
        *("host", "hostaddr", "port", "dbname", "user", "password", "passfile"),
        *("service", "servicefile", "connect_timeout", "client_encoding", "options"),
        *("application_name", "fallback_application_name", "sslmode", "sslnegotiation"),
        *("sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl"),
        *("ssl_min_protocol_version", "ssl_max_protocol_version"),
        *("target_session_attrs", "krbsrvname", "gsslib"),
    }
)
_SSL_FILES = (
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
)


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path(pwd.getpwuid(os.geteuid()).pw_dir)


def _read_service(
    name: str, explicit: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The keywords of service ``name``: the user's file first, then the system's."""
    user_file = explicit.get("servicefile") or environ.get("PGSERVICEFILE")
    sysconf = environ.get("PGSYSCONFDIR") or SYSTEM_SERVICE_DIR
    candidates = [
        Path(user_file) if user_file else _home(environ) / ".pg_service.conf",
        Path(sysconf) / "pg_service.conf",
    ]
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConninfoError(f"service file {path}", f"cannot be read: {exc.strerror}") from exc
        found = parse_service(text, name, str(path))
        if found is not None:
            return found
    looked = " or ".join(str(c) for c in candidates)
    raise ConninfoError(
        f'service "{name}"',
        f"no [{name}] section in {looked}",
        hint="name the file with PGSERVICEFILE, or fix the service name (service= or PGSERVICE)",
    )


def _read_pgpass(path: Path) -> tuple[tuple[PassEntry, ...], tuple[str, ...]]:
    """The entries of the password file at ``path``, or none, with why (libpq's rules:
    it must be a plain file that neither group nor others may read)."""
    try:
        info = path.stat()
    except OSError:
        return (), ()
    if not stat.S_ISREG(info.st_mode):
        return (), (f"password file {path} ignored: not a plain file",)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (), (
            f"password file {path} ignored: group or others may read it "
            f"(libpq ignores it too); chmod 0600 {path}",
        )
    try:
        return parse_pgpass(path.read_text(encoding="utf-8", errors="surrogateescape")), ()
    except OSError as exc:
        return (), (f"password file {path} ignored: {exc.strerror}",)


def _default_socket_dir(params: Mapping[str, str]) -> str:
    port = (params.get("port") or "").split(",")[0] or "5432"
    for directory in SOCKET_DIRS:
        if Path(directory, f".s.PGSQL.{port}").exists():
            return directory
    return next((d for d in SOCKET_DIRS if Path(d).is_dir()), SOCKET_DIRS[-1])


def resolve_target(dsn: str | ConnInfo, environ: Mapping[str, str] | None = None) -> ConnInfo:
    """The DSN with the service file, the environment (``environ``, default
    ``os.environ``) and the password file merged as libpq merges them; a
    :class:`ConninfoError` names whatever is malformed or cannot be honoured."""
    if isinstance(dsn, ConnInfo):
        return dsn
    env = os.environ if environ is None else environ
    explicit = parse_conninfo(dsn)
    name = explicit.get("service") or env.get("PGSERVICE")
    service = _read_service(name, explicit, env) if name else None
    params, origins = merge(explicit, service, name, env)
    pgpass: tuple[PassEntry, ...] = ()
    notes: tuple[str, ...] = ()
    passfile = Path(params.get("passfile") or _home(env) / ".pgpass")
    if not params.get("password"):
        pgpass, notes = _read_pgpass(passfile)
    info = build_conninfo(
        params,
        origins,
        os_user=pwd.getpwuid(os.geteuid()).pw_name,
        default_socket_dir=_default_socket_dir(params),
        pgpass=pgpass,
        passfile=str(passfile),
        environ=env,
        notes=notes,
    )
    check_asyncpg_support(info)
    return info


def check_asyncpg_support(info: ConnInfo) -> None:
    """ConninfoError for a keyword whose value asks for what asyncpg cannot do."""
    for key, value in info.params:
        if key in _PASSED or key in _IGNORED or not value:
            continue
        if value.lower() in _HARMLESS.get(key, ()):
            continue
        raise ConninfoError(
            f"{key}={value} (from {info.origin(key)})",
            "pgtraffic connects with asyncpg, which cannot honour it",
            hint=f"leave {key} out of the DSN (and its environment variable) for the replay",
        )
    encoding = info.get("client_encoding")
    if encoding and encoding.lower() not in _UTF8:
        raise ConninfoError(
            f"client_encoding={encoding} (from {info.origin('client_encoding')})",
            "replay sends statements in UTF8, as the log holds them",
            hint="leave client_encoding out, or set it to UTF8",
        )
    if info.get("sslrootcert") == "system":
        raise ConninfoError(
            f"sslrootcert=system (from {info.origin('sslrootcert')})",
            "asyncpg cannot use the system's certificate store",
            hint="name a root certificate file instead",
        )


# --- connecting ------------------------------------------------------------------------

LONG_WAIT_S = 86_400.0
"""What connect_timeout=0 (no limit) becomes for asyncpg, which needs a number."""


def asyncpg_arguments(
    info: ConnInfo,
    endpoints: Sequence[Endpoint],
    password: str | None,
    *,
    user: str,
    database: str,
    application: str | None = None,
    fallback_application: str | None = None,
    timeout_s: float = 10.0,
    settings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :func:`asyncpg.connect` that leave asyncpg nothing to
    look up itself (no environment variable, no file of its own); ``settings`` are
    server settings for the start-up packet."""
    startup = {**dict(info.startup), **(settings or {})}
    if info.get("options"):
        startup["options"] = info.get("options") or ""
    app = (
        application
        or info.get("application_name")
        or fallback_application
        or info.get("fallback_application_name")
    )
    if app:
        startup["application_name"] = app
    ssl_query = {k: v for k in _SSL_FILES if (v := info.get(k))}
    per_host = info.connect_timeout_s
    if per_host is not None:
        timeout_s = LONG_WAIT_S if per_host == 0 else per_host * len(endpoints)
    return {
        "dsn": "postgresql://?" + urlencode(ssl_query) if ssl_query else None,
        "host": [e.address for e in endpoints],
        "port": [e.port for e in endpoints],
        "user": user,
        "database": database,
        "password": password,
        "passfile": NO_PASSFILE,
        "ssl": info.sslmode,
        "target_session_attrs": info.get("target_session_attrs") or "any",
        "krbsrvname": info.get("krbsrvname"),
        "gsslib": info.get("gsslib"),
        "timeout": timeout_s,
        "server_settings": startup,
    }


NO_PASSFILE = Path("/nonexistent/pgtraffic: the password file was read already")
"""asyncpg reads a password file of its own when it has no password: this one is
never there, so only :meth:`ConnInfo.password_for` (libpq's rules) decides."""


async def connect(
    target: str | ConnInfo,
    *,
    user: str | None = None,
    database: str | None = None,
    application: str | None = None,
    fallback_application: str | None = None,
    timeout_s: float = 10.0,
    settings: Mapping[str, str] | None = None,
) -> asyncpg.Connection:
    """Connect to the first server of ``target`` that answers, as libpq would, with
    ``user``/``database`` in place of the target's own when given."""
    info = resolve_target(target)
    login_user, login_db = user or info.user, database or info.dbname
    groups: list[tuple[str | None, list[Endpoint]]] = []
    for endpoint in info.endpoints:
        password = info.password_for(endpoint, login_user, login_db)
        if groups and groups[-1][0] == password:
            groups[-1][1].append(endpoint)
        else:
            groups.append((password, [endpoint]))
    for i, (password, endpoints) in enumerate(groups):
        args = asyncpg_arguments(
            info,
            endpoints,
            password,
            user=login_user,
            database=login_db,
            application=application,
            fallback_application=fallback_application,
            timeout_s=timeout_s,
            settings=settings,
        )
        try:
            return await asyncpg.connect(**args, statement_cache_size=0)
        except Exception:
            if i == len(groups) - 1:
                raise
    raise AssertionError("a target has at least one server")


@dataclass(frozen=True, slots=True)
class ConnectSpec:
    """Where and as whom one replay connection logs in."""

    dsn: str
    user: str | None
    database: str | None
    application: str | None = None
    timeout_s: float = 10.0
    conninfo: ConnInfo | None = None
    """``dsn`` resolved (:func:`resolve_target`) once for the whole replay."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """Startup settings of the connection (``--read-only``: default_transaction_read_only)."""


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
        conn = await connect(
            spec.conninfo or spec.dsn,
            user=spec.user,
            database=spec.database,
            application=spec.application,
            timeout_s=spec.timeout_s,
            settings=spec.settings,
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


async def probe_target(dsn: str | ConnInfo, timeout_s: float = 10.0) -> TargetInfo:
    """Connect once to read the target's identity, key settings and type catalog."""
    conn = await connect(dsn, timeout_s=timeout_s, fallback_application="pgtraffic")
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
