"""The same starting state at every step of a sweep.

``template``: before the first step each database the workload uses is copied once
(``CREATE DATABASE copy TEMPLATE db``); before every later step the database is
dropped and made again from that copy (with ``STRATEGY = FILE_COPY`` on PostgreSQL
15+, a file copy instead of WAL-logging every block). ``command``: the user's own
snapshot restore, run through the shell. ``none``: read-only workloads need no reset.
Reset time is measured and reported apart from the replay's.
"""

from __future__ import annotations

import enum
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgtraffic.errors import PgTrafficError, UsageError
from replay.conninfo import libpq_dsn

TEMPLATE_SUFFIX = "__pgtraffic_start"


class ResetMode(enum.StrEnum):
    TEMPLATE = "template"
    COMMAND = "command"
    NONE = "none"


class ResetError(PgTrafficError):
    """The starting state could not be restored before a step."""

    exit_code = 4


@dataclass(frozen=True, slots=True)
class Reset:
    """How to restore the starting state of ``databases`` on the target at ``dsn``."""

    mode: ResetMode
    dsn: str
    databases: tuple[str, ...]
    command: str | None = None

    def __post_init__(self) -> None:
        libpq_dsn(self.dsn, os.environ)  # a malformed DSN: a UsageError naming the part
        if self.mode is ResetMode.COMMAND and not self.command:
            raise UsageError("--reset command needs --reset-command CMD")
        if self.mode is ResetMode.TEMPLATE and not self.databases:
            raise UsageError("--reset template: the workload names no database to copy")

    def prepare(self) -> float:
        """Before the first step: copy each database; returns the seconds it took."""
        if self.mode is not ResetMode.TEMPLATE:
            return 0.0
        start = time.monotonic()
        with self._admin() as conn:
            strategy = _strategy(conn)
            for db in self.databases:
                copy = db + TEMPLATE_SUFFIX
                _drop(conn, copy)
                _create(conn, copy, db, strategy)
        return time.monotonic() - start

    def restore(self) -> float:
        """Before a later step: the starting state again; returns the seconds it took."""
        start = time.monotonic()
        if self.mode is ResetMode.TEMPLATE:
            with self._admin() as conn:
                strategy = _strategy(conn)
                for db in self.databases:
                    _drop(conn, db)
                    _create(conn, db, db + TEMPLATE_SUFFIX, strategy)
        elif self.mode is ResetMode.COMMAND:
            assert self.command is not None
            done = subprocess.run(
                self.command, shell=True, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise ResetError(
                    f"--reset-command exited with {done.returncode}: "
                    f"{(done.stderr or done.stdout).strip()[-500:]}",
                    hint="run the command by hand to see why; the sweep stopped before this step",
                )
        return time.monotonic() - start

    def finish(self) -> None:
        """After the sweep: drop the copies made by :meth:`prepare`."""
        if self.mode is not ResetMode.TEMPLATE:
            return
        with self._admin() as conn:
            for db in self.databases:
                _drop(conn, db + TEMPLATE_SUFFIX)

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A connection to a database the reset does not drop (postgres, else template1)."""
        maintenance = "template1" if "postgres" in self.databases else "postgres"
        defaults = {"connect_timeout": "10", "fallback_application_name": "pgtraffic reset"}
        conninfo = libpq_dsn(self.dsn, os.environ, dbname=maintenance, defaults=defaults)
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise ResetError(f"cannot connect to reset the target: {exc}") from exc


def _strategy(conn: psycopg.Connection[tuple[object, ...]]) -> sql.Composable:
    return sql.SQL(" STRATEGY = FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")


def _drop(conn: psycopg.Connection[tuple[object, ...]], db: str) -> None:
    force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
    try:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(db), force))
    except psycopg.Error as exc:
        raise ResetError(f"cannot drop database {db} to reset it: {exc}") from exc


def _create(
    conn: psycopg.Connection[tuple[object, ...]], db: str, template: str, strategy: sql.Composable
) -> None:
    stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
        sql.Identifier(db), sql.Identifier(template), strategy
    )
    try:
        conn.execute(stmt)
    except psycopg.Error as exc:
        raise ResetError(
            f"cannot create database {db} from {template}: {exc}",
            hint="no other session may be connected to the template database; "
            "close them, or use --reset command with your own snapshot restore",
        ) from exc


def databases_of(names: Sequence[str | None], default: str) -> tuple[str, ...]:
    """The distinct databases sessions log into (``default`` for unnamed ones)."""
    out: list[str] = []
    for name in names:
        db = name or default
        if db not in out:
            out.append(db)
    return tuple(out)
