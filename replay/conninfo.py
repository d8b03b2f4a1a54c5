"""libpq connection strings, service files and password files, parsed as libpq does.

Pure functions over strings and mappings: the caller reads the environment and
the files (:func:`replay.connection.resolve_target` does). The rules are libpq's
own, as its documentation states them (Connection Strings, Environment Variables,
The Password File, The Connection Service File):

- a connection string is a URI (``postgresql://`` or ``postgres://``; user, password,
  host, port and dbname percent-decoded; IPv6 hosts in brackets; several
  ``host:port`` pairs separated by commas; any keyword as a query parameter, a
  unix-socket directory too: ``?host=/var/run/postgresql`` or ``%2Fvar%2Frun...``
  as the host), or ``key=value`` pairs separated by spaces (a value with spaces,
  or an empty one, in single quotes; ``\\'`` and ``\\\\`` escape inside and outside
  quotes);
- a keyword the string leaves out comes from the service (``service=`` or
  ``PGSERVICE``), then from its environment variable (``PGHOST``, ...), then from
  libpq's default: explicit > service file > environment > default;
- with no password, the first matching line of the password file gives it
  (``host:port:dbname:user:password``, ``*`` matches anything, ``\\:`` and ``\\\\``
  escape; a unix socket in the default directory, or no host at all, is matched
  as ``localhost``).

Every mistake is a :class:`ConninfoError` (a UsageError) that names the part at
fault and where it came from: the DSN, an environment variable, or a line of the
service file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from capture.errors import UsageError

KEYWORD_ENV: dict[str, str | None] = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "servicefile": "PGSERVICEFILE",
    "channel_binding": "PGCHANNELBINDING",
    "require_auth": "PGREQUIREAUTH",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "fallback_application_name": None,
    "keepalives": None,
    "keepalives_idle": None,
    "keepalives_interval": None,
    "keepalives_count": None,
    "tcp_user_timeout": None,
    "replication": None,
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslpassword": None,
    "sslkeylogfile": None,
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "min_protocol_version": "PGMINPROTOCOLVERSION",
    "max_protocol_version": "PGMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "scram_client_key": None,
    "scram_server_key": None,
    "oauth_issuer": None,
    "oauth_client_id": None,
    "oauth_client_secret": None,
    "oauth_scope": None,
}
"""Every keyword libpq 18 accepts, with the environment variable that defaults it."""

STARTUP_ENV = {"PGDATESTYLE": "datestyle", "PGTZ": "timezone", "PGGEQO": "geqo"}
"""Variables libpq sends as server settings in the start-up packet ("default": not)."""

DEFAULT_PORT = 5432
DEFAULT_SSLMODE = "prefer"
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": SSLMODES,
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "sslnegotiation": ("postgres", "direct"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "load_balance_hosts": ("disable", "random"),
    "sslcertmode": ("disable", "allow", "require"),
}
_INTEGERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
_SECRETS = (
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
)
_URI_PREFIXES = ("postgresql://", "postgres://")
_HINT = (
    "a DSN is a libpq URI such as postgresql://app@db2:5432/shop or key=value pairs "
    "such as 'host=/var/run/postgresql port=5432 dbname=shop' (quote values with "
    "spaces in single quotes)"
)


class ConninfoError(UsageError):
    """A connection string, a service file or a connection variable is malformed."""

    def __init__(self, where: str, problem: str, *, hint: str | None = _HINT) -> None:
        super().__init__(f"{where}: {problem}", hint=hint)
        self.where = where
        self.problem = problem


def redact(dsn: str) -> str:
    """``dsn`` with its passwords replaced by ``****``, fit to show in a message."""
    out = re.sub(r"(://[^/?@:]*:)[^/?@]*@", r"\1****@", dsn)
    secrets = "|".join(_SECRETS)
    out = re.sub(rf"([?&](?:{secrets})=)[^&]*", r"\1****", out)
    return re.sub(rf"\b((?:{secrets})\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", r"\1****", out)


def _where(dsn: str) -> str:
    return f"DSN {redact(dsn)!r}" if dsn else "the empty DSN"


# --- connection strings -------------------------------------------------------------


def parse_conninfo(dsn: str) -> dict[str, str]:
    """The keywords a URI or a ``key=value`` connection string sets (pure).

    Raises :class:`ConninfoError` naming the part that libpq would refuse.
    """
    params = _parse_uri(dsn) if dsn.startswith(_URI_PREFIXES) else _parse_pairs(dsn)
    for key, value in params.items():
        check_value(key, value, _where(dsn))
    return params


def _parse_pairs(dsn: str) -> dict[str, str]:
    where = _where(dsn)
    params: dict[str, str] = {}
    i, n = 0, len(dsn)
    while True:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and dsn[i] != "=" and not dsn[i].isspace():
            i += 1
        key = dsn[start:i]
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n or dsn[i] != "=":
            raise ConninfoError(where, _missing_equals(key, dsn))
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        value, i = _pair_value(dsn, i, where)
        if key not in KEYWORD_ENV:
            raise ConninfoError(where, _unknown(key))
        params[key] = value


def _missing_equals(key: str, dsn: str) -> str:
    problem = f'missing "=" after "{key}"'
    if "://" in dsn:
        scheme = dsn.split("://", 1)[0]
        return f'{problem}: a URI starts with postgresql:// or postgres://, not "{scheme}://"'
    if "=" not in dsn and "@" not in dsn:
        return f"{problem} (a database name alone is written dbname={key})"
    return problem


def _pair_value(dsn: str, i: int, where: str) -> tuple[str, int]:
    """The value starting at ``dsn[i]`` and the index after it (libpq's quoting rules)."""
    out: list[str] = []
    n = len(dsn)
    if i < n and dsn[i] == "'":
        i += 1
        while True:
            if i >= n:
                raise ConninfoError(where, "unterminated quoted string (a ' is missing)")
            ch = dsn[i]
            if ch == "\\":
                i += 1
                if i < n:
                    out.append(dsn[i])
                    i += 1
                continue
            if ch == "'":
                return "".join(out), i + 1
            out.append(ch)
            i += 1
    while i < n and not dsn[i].isspace():
        if dsn[i] == "\\":
            i += 1
            if i < n:
                out.append(dsn[i])
                i += 1
            continue
        out.append(dsn[i])
        i += 1
    return "".join(out), i


def _unknown(key: str) -> str:
    close = [k for k in KEYWORD_ENV if k.replace("_", "") == key.lower().replace("_", "")]
    if key.lower() == "database":
        close = ["dbname"]
    suggestion = f" (did you mean {close[0]}?)" if close else ""
    return f'invalid connection option "{key}"{suggestion}'


def percent_decode(text: str, where: str, part: str) -> str:
    """libpq's URI decoding: ``%XX`` only (``+`` stays ``+``), never ``%00``."""
    if "%" not in text:
        return text
    data = bytearray()
    i = 0
    raw = text.encode("utf-8")
    while i < len(raw):
        if raw[i] == ord("%"):
            token = raw[i + 1 : i + 3]
            if len(token) < 2 or not all(chr(c) in "0123456789abcdefABCDEF" for c in token):
                bad = raw[i : i + 3].decode("utf-8", "replace")
                raise ConninfoError(where, f'invalid percent-encoded token "{bad}" in the {part}')
            if token == b"00":
                raise ConninfoError(where, f"forbidden value %00 in the {part}")
            data.append(int(token, 16))
            i += 3
        else:
            data.append(raw[i])
            i += 1
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConninfoError(where, f"the {part} does not decode to UTF-8") from None


def _parse_uri(dsn: str) -> dict[str, str]:
    """libpq's order: user info up to an ``@`` before any ``/``, hosts up to ``/`` or
    ``?``, the database name up to ``?``, then the query parameters."""
    where = _where(dsn)
    rest = dsn.split("://", 1)[1]
    params: dict[str, str] = {}
    at, slash = rest.find("@"), rest.find("/")
    if at >= 0 and (slash < 0 or at < slash):
        user, colon, password = rest[:at].partition(":")
        if user:
            params["user"] = percent_decode(user, where, "user name")
        if colon:
            params["password"] = percent_decode(password, where, "password")
        rest = rest[at + 1 :]
    netloc = re.split(r"[/?]", rest, maxsplit=1)[0]
    rest = rest[len(netloc) :]
    hosts, ports = _uri_hosts(netloc, where)
    if any(hosts) or len(hosts) > 1:
        params["host"] = ",".join(hosts)
    if any(ports) or len(hosts) > 1:
        params["port"] = ",".join(ports)
    path, _, query = rest.partition("?")
    if path.startswith("/") and len(path) > 1:
        params["dbname"] = percent_decode(path[1:], where, "database name")
    if query:
        params.update(_uri_query(query, where))
    return params


def _uri_hosts(netloc: str, where: str) -> tuple[list[str], list[str]]:
    hosts: list[str] = []
    ports: list[str] = []
    for spec in netloc.split(","):
        if spec.startswith("["):
            end = spec.find("]")
            if end < 0:
                raise ConninfoError(where, f'IPv6 host "{spec}" lacks its closing "]"')
            host, after = spec[1:end], spec[end + 1 :]
            if not host:
                raise ConninfoError(where, "an IPv6 host between [ and ] may not be empty")
            if after and not after.startswith(":"):
                raise ConninfoError(
                    where, f'unexpected "{after[0]}" after IPv6 host [{host}] (expected ":")'
                )
            host, port = percent_decode(host, where, "host"), after[1:]
        else:
            host, _, port = spec.partition(":")
            host = percent_decode(host, where, "host")
        hosts.append(host)
        ports.append(percent_decode(port, where, "port"))
    return hosts, ports


def _uri_query(query: str, where: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise ConninfoError(where, f'query parameter "{item}" lacks "=" and a value')
        if "=" in value:
            raise ConninfoError(where, f'query parameter "{item}" has a second "="')
        key = percent_decode(key, where, "query parameter name")
        value = percent_decode(value, where, f"value of {key}")
        if key == "ssl" and value == "true":
            key, value = "sslmode", "require"
        if key not in KEYWORD_ENV:
            raise ConninfoError(where, f"invalid URI query parameter: {_unknown(key)}")
        params[key] = value
    return params


def check_value(key: str, value: str, where: str) -> None:
    """ConninfoError when ``value`` is not one libpq takes for ``key`` (pure)."""
    if key == "port":
        for port in value.split(","):
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ConninfoError(
                    where, f'invalid port "{port}": a port is a number from 1 to 65535'
                )
    elif key in _INTEGERS:
        if value and not re.fullmatch(r"\s*[-+]?\d+\s*", value):
            raise ConninfoError(where, f'invalid integer value "{value}" for {key}')
    elif key in _CHOICES and value and value not in _CHOICES[key]:
        raise ConninfoError(
            where, f'invalid {key} "{value}": one of {", ".join(_CHOICES[key])}', hint=None
        )
    elif key == "hostaddr":
        for addr in value.split(","):
            try:
                if addr:
                    ipaddress.ip_address(addr)
            except ValueError:
                raise ConninfoError(
                    where, f'invalid hostaddr "{addr}": a numeric IPv4 or IPv6 address'
                ) from None


# --- service files --------------------------------------------------------------------


def parse_service(text: str, service: str, path: str) -> dict[str, str] | None:
    """The keywords of ``[service]`` in a service file's ``text``, or None when the
    file has no such section (pure; libpq's rules: ``key=value`` with no spaces
    around ``=``, ``#`` comments, the section ends at the next ``[``)."""
    found: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if found is not None:
                return found
            if line[1:].startswith(service + "]"):
                found = {}
            continue
        if found is None:
            continue
        where = f"service file {path}, line {number}"
        key, eq, value = line.partition("=")
        if not eq:
            raise ConninfoError(where, f'expected keyword=value, got "{line}"', hint=None)
        if key in ("service", "servicefile"):
            raise ConninfoError(where, f'a service cannot name another "{key}"', hint=None)
        if key not in KEYWORD_ENV:
            spaced = " (libpq allows no spaces around =)" if key != key.strip() else ""
            raise ConninfoError(where, _unknown(key) + spaced, hint=None)
        check_value(key, value, where)
        found.setdefault(key, value)
    return found


# --- password files -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassEntry:
    """One line of a password file; None in a field is ``*`` (matches anything)."""

    host: str | None
    port: str | None
    dbname: str | None
    user: str | None
    password: str = field(repr=False)

    def matches(self, host: str, port: str, dbname: str, user: str) -> bool:
        return all(
            want is None or want == got
            for want, got in ((self.host, host), (self.port, port), (self.dbname, dbname))
        ) and (self.user is None or self.user == user)


def parse_pgpass(text: str) -> tuple[PassEntry, ...]:
    """The entries of a password file (pure). Lines with fewer than five fields
    never match in libpq and are left out; the password ends at an unescaped ``:``."""
    entries = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) < 5:
            continue
        host, port, dbname, user = (None if raw == "*" else value for raw, value in fields[:4])
        entries.append(PassEntry(host, port, dbname, user, fields[4][1]))
    return tuple(entries)


def _pgpass_fields(line: str) -> list[tuple[str, str]]:
    """(raw, unescaped) of each ``:``-separated field; the fifth ends the line."""
    fields: list[tuple[str, str]] = []
    raw: list[str] = []
    value: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            raw.append(line[i : i + 2])
            value.append(line[i + 1])
            i += 2
            continue
        if ch == ":":
            fields.append(("".join(raw), "".join(value)))
            raw, value = [], []
            if len(fields) == 5:
                return fields
        else:
            raw.append(ch)
            value.append(ch)
        i += 1
    if len(fields) == 4:
        fields.append(("".join(raw), "".join(value)))
    return fields


def pgpass_password(
    entries: Iterable[PassEntry], host: str, port: int, dbname: str, user: str
) -> str | None:
    """The password of the first entry matching (pure); ``host`` as libpq matches it
    (see :attr:`Endpoint.pgpass_host`)."""
    for entry in entries:
        if entry.matches(host, str(port), dbname, user):
            return entry.password
    return None


# --- the merged record ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server to try: a host name, an IP address or a unix-socket directory."""

    host: str
    port: int
    hostaddr: str | None = None
    pgpass_host: str = "localhost"
    """The name the password file is searched for (libpq's rule)."""

    @property
    def address(self) -> str:
        """What to connect to: ``hostaddr`` when given (no name lookup), else ``host``."""
        return self.hostaddr or self.host

    @property
    def is_socket(self) -> bool:
        return self.hostaddr is None and self.host.startswith("/")

    def describe(self) -> str:
        if self.is_socket:
            return f"socket {self.host}/.s.PGSQL.{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        via = f" ({self.hostaddr})" if self.hostaddr and self.hostaddr != self.host else ""
        return f"{host}:{self.port}{via}"


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """Where and how to connect, with the DSN, the service file and the environment
    merged as libpq merges them; the one record every connecting path uses."""

    endpoints: tuple[Endpoint, ...]
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    """Given in the DSN, the service file or PGPASSWORD; else the password file's."""
    pgpass: tuple[PassEntry, ...] = field(default=(), repr=False)
    passfile: str | None = None
    sslmode: str = DEFAULT_SSLMODE
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Every keyword set (explicitly, by the service or by the environment)."""
    origins: tuple[tuple[str, str], ...] = ()
    """Where each keyword in ``params`` came from ("DSN", "PGHOST", "service x")."""
    startup: tuple[tuple[str, str], ...] = ()
    """Server settings libpq sends from PGDATESTYLE, PGTZ and PGGEQO."""
    notes: tuple[str, ...] = ()
    """What the user should know (a password file ignored, and why)."""

    def get(self, key: str) -> str | None:
        """The value of ``key`` (a libpq keyword) when set and not empty."""
        for name, value in self.params:
            if name == key:
                return value or None
        return None

    def origin(self, key: str) -> str | None:
        return dict(self.origins).get(key)

    @property
    def connect_timeout_s(self) -> float | None:
        """libpq's ``connect_timeout``: per host; 0 or less is no limit (None: unset)."""
        text = self.get("connect_timeout")
        if text is None:
            return None
        seconds = int(text)
        return None if seconds <= 0 else float(max(seconds, 2))

    def password_for(self, endpoint: Endpoint, user: str, dbname: str) -> str | None:
        """The password for logging in at ``endpoint`` as ``user`` into ``dbname``."""
        if self.password:
            return self.password
        return pgpass_password(self.pgpass, endpoint.pgpass_host, endpoint.port, dbname, user)

    def describe(self) -> str:
        """One line for people: servers, user and database, never a password."""
        where = ", ".join(e.describe() for e in self.endpoints)
        return f"{where} as {self.user} database {self.dbname}"


def merge(
    explicit: Mapping[str, str],
    service: Mapping[str, str] | None,
    service_name: str | None,
    environ: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """libpq's precedence: explicit > service file > environment (pure); returns the
    merged keywords and where each came from."""
    merged: dict[str, str] = {}
    origins: dict[str, str] = {}
    for key, value in explicit.items():
        merged[key], origins[key] = value, "the DSN"
    for key, value in (service or {}).items():
        if key not in merged:
            merged[key], origins[key] = value, f'service "{service_name}"'
    for key, var in KEYWORD_ENV.items():
        if var is not None and key not in merged and var in environ:
            value = environ[var]
            check_value(key, value, f"{var}={value!r}")
            merged[key], origins[key] = value, var
    return merged, origins


def _split(value: str | None) -> list[str]:
    return value.split(",") if value else [""]


def endpoints_of(
    params: Mapping[str, str], origins: Mapping[str, str], default_socket_dir: str
) -> tuple[Endpoint, ...]:
    """The servers to try, in order (pure): ``host``/``hostaddr`` lists with one port
    for all or one per host; an empty host is the default socket directory."""
    hosts, addrs = _split(params.get("host")), _split(params.get("hostaddr"))
    if params.get("hostaddr") and params.get("host") and len(addrs) != len(hosts):
        raise ConninfoError(
            _origin_of(origins, "hostaddr"),
            f"{len(addrs)} hostaddr values for {len(hosts)} hosts",
        )
    if len(addrs) > len(hosts):
        hosts = [""] * len(addrs)
    ports = _split(params.get("port"))
    if len(ports) not in (1, len(hosts)):
        raise ConninfoError(
            _origin_of(origins, "port"), f"could not match {len(ports)} ports to {len(hosts)} hosts"
        )
    out = []
    for i, host in enumerate(hosts):
        addr = addrs[i] if i < len(addrs) and addrs[i] else None
        port_text = ports[i] if len(ports) > 1 else ports[0]
        port = int(port_text) if port_text else DEFAULT_PORT
        pgpass_host = host or addr or "localhost"
        if host == default_socket_dir:
            pgpass_host = "localhost"
        out.append(Endpoint(host or addr or default_socket_dir, port, addr, pgpass_host))
    return tuple(out)


def _origin_of(origins: Mapping[str, str], key: str) -> str:
    origin = origins.get(key, "the DSN")
    return origin if origin.startswith(("the ", "service")) else f"{origin} ({key})"


def build_conninfo(
    params: Mapping[str, str],
    origins: Mapping[str, str],
    *,
    os_user: str,
    default_socket_dir: str,
    pgpass: tuple[PassEntry, ...] = (),
    passfile: str | None = None,
    environ: Mapping[str, str] | None = None,
    notes: tuple[str, ...] = (),
) -> ConnInfo:
    """The frozen record from merged keywords, filling libpq's defaults (pure)."""
    user = params.get("user") or os_user
    startup = tuple(
        (name, value)
        for var, name in STARTUP_ENV.items()
        if (value := (environ or {}).get(var)) and value.lower() != "default"
    )
    return ConnInfo(
        endpoints=endpoints_of(params, origins, default_socket_dir),
        user=user,
        dbname=params.get("dbname") or user,
        password=params.get("password") or None,
        pgpass=pgpass,
        passfile=passfile,
        sslmode=params.get("sslmode") or DEFAULT_SSLMODE,
        params=tuple(params.items()),
        origins=tuple(origins.items()),
        startup=startup,
        notes=notes,
    )


def quote_value(value: str) -> str:
    """``value`` as a ``key=value`` connection string writes it (pure)."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_dsn(
    dsn: str,
    environ: Mapping[str, str],
    *,
    dbname: str | None = None,
    defaults: Mapping[str, str] | None = None,
) -> str:
    """``dsn`` checked as libpq would check it, for a libpq client (psycopg), which
    merges the service file, ``environ`` and the password file itself (pure).

    ``dbname`` replaces the DSN's database; each of ``defaults`` is added only when
    the DSN, its environment variable and any service (which may set it) do not.
    """
    params = parse_conninfo(dsn)
    extra = dict(defaults or {})
    service = params.get("service") or environ.get("PGSERVICE")
    for key in list(extra):
        var = KEYWORD_ENV.get(key)
        if key in params or (var and var in environ) or service:
            del extra[key]
    if dbname:
        extra["dbname"] = dbname
    if not extra:
        return dsn
    params.update(extra)
    return " ".join(f"{key}={quote_value(value)}" for key, value in params.items())
