"""Bundled scenarios: find their files, load them into a cluster, run their client.

A scenario is a directory in the :mod:`scenarios` package holding the setup SQL
(``schema.sql``, ``data.sql``, ``indexes.sql``, run in that order by psql with a
``scale`` variable) and the client workload as pgbench scripts, run together
with their weights (``pgbench -f file@weight``). Everything here is a pure
description (:class:`Scenario`, :func:`client_command`) except :func:`load` and
:func:`run_client`, which run psql and pgbench against a cluster.

The plan changes a scenario was built to show (:attr:`Scenario.plan_changes`)
name the statements whose plans PostgreSQL 18 chooses differently from 16; their
:func:`~capture.normalize.fingerprint` is the class key a comparison reports.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal, Required, TypedDict, Unpack

import scenarios
from capture.normalize import fingerprint
from pgtraffic.errors import ServerError, UsageError
from pgtraffic.servers import Cluster

Protocol = Literal["simple", "extended", "prepared"]
PROTOCOLS: tuple[Protocol, ...] = ("simple", "extended", "prepared")
SCENARIOS_DIR = Path(scenarios.__path__[0])
"""Where the ``scenarios`` package (shipped as package data) lives."""
SETUP_FILES = ("schema.sql", "data.sql", "indexes.sql")

# A pgbench variable reference (``:name``), not the second colon of a ``::`` cast.
_VARIABLE = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class ClientScript:
    """One pgbench script of the client workload and its share of transactions."""

    name: str
    """The file name without ``.pgbench``, e.g. ``builds_by_project``."""
    path: Path
    weight: int

    @property
    def option(self) -> str:
        """The pgbench argument ``path@weight``."""
        return f"{self.path}@{self.weight}"

    def statements(self) -> tuple[str, ...]:
        """The script's SQL statements in order (comments and meta-commands left out)."""
        statements: list[str] = []
        current: list[str] = []
        for line in self.path.read_text().splitlines():
            stripped = line.strip()
            if not current and (not stripped or stripped.startswith(("--", "\\"))):
                continue
            current.append(line)
            if stripped.endswith(";"):
                statements.append("\n".join(current).rstrip().removesuffix(";"))
                current = []
        if current:
            statements.append("\n".join(current))
        return tuple(statements)


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A statement of the client that PostgreSQL ``since`` plans differently from 16."""

    script: str
    """The :class:`ClientScript` name holding the statement."""
    statement: int
    """Index of the statement in :meth:`ClientScript.statements`."""
    feature: str
    since: int
    """The first major version with the new behaviour."""
    shape_changes: bool
    """True when the plan tree differs; False when only its runtime does (fewer descents)."""
    explanation: str


@dataclass(frozen=True, slots=True)
class Scenario:
    """A bundled workload: setup SQL, weighted client scripts, and what it shows."""

    name: str
    directory: Path
    scripts: tuple[ClientScript, ...]
    sizes: tuple[tuple[str, int], ...]
    """Named sizes at scale 1; at ``scale`` each is ``max(1, floor(base * scale))``."""
    tables: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    """Rows of each table as a sum of ``multiple * size`` terms."""
    plan_changes: tuple[PlanChange, ...]

    @property
    def setup_files(self) -> tuple[Path, ...]:
        return tuple(self.directory / name for name in SETUP_FILES)

    def script(self, name: str) -> ClientScript:
        for script in self.scripts:
            if script.name == name:
                return script
        known = ", ".join(s.name for s in self.scripts)
        raise UsageError(f"scenario {self.name} has no script {name!r}", hint=f"one of: {known}")

    def row_counts(self, scale: float) -> dict[str, int]:
        """Rows per table that :func:`load` creates at ``scale`` (what data.sql computes)."""
        factor = Decimal(scale_text(scale))
        sizes = {name: max(1, math.floor(base * factor)) for name, base in self.sizes}
        return {
            table: sum(multiple * sizes[size] for size, multiple in terms)
            for table, terms in self.tables
        }

    def plan_change_sql(self, change: PlanChange) -> str:
        """The statement of ``change`` as written in its script (pgbench variables kept)."""
        return self.script(change.script).statements()[change.statement]

    def plan_change_fingerprints(self) -> dict[str, PlanChange]:
        """Class key (as capture computes it) of each plan-change statement."""
        result: dict[str, PlanChange] = {}
        for change in self.plan_changes:
            key, _parsed = fingerprint(instantiate(self.plan_change_sql(change)))
            result[key] = change
        return result


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What :func:`load` made: the database, its rows per table, and how long it took."""

    dbname: str
    scale: float
    rows: dict[str, int]
    seconds: float


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """pgbench's totals for one run of the client workload."""

    transactions: int
    failed: int
    tps: float
    command: tuple[str, ...]


def _gitlab(directory: Path) -> Scenario:
    weights = {
        "lookup_project": 30,
        "list_issues": 20,
        "mr_dashboard": 15,
        "users_in_list": 10,
        "finish_build": 10,
        "pipeline_stats": 5,
        "create_issue": 5,
        "builds_by_project": 3,
    }
    scripts = tuple(
        ClientScript(name, directory / f"{name}.pgbench", weight)
        for name, weight in weights.items()
    )
    # As data.sql computes them (the gset query at its top).
    sizes = (
        ("users", 50_000),
        ("groups", 5_000),
        ("projects", 20_000),
        ("issues", 300_000),
        ("merge_requests", 150_000),
        ("pipelines", 250_000),
        ("notes", 600_000),
    )
    tables = (
        ("users", (("users", 1),)),
        ("namespaces", (("groups", 1), ("users", 1))),
        ("projects", (("projects", 1),)),
        ("internal_ids", (("projects", 2),)),
        ("issues", (("issues", 1),)),
        ("merge_requests", (("merge_requests", 1),)),
        ("ci_pipelines", (("pipelines", 1),)),
        ("ci_builds", (("pipelines", 5),)),
        ("notes", (("notes", 1),)),
    )
    changes = (
        PlanChange(
            script="builds_by_project",
            statement=0,
            feature="btree skip scan",
            since=18,
            shape_changes=True,
            explanation=(
                "ci_builds has no index leading with project_id; 18 skip-scans "
                "(status, project_id, created_at) once per status value, 16 scans the table"
            ),
        ),
        PlanChange(
            script="users_in_list",
            statement=0,
            feature="IN (VALUES ...) turned into = ANY(array)",
            since=18,
            shape_changes=True,
            explanation=(
                "18 rewrites a constant VALUES list into one index scan with = ANY; "
                "16 joins a VALUES scan (hashed) to the primary key"
            ),
        ),
        PlanChange(
            script="users_in_list",
            statement=1,
            feature="btree = ANY: one descent for many values",
            since=17,
            shape_changes=False,
            explanation=(
                "same index scan on both; from 17 on, nearby values in a long IN list "
                "share index descents (EXPLAIN ANALYZE 'Index Searches' on 18)"
            ),
        ),
    )
    return Scenario("gitlab", directory, scripts, sizes, tables, changes)


_BUILDERS = {"gitlab": _gitlab}


def available_scenarios() -> tuple[str, ...]:
    return tuple(sorted(_BUILDERS))


def get_scenario(name: str = "gitlab") -> Scenario:
    """The bundled scenario ``name``, its files checked to be present."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise UsageError(
            f"no bundled scenario {name!r}", hint=f"one of: {', '.join(available_scenarios())}"
        )
    scenario = builder(SCENARIOS_DIR / name)
    missing = [
        str(path)
        for path in (*scenario.setup_files, *(s.path for s in scenario.scripts))
        if not path.is_file()
    ]
    if missing:
        raise UsageError(
            f"scenario {name} is incomplete: missing {', '.join(missing)}",
            hint="reinstall pgtraffic (the scenarios package data is missing)",
        )
    return scenario


def scale_text(scale: float) -> str:
    """``scale`` as psql and pgbench read it (``1``, ``0.05``); positive or UsageError."""
    if not math.isfinite(scale) or scale <= 0:
        raise UsageError(f"scale must be a positive number, not {scale!r}")
    text = repr(float(scale))
    return text.removesuffix(".0")


def instantiate(sql: str, value: int = 1) -> str:
    """A script statement with every pgbench ``:variable`` replaced by ``value``."""
    return _VARIABLE.sub(str(value), sql)


def load(
    cluster: Cluster,
    scenario: Scenario,
    scale: float = 1.0,
    *,
    dbname: str | None = None,
    timeout: float = 900,
) -> LoadResult:
    """Create database ``dbname`` (default: the scenario's name) and load the scenario.

    Runs the setup files with the cluster's own psql, stopping at the first error.
    """
    dbname = dbname or scenario.name
    text = scale_text(scale)
    exists = cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname = {_literal(dbname)}")
    if exists != "0":
        raise UsageError(
            f"database {dbname} already exists on {cluster.name}",
            hint="load into another database (dbname=...) or drop it first",
        )
    started = time.monotonic()
    cluster.psql(f"CREATE DATABASE {_identifier(dbname)}")
    args: list[str] = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"scale={text}"]
    for path in scenario.setup_files:
        args += ["-f", str(path)]
    result = cluster.run_tool("psql", *args, dbname=dbname, check=False, timeout=timeout)
    if result.returncode != 0:
        raise ServerError(
            f"loading scenario {scenario.name} (scale {text}) into {dbname} on "
            f"{cluster.name} failed: {result.stderr.strip()[-2000:]}",
            hint="the database is left as it was for inspection; drop it before retrying",
        )
    seconds = time.monotonic() - started
    return LoadResult(dbname, scale, count_rows(cluster, scenario, dbname), seconds)


def count_rows(cluster: Cluster, scenario: Scenario, dbname: str) -> dict[str, int]:
    """Exact row count of each scenario table in ``dbname``."""
    query = " UNION ALL ".join(
        f"SELECT '{table}', count(*) FROM {_identifier(table)}" for table, _ in scenario.tables
    )
    rows: dict[str, int] = {}
    for line in cluster.psql(query, dbname=dbname).splitlines():
        table, count = line.split("|")
        rows[table] = int(count)
    return rows


class ClientOptions(TypedDict, total=False):
    """How to run a scenario's client: :func:`client_command` and :func:`run_client`
    take these as keyword arguments."""

    seconds: Required[float]
    clients: Required[int]
    protocol: Required[Protocol]
    rate: float | None
    """Throttle to that many transactions per second in total (None: as fast as it can)."""
    scale: float
    """The scale the scenario was loaded at (1 when not given)."""
    dbname: str | None
    """The database it was loaded into (the scenario's name when not given)."""


def client_command(
    cluster: Cluster, scenario: Scenario, **options: Unpack[ClientOptions]
) -> list[str]:
    """The pgbench command running the scenario's weighted client against ``cluster``.

    Run it with ``cluster.env(dbname)`` as environment (host, port, user).
    """
    protocol, clients, seconds = options["protocol"], options["clients"], options["seconds"]
    rate = options.get("rate")
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}", hint=f"one of: {', '.join(PROTOCOLS)}")
    if clients < 1 or seconds < 1:
        raise UsageError("the client needs at least 1 client and 1 second")
    if rate is not None and rate <= 0:
        raise UsageError(f"rate must be positive, not {rate!r}")
    command = [
        str(cluster.installation.tool("pgbench")),
        "--no-vacuum",
        f"--protocol={protocol}",
        f"--time={math.ceil(seconds)}",
        f"--client={clients}",
        f"--jobs={min(clients, 2)}",
        f"--define=scale={scale_text(options.get('scale', 1.0))}",
    ]
    if rate is not None:
        command.append(f"--rate={rate:g}")
    for script in scenario.scripts:
        command += ["-f", script.option]
    command.append(options.get("dbname") or scenario.name)
    return command


_TRANSACTIONS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_TPS = re.compile(r"^tps = ([\d.]+)", re.M)


def parse_summary(output: str, command: list[str]) -> ClientSummary:
    """Totals from pgbench's report (``failed`` is 0 for pgbench before 15)."""
    transactions = _TRANSACTIONS.search(output)
    tps = _TPS.search(output)
    if transactions is None or tps is None:
        raise ServerError(f"pgbench printed no summary: {output.strip()[-1000:]}")
    failed = _FAILED.search(output)
    return ClientSummary(
        transactions=int(transactions.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        tps=float(tps.group(1)),
        command=tuple(command),
    )


def run_client(
    cluster: Cluster, scenario: Scenario, **options: Unpack[ClientOptions]
) -> ClientSummary:
    """Run the scenario's client with pgbench and return its totals.

    A client pgbench aborts (an SQL error it does not retry) is an error here.
    """
    command = client_command(cluster, scenario, **options)
    dbname = command[-1]
    result = cluster.run_tool(
        "pgbench", *command[1:], dbname=dbname, check=False, timeout=options["seconds"] + 120
    )
    if result.returncode != 0:
        scale = scale_text(options.get("scale", 1.0))
        raise ServerError(
            f"the {scenario.name} client failed on {cluster.name} "
            f"(pgbench exit {result.returncode}): {result.stderr.strip()[-2000:]}",
            hint=f"was the scenario loaded into database {dbname} at scale {scale}?",
        )
    return parse_summary(result.stdout, command)


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
