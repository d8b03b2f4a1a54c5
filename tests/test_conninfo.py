"""libpq connection strings, the environment, service and password files (no server).

Valid strings are also parsed by libpq itself (psycopg's ``conninfo_to_dict`` calls
``PQconninfoParse``): both must give the same keywords.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from capture.errors import UsageError
from replay.connection import NO_PASSFILE, asyncpg_arguments, resolve_target
from replay.conninfo import (
    ConninfoError,
    endpoints_of,
    libpq_dsn,
    merge,
    parse_conninfo,
    parse_pgpass,
    parse_service,
    pgpass_password,
    quote_value,
    redact,
)

VALID = {
    # key=value pairs
    "host=/var/run/postgresql port=5432 dbname=app": {
        "host": "/var/run/postgresql",
        "port": "5432",
        "dbname": "app",
    },
    "  host = db1   dbname=shop  ": {"host": "db1", "dbname": "shop"},
    "application_name='my app' options='-c geqo=off'": {
        "application_name": "my app",
        "options": "-c geqo=off",
    },
    r"password='it\'s a \\ secret' user=\'x": {"password": "it's a \\ secret", "user": "'x"},
    r"user=a\ b dbname=''": {"user": "a b", "dbname": ""},
    "host='a'port=5": {"host": "a", "port": "5"},
    "host= port=5432": {"host": "port=5432"},  # libpq: the value is what follows "="
    "host=a,b,c port=1,,3 target_session_attrs=read-write": {
        "host": "a,b,c",
        "port": "1,,3",
        "target_session_attrs": "read-write",
    },
    "host=::1 sslmode=verify-full sslrootcert=/etc/ca.pem": {
        "host": "::1",
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
    },
    "": {},
    # URIs
    "postgres://": {},
    "postgresql://app@db2:5432/shop": {
        "user": "app",
        "host": "db2",
        "port": "5432",
        "dbname": "shop",
    },
    "postgresql://u:p%40ss%3Aw@h/db%2Fx": {
        "user": "u",
        "password": "p@ss:w",
        "host": "h",
        "dbname": "db/x",
    },
    "postgresql://%2Fvar%2Frun%2Fpostgresql:5433/app": {
        "host": "/var/run/postgresql",
        "port": "5433",
        "dbname": "app",
    },
    "postgresql:///app?host=/tmp/sock%20dir&port=5999": {
        "host": "/tmp/sock dir",
        "port": "5999",
        "dbname": "app",
    },
    "postgresql://[::1]:5433,[fe80::1%25eth0]/db": {
        "host": "::1,fe80::1%eth0",
        "port": "5433,",
        "dbname": "db",
    },
    "postgresql://h1:5432,h2:5433/db?target_session_attrs=primary": {
        "host": "h1,h2",
        "port": "5432,5433",
        "dbname": "db",
        "target_session_attrs": "primary",
    },
    "postgresql://h?ssl=true&connect_timeout=3&application_name=a+b": {
        "host": "h",
        "sslmode": "require",
        "connect_timeout": "3",
        "application_name": "a+b",  # + is not a space in libpq's URIs
    },
    "postgresql://h/d?options=-c%20search_path%3Dapp": {
        "host": "h",
        "dbname": "d",
        "options": "-c search_path=app",
    },
    "postgresql://u:p?x@h/db": {"user": "u", "password": "p?x", "host": "h", "dbname": "db"},
    "postgresql://:pw@h": {"password": "pw", "host": "h"},
    "postgresql://u@/db": {"user": "u", "dbname": "db"},
    "postgresql://h/db?service=prod&sslmode=disable": {
        "host": "h",
        "dbname": "db",
        "service": "prod",
        "sslmode": "disable",
    },
}


@pytest.mark.parametrize("dsn", list(VALID), ids=repr)
def test_valid_strings_parse_as_libpq_parses_them(dsn: str) -> None:
    assert parse_conninfo(dsn) == VALID[dsn]
    assert conninfo_to_dict(dsn) == VALID[dsn], "libpq itself reads it so"


MALFORMED = {
    "postgresql://app@db:notaport/shop": 'invalid port "notaport"',
    "host=db port=notaport": 'invalid port "notaport"',
    "host=db port=70000": 'invalid port "70000"',
    "host=a,b port=1,2,3": "could not match 3 ports to 2 hosts",
    "shop": 'missing "=" after "shop" (a database name alone is written dbname=shop)',
    "host=db dbname": 'missing "=" after "dbname"',
    "mysql://db/shop": 'not "mysql://"',
    "host='db": "unterminated quoted string",
    "hots=db": 'invalid connection option "hots"',
    "database=shop": 'invalid connection option "database" (did you mean dbname?)',
    "postgresql://db/shop?foo=1": 'invalid URI query parameter: invalid connection option "foo"',
    "postgresql://db/shop?sslmode": 'query parameter "sslmode" lacks "="',
    "postgresql://db/shop?a=b=c": 'query parameter "a=b=c" has a second "="',
    "postgresql://%zz/shop": 'invalid percent-encoded token "%zz" in the host',
    "postgresql://db/sh%00op": "forbidden value %00 in the database name",
    "postgresql://[::1/shop": 'lacks its closing "]"',
    "postgresql://[]/shop": "may not be empty",
    "postgresql://[::1]x/shop": 'unexpected "x" after IPv6 host',
    "sslmode=requir": 'invalid sslmode "requir": one of disable, allow, prefer',
    "target_session_attrs=master": 'invalid target_session_attrs "master"',
    "connect_timeout=soon": 'invalid integer value "soon" for connect_timeout',
    "hostaddr=db.example.com": 'invalid hostaddr "db.example.com"',
}


@pytest.mark.parametrize("dsn", list(MALFORMED), ids=repr)
def test_malformed_strings_name_the_part(dsn: str) -> None:
    with pytest.raises(ConninfoError) as caught:
        endpoints_of(parse_conninfo(dsn), {}, "/tmp")
    assert isinstance(caught.value, UsageError)
    assert caught.value.exit_code == 2
    assert MALFORMED[dsn] in caught.value.message
    assert caught.value.message.startswith(("DSN ", "the DSN: "))


def test_libpq_refuses_what_we_refuse_for_syntax() -> None:
    for dsn in ("shop", "host='db", "hots=db", "postgresql://db/shop?foo=1", "postgresql://%zz/"):
        with pytest.raises(psycopg.ProgrammingError):
            conninfo_to_dict(dsn)
        with pytest.raises(ConninfoError):
            parse_conninfo(dsn)


def test_messages_never_show_a_password() -> None:
    for dsn in (
        "postgresql://u:hunter2@h:bad/db",
        "password=hunter2 port=bad",
        "password='hunter2 x' port=bad",
        "postgresql://h:bad/db?password=hunter2",
    ):
        with pytest.raises(ConninfoError) as caught:
            parse_conninfo(dsn)
        assert "hunter2" not in str(caught.value), dsn
        assert "****" in str(caught.value)
    assert redact("host=h sslpassword=x user=u") == "host=h sslpassword=**** user=u"


def test_explicit_beats_service_beats_environment() -> None:
    env = {"PGHOST": "envhost", "PGPORT": "6000", "PGUSER": "envuser", "PGDATABASE": "envdb"}
    service = {"host": "svchost", "user": "svcuser"}
    params, origins = merge({"host": "dsnhost"}, service, "prod", env)
    assert params == {"host": "dsnhost", "user": "svcuser", "port": "6000", "dbname": "envdb"}
    assert origins == {
        "host": "the DSN",
        "user": 'service "prod"',
        "port": "PGPORT",
        "dbname": "PGDATABASE",
    }


def test_a_bad_environment_variable_is_named() -> None:
    with pytest.raises(ConninfoError) as caught:
        merge({}, None, None, {"PGPORT": "notaport"})
    assert caught.value.message.startswith("PGPORT='notaport': invalid port")
    with pytest.raises(ConninfoError, match="PGSSLMODE='on': invalid sslmode"):
        merge({}, None, None, {"PGSSLMODE": "on"})


def test_endpoints_hosts_ports_and_password_file_names() -> None:
    params = {"host": "/tmp,db1,,/var/run/postgresql", "port": "5433,,5434,5435"}
    ends = endpoints_of(params, {}, "/var/run/postgresql")
    assert [(e.host, e.port, e.is_socket) for e in ends] == [
        ("/tmp", 5433, True),
        ("db1", 5432, False),
        ("/var/run/postgresql", 5434, True),
        ("/var/run/postgresql", 5435, True),
    ]
    # libpq: a non-default socket directory is matched by its path; no host, or the
    # default directory, as localhost
    assert [e.pgpass_host for e in ends] == ["/tmp", "db1", "localhost", "localhost"]
    one_port = endpoints_of({"host": "a,b", "port": "7000"}, {}, "/tmp")
    assert [e.port for e in one_port] == [7000, 7000]
    addr = endpoints_of({"host": "db.example", "hostaddr": "10.0.0.5"}, {}, "/tmp")[0]
    assert (addr.address, addr.pgpass_host, addr.is_socket) == ("10.0.0.5", "db.example", False)
    only_addr = endpoints_of({"hostaddr": "10.0.0.5"}, {}, "/tmp")[0]
    assert (only_addr.address, only_addr.pgpass_host) == ("10.0.0.5", "10.0.0.5")
    with pytest.raises(ConninfoError, match=r"PGPORT \(port\): could not match 2 ports to 3"):
        endpoints_of({"host": "a,b,c", "port": "1,2"}, {"port": "PGPORT"}, "/tmp")


SERVICES = """\
# the company's services
[prod]
host=db-prod
port=6432
# a comment inside
dbname=shop

[prodx]
host=wrong
[test] trailing words are ignored
host=/var/run/postgresql
user=tester
host=second-is-ignored
[broken]
this line is not checked unless [broken] is asked for
"""


def test_service_file_sections() -> None:
    assert parse_service(SERVICES, "prod", "f") == {
        "host": "db-prod",
        "port": "6432",
        "dbname": "shop",
    }
    assert parse_service(SERVICES, "test", "f") == {"host": "/var/run/postgresql", "user": "tester"}
    assert parse_service(SERVICES, "absent", "f") is None
    with pytest.raises(ConninfoError, match=r"service file f, line 15: expected keyword=value"):
        parse_service(SERVICES, "broken", "f")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[s]\nhost = db\n", 'line 2: invalid connection option "host " (libpq allows no spaces'),
        ("[s]\nservice=other\n", 'line 2: a service cannot name another "service"'),
        ("[s]\n\nport=x\n", 'line 3: invalid port "x"'),
    ],
)
def test_service_file_mistakes_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConninfoError) as caught:
        parse_service(text, "s", "/home/u/.pg_service.conf")
    assert caught.value.message.startswith("service file /home/u/.pg_service.conf, ")
    assert message in caught.value.message


PGPASS = "\r\n".join(
    [
        "# hostname:port:database:username:password",
        r"db1:5432:shop:app:first\:pass\\word:trailing",
        "db1:*:*:app:second",
        r"\/tmp\/my\:dir:5999:*:*:socket",
        r"\*:1:*:*:literal-star",
        "short:5432:shop:app",
        "*:*:*:*:anything",
    ]
)


def test_pgpass_matching_wildcards_and_escapes() -> None:
    entries = parse_pgpass(PGPASS)
    assert len(entries) == 5, "the short line never matches, comments are not entries"
    assert pgpass_password(entries, "db1", 5432, "shop", "app") == "first:pass\\word"
    assert pgpass_password(entries, "db1", 6000, "other", "app") == "second"
    assert pgpass_password(entries, "/tmp/my:dir", 5999, "x", "y") == "socket"
    assert pgpass_password(entries, "*", 1, "x", "y") == "literal-star"
    assert pgpass_password(entries, "elsewhere", 1, "x", "y") == "anything"
    assert pgpass_password(parse_pgpass("db1:5432:*:*:pw"), "db2", 5432, "d", "u") is None
    assert "first" not in repr(entries[0]), "passwords are not shown"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), **extra}


def test_resolve_with_service_file_environment_and_pgpass(tmp_path: Path) -> None:
    services = tmp_path / "services.conf"
    services.write_text("[target]\nhost=/tmp/sockets\nport=6001\nsslmode=disable\n")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(r"\/tmp\/sockets:6001:shop:*:s3cret" + "\n")
    pgpass.chmod(0o600)
    env = _env(
        tmp_path,
        PGSERVICEFILE=str(services),
        PGSERVICE="target",
        PGHOST="ignored-by-the-service",
        PGDATABASE="shop",
        PGUSER="app",
        PGPASSFILE=str(pgpass),
        PGTZ="UTC",
    )
    info = resolve_target("application_name=replayer", env)
    (end,) = info.endpoints
    assert (end.host, end.port, info.user, info.dbname) == ("/tmp/sockets", 6001, "app", "shop")
    assert info.sslmode == "disable"
    assert info.origin("host") == 'service "target"'
    assert info.origin("dbname") == "PGDATABASE"
    assert info.password_for(end, "app", "shop") == "s3cret"
    assert info.password_for(end, "app", "other") is None
    assert info.startup == (("timezone", "UTC"),)
    args = asyncpg_arguments(info, info.endpoints, "s3cret", user="app", database="shop")
    assert args["host"] == ["/tmp/sockets"] and args["port"] == [6001]
    assert args["server_settings"] == {"timezone": "UTC", "application_name": "replayer"}
    assert args["passfile"] == NO_PASSFILE and not NO_PASSFILE.exists()
    assert "s3cret" not in repr(info)


def test_pgpass_readable_by_others_is_ignored_as_libpq_does(tmp_path: Path) -> None:
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text("*:*:*:*:pw\n")
    pgpass.chmod(0o644)
    info = resolve_target("host=db", _env(tmp_path))
    assert info.password_for(info.endpoints[0], "u", "d") is None
    assert any("chmod 0600" in note for note in info.notes)
    pgpass.chmod(0o600)
    info = resolve_target("host=db", _env(tmp_path))
    assert info.password_for(info.endpoints[0], "u", "d") == "pw"
    assert info.notes == ()
    explicit = resolve_target("host=db password=given", _env(tmp_path))
    assert explicit.password_for(explicit.endpoints[0], "u", "d") == "given"


def test_missing_service_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConninfoError) as caught:
        resolve_target("service=nope", _env(tmp_path, PGSYSCONFDIR=str(tmp_path / "etc")))
    assert "no [nope] section in" in caught.value.message
    assert str(tmp_path / ".pg_service.conf") in caught.value.message
    (tmp_path / ".pg_service.conf").write_text("[nope]\nhost=found\n")
    info = resolve_target("service=nope", _env(tmp_path))
    assert info.endpoints[0].host == "found"


def test_what_asyncpg_cannot_honour_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConninfoError, match=r"require_auth=scram-sha-256 \(from the DSN\)"):
        resolve_target("host=db require_auth=scram-sha-256", _env(tmp_path))
    with pytest.raises(ConninfoError, match=r"client_encoding=LATIN1 \(from PGCLIENTENCODING\)"):
        resolve_target("host=db", _env(tmp_path, PGCLIENTENCODING="LATIN1"))
    ok = resolve_target("host=db keepalives=1 channel_binding=prefer", _env(tmp_path))
    assert ok.get("keepalives") == "1"


def test_ssl_files_timeout_and_options_reach_asyncpg(tmp_path: Path) -> None:
    info = resolve_target(
        "host=a,b sslmode=verify-ca sslrootcert=/ca.pem sslcert=/c.pem connect_timeout=3 "
        "options='-c statement_timeout=5s' fallback_application_name=fb",
        _env(tmp_path, PGSSLKEY="/k.pem"),
    )
    args = asyncpg_arguments(info, info.endpoints, None, user="u", database="d", timeout_s=10)
    assert args["ssl"] == "verify-ca"
    assert args["dsn"] == "postgresql://?sslcert=%2Fc.pem&sslkey=%2Fk.pem&sslrootcert=%2Fca.pem"
    assert args["timeout"] == 6.0, "connect_timeout is per host"
    assert args["server_settings"] == {
        "options": "-c statement_timeout=5s",
        "application_name": "fb",
    }
    named = asyncpg_arguments(info, info.endpoints, None, user="u", database="d", application="s")
    assert named["server_settings"]["application_name"] == "s"


def test_libpq_dsn_for_psycopg() -> None:
    assert libpq_dsn("postgresql://h/db", {}) == "postgresql://h/db"
    out = libpq_dsn("postgresql://h/db?application_name=x", {}, dbname="my db")
    assert conninfo_to_dict(out) == {"host": "h", "dbname": "my db", "application_name": "x"}
    defaults = {"connect_timeout": "10", "fallback_application_name": "pgtraffic"}
    with_defaults = conninfo_to_dict(libpq_dsn("host=h connect_timeout=2", {}, defaults=defaults))
    assert with_defaults == {
        "host": "h",
        "connect_timeout": "2",
        "fallback_application_name": "pgtraffic",
    }
    from_env = conninfo_to_dict(libpq_dsn("host=h", {"PGCONNECT_TIMEOUT": "3"}, defaults=defaults))
    assert "connect_timeout" not in from_env, "the environment's value is left to libpq"
    with pytest.raises(ConninfoError, match='invalid port "x"'):
        libpq_dsn("host=h port=x", {})
    for value in ("plain", "with space", "it's", "back\\slash", ""):
        assert conninfo_to_dict(f"user={quote_value(value)}") == {"user": value}


def test_default_user_is_the_os_user(tmp_path: Path) -> None:
    import pwd

    info = resolve_target("", _env(tmp_path))
    assert info.user == pwd.getpwuid(os.geteuid()).pw_name
    assert info.dbname == info.user
    assert info.endpoints[0].is_socket and info.endpoints[0].port == 5432
