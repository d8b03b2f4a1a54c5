"""The whole pipeline in one call: capture, replay on two servers, compare.

``rehearse`` runs it on the user's logs and servers; ``demo`` first makes all of
that itself: a capture-ready PostgreSQL 16 loaded with the bundled scenario, its
client run for a short window, and two targets (16 and 18) restored to the state
before the window. Progress is reported through a :class:`Reporter`, so the CLI
decides how it looks; nothing here prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from capture.filters import Filters
from capture.pipeline import CaptureOptions, CaptureSummary, capture
from pgtraffic import scenario as scenarios
from pgtraffic.compare import Comparison, ExplainTargets, Thresholds, compare_files
from pgtraffic.compare.rounds import balanced_order
from pgtraffic.concurrent import SideRun, replay_together
from pgtraffic.errors import ServerError, UsageError
from pgtraffic.servers import Cluster, Profile, find_installation
from replay.connection import TargetInfo
from replay.runner import (
    FinalSummary,
    LiveStatus,
    ReplayPlan,
    ReplaySettings,
    replay_workload,
)

__all__ = [
    "DemoSettings",
    "RehearsalResult",
    "ReplaySettings",
    "Reporter",
    "ServerIdentity",
    "SilentReporter",
    "demo",
    "rehearse",
    "replay_once",
    "server_identity",
]


class Reporter(Protocol):
    """How the pipeline tells its caller what it is doing."""

    def step(self, title: str) -> contextlib.AbstractContextManager[None]:
        """A step starts; the context ends when it is done (or failed)."""
        ...

    def note(self, text: str) -> None:
        """A fact worth showing (a DSN, a count, a path)."""
        ...

    def capture_progress(self) -> Callable[[int, int | None], None] | None:
        """A callback (bytes done, bytes total when known) for capture, or None."""
        ...

    def replay_progress(self, label: str, total: int) -> Callable[[LiveStatus], None] | None:
        """A callback for a replay of ``total`` statements, or None."""
        ...


class SilentReporter:
    """Reports nothing (tests, library use)."""

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        yield

    def note(self, text: str) -> None:
        return None

    def capture_progress(self) -> Callable[[int, int | None], None] | None:
        return None

    def replay_progress(self, label: str, total: int) -> Callable[[LiveStatus], None] | None:
        return None


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What tells one running PostgreSQL server from another, read from the server.

    ``system_identifier`` is shared by a cluster and its copies (a restored base
    backup, a standby), so the postmaster's start time and port are part of the
    identity; the data directory too when the role may read it.
    """

    system_identifier: str | None
    data_directory: str | None
    started: str
    port: str
    database: str
    address: str

    def same_server(self, other: ServerIdentity) -> bool:
        if (self.system_identifier, self.started, self.port) != (
            other.system_identifier,
            other.started,
            other.port,
        ):
            return False
        known = self.data_directory is not None and other.data_directory is not None
        return not known or self.data_directory == other.data_directory

    def describe(self) -> str:
        parts = [f"{self.address}, database {self.database}"]
        if self.system_identifier:
            parts.append(f"system identifier {self.system_identifier}")
        if self.data_directory:
            parts.append(f"data directory {self.data_directory}")
        return ", ".join(parts)


def server_identity(dsn: str) -> ServerIdentity | None:
    """Read a server's identity; None when it cannot be reached (the replay says why)."""
    import psycopg

    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except (psycopg.Error, ValueError):
        return None
    with conn:

        def one(sql: str) -> str | None:
            try:
                row = conn.execute(sql.encode()).fetchone()
            except psycopg.Error:  # e.g. data_directory needs pg_read_all_settings
                return None
            return None if row is None or row[0] is None else str(row[0])

        return ServerIdentity(
            system_identifier=one("SELECT system_identifier FROM pg_control_system()"),
            data_directory=one("SELECT current_setting('data_directory')"),
            started=one("SELECT pg_postmaster_start_time()") or "?",
            port=one("SELECT current_setting('port')") or "?",
            database=one("SELECT current_database()") or "?",
            address=one(
                "SELECT coalesce(host(inet_server_addr()), 'local socket') || ':' "
                "|| current_setting('port')"
            )
            or "?",
        )


def check_two_servers(
    baseline_dsn: str,
    candidate_dsn: str,
    *,
    allow_same: bool,
    reporter: Reporter,
    restored: bool = False,
    concurrent: bool = False,
) -> None:
    """Refuse baseline and candidate being one server and database (the candidate
    would replay on the state the baseline replay left) unless ``allow_same`` or
    ``restored`` (the state is reset before each replay); always when ``concurrent``
    (both replays would write into one database at once)."""
    a, b = server_identity(baseline_dsn), server_identity(candidate_dsn)
    if a is None or b is None:
        if baseline_dsn.strip() != candidate_dsn.strip():
            return  # an unreachable server: the replay onto it says so
        same_db, where = True, f"the DSN {baseline_dsn}"
    elif not a.same_server(b):
        return
    else:
        same_db, where = a.database == b.database, a.describe()
        if not same_db:
            reporter.note(
                f"baseline and candidate are one server ({a.address}), databases "
                f"{a.database} and {b.database}: an A/A run of one server"
            )
            return
    if concurrent:
        raise UsageError(
            f"--concurrent replays onto --baseline and --candidate at the same time, and "
            f"they are the same server and database ({where})",
            hint="give two servers (or two databases), or leave out --concurrent",
        )
    if allow_same or restored:
        state = (
            "reset before each replay"
            if restored
            else "the candidate replays on the state the baseline replay left"
        )
        reporter.note(f"baseline and candidate are the same server ({where}): an A/A run; {state}")
        return
    raise UsageError(
        f"--baseline and --candidate are the same server and database ({where}): the "
        "candidate replay would run on the state the baseline replay left, and the "
        "comparison would compare a server with itself",
        hint="give two servers restored to the pre-capture state, or pass "
        "--allow-same-server for an A/A run on one server",
    )


@dataclass(frozen=True)
class RehearsalResult:
    workload: Path
    capture: CaptureSummary
    baseline_results: Path
    candidate_results: Path
    comparison: Comparison
    replay_summaries: tuple[FinalSummary, FinalSummary]
    servers: dict[str, str] = field(default_factory=dict)
    """DSNs of servers left running (demo --keep)."""
    rounds: tuple[tuple[Path, ...], tuple[Path, ...]] = ((), ())
    """Every round's results files, baseline and candidate (the first are the above)."""
    concurrent: bool = False
    """Each round replayed onto both servers at the same time."""


def replay_once(
    workload_path: Path,
    dsn: str,
    results: Path,
    settings: ReplaySettings,
    reporter: Reporter,
    label: str,
) -> FinalSummary:
    """Replay a workload onto one server, with progress; returns the final summary."""
    progress: list[Callable[[LiveStatus], None] | None] = [None]

    def on_target(target: TargetInfo, plan: ReplayPlan) -> None:
        reporter.note(
            f"{label}: PostgreSQL {target.server_version} at {target.host}:{target.port}, "
            f"{plan.replayable:,} statements"
        )
        progress[0] = reporter.replay_progress(label, plan.replayable)

    def on_status(status: LiveStatus) -> None:
        if progress[0] is not None:
            progress[0](status)

    run = replay_workload(
        workload_path, results, dsn, settings, on_target=on_target, on_status=on_status
    )
    return run.final


def rehearse(
    logs: Sequence[str],
    baseline_dsn: str,
    candidate_dsn: str,
    workdir: Path,
    *,
    capture_options: CaptureOptions | None = None,
    replay: ReplaySettings | None = None,
    thresholds: Thresholds | None = None,
    explain: bool = True,
    reset: Callable[[str], None] | None = None,
    reporter: Reporter | None = None,
    allow_same_server: bool = False,
    rounds: int = 1,
    concurrent: bool = False,
) -> RehearsalResult:
    """Capture ``logs``, replay the workload on both servers, compare the runs.

    With ``rounds`` > 1 each server is replayed that many times in the balanced order
    A B B A A B ... (:func:`pgtraffic.compare.rounds.balanced_order`), ``reset``
    before each replay, and compare judges across the rounds.

    ``reset(label)``, when given, is called before each replay to put that server
    back into the pre-capture state (the demo restores a dump; users can pass a
    script). Replays run one after the other so they do not compete for the machine;
    with ``concurrent`` each round replays onto both servers at the same time (both
    reset first), so the machine's noise during a round falls on both sides alike.
    Baseline and candidate being one server and database is refused (UsageError)
    unless ``allow_same_server`` or ``reset`` (which restores the state in between),
    and always with ``concurrent``.
    """
    rep = reporter or SilentReporter()
    check_two_servers(
        baseline_dsn,
        candidate_dsn,
        allow_same=allow_same_server,
        reporter=rep,
        restored=reset is not None,
        concurrent=concurrent,
    )
    settings = replay or ReplaySettings()
    workdir.mkdir(parents=True, exist_ok=True)
    workload = workdir / "workload.pgtw"
    with rep.step("Capture the logs into a workload"):
        summary = capture(
            list(logs),
            workload,
            capture_options or CaptureOptions(),
            progress=rep.capture_progress(),
        )
        rep.note(
            f"{summary.statements:,} statements in {summary.sessions:,} sessions, "
            f"{summary.classes:,} query classes -> {workload}"
        )
    dsns = {"baseline": baseline_dsn, "candidate": candidate_dsn}
    if rounds > 1 and reset is None:
        rep.note(
            "no reset between rounds: each replay runs on the state the previous one left "
            "(fine for a read-only workload; otherwise give a reset command)"
        )
    plan = _Rounds(workload, dsns, workdir, settings, rep, rounds, reset)
    results, finals = plan.together() if concurrent else plan.alternating()
    what = "the two replays" if rounds == 1 else f"the {2 * rounds} replays across rounds"
    what += " (replayed at the same time)" if concurrent else ""
    with rep.step(f"Compare {what}" + (" and their plans" if explain else "")):
        comparison = compare_files(
            results["baseline"],
            results["candidate"],
            thresholds=thresholds,
            workload=workload,
            explain=ExplainTargets(baseline_dsn, candidate_dsn) if explain else None,
        )
    return RehearsalResult(
        workload=workload,
        capture=summary,
        baseline_results=results["baseline"][0],
        candidate_results=results["candidate"][0],
        comparison=comparison,
        replay_summaries=(finals["baseline"][0], finals["candidate"][0]),
        rounds=(tuple(results["baseline"]), tuple(results["candidate"])),
        concurrent=concurrent,
    )


class _Rounds:
    """The replays of a rehearsal: one after the other, or both sides at once."""

    def __init__(
        self,
        workload: Path,
        dsns: dict[str, str],
        workdir: Path,
        settings: ReplaySettings,
        reporter: Reporter,
        rounds: int,
        reset: Callable[[str], None] | None,
    ) -> None:
        self.workload, self.dsns, self.workdir = workload, dsns, workdir
        self.settings, self.rep, self.rounds, self.reset = settings, reporter, rounds, reset
        self.results: dict[str, list[Path]] = {"baseline": [], "candidate": []}
        self.finals: dict[str, list[FinalSummary]] = {"baseline": [], "candidate": []}

    def _next(self, label: str) -> tuple[Path, str]:
        """The results file of this side's next round, and the round's title."""
        k = len(self.results[label]) + 1
        path = self.workdir / (f"{label}.pgtr" if k == 1 else f"{label}-{k}.pgtr")
        return path, label if self.rounds == 1 else f"{label} (round {k} of {self.rounds})"

    def _reset(self, label: str) -> None:
        if self.reset is not None:
            with self.rep.step(f"Reset the {label} server to the pre-capture state"):
                self.reset(label)

    def alternating(self) -> tuple[dict[str, list[Path]], dict[str, list[FinalSummary]]]:
        """A B B A A B ...: each replay alone on the machine."""
        for side in balanced_order(self.rounds):
            label = "baseline" if side == "A" else "candidate"
            path, title = self._next(label)
            self._reset(label)
            with self.rep.step(f"Replay onto the {title} server"):
                final = replay_once(
                    self.workload, self.dsns[label], path, self.settings, self.rep, label
                )
            self.finals[label].append(final)
            self.results[label].append(path)
        return self.results, self.finals

    def together(self) -> tuple[dict[str, list[Path]], dict[str, list[FinalSummary]]]:
        """Each round: both sides reset (in the balanced order), then both replayed at once."""
        order = balanced_order(self.rounds)
        for k in range(self.rounds):
            for side in order[2 * k : 2 * k + 2]:
                self._reset("baseline" if side == "A" else "candidate")
            runs = []
            for label in ("baseline", "candidate"):
                path, _ = self._next(label)
                runs.append(SideRun(label, self.dsns[label], path))
            title = "" if self.rounds == 1 else f" (round {k + 1} of {self.rounds})"
            with self.rep.step(f"Replay onto both servers at the same time{title}"):
                finals, _ = replay_together(self.workload, runs, self.settings, self.rep)
            for run in runs:
                self.finals[run.label].append(finals[run.label])
                self.results[run.label].append(run.results)
        return self.results, self.finals


@dataclass(frozen=True, slots=True)
class DemoSettings:
    seconds: float = 30.0
    clients: int = 4
    scale: float = 1.0
    baseline_major: int = 16
    candidate_major: int = 18
    rate: float | None = 100.0
    """Client transactions per second in total (None: as fast as it goes). The default
    leaves the 2-core machine it was made for unsaturated, so replays keep to schedule."""
    keep: bool = False
    rounds: int = 1
    """Replays per server, in the order A B B A A B ..., each on freshly restored data."""
    candidate_sql: str | None = None
    """SQL run on the candidate after each restore: the change under test (an index
    dropped, a setting), for seeing what a regression looks like."""
    concurrent: bool = False
    """Replay each round onto both targets at the same time (see :func:`rehearse`)."""


DEMO_DB = "gitlab"


def demo(
    workdir: Path | None = None,
    settings: DemoSettings | None = None,
    *,
    replay: ReplaySettings | None = None,
    thresholds: Thresholds | None = None,
    reporter: Reporter | None = None,
) -> RehearsalResult:
    """Capture the bundled scenario on PostgreSQL 16 and rehearse its move to 18."""
    rep = reporter or SilentReporter()
    cfg = settings or DemoSettings()
    work = workdir or Path(tempfile.mkdtemp(prefix="pgtraffic-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    scenario = scenarios.get_scenario("gitlab")
    clusters: list[Cluster] = []
    try:
        with rep.step(f"Start a capture-ready PostgreSQL {cfg.baseline_major}"):
            source = Cluster.create(major=cfg.baseline_major, profile=Profile.CAPTURE)
            clusters.append(source)
            rep.note(f"source: {source.dsn(DEMO_DB)}")
        with rep.step(f"Load the {scenario.name} scenario (scale {cfg.scale:g})"):
            loaded = scenarios.load(source, scenario, cfg.scale, dbname=DEMO_DB)
            rep.note(f"{sum(loaded.rows.values()):,} rows in {loaded.seconds:.1f} s")
        dump = work / "pre-capture.dump"
        with rep.step("Dump the pre-capture state"):
            source.run_tool("pg_dump", "-Fc", "-f", str(dump), dbname=DEMO_DB)
        window_start = dt.datetime.now(dt.UTC)
        with rep.step(
            f"Run the client for {cfg.seconds:g} s ({cfg.clients} clients, half of them "
            "with prepared statements)"
        ):
            _run_clients(source, scenario, cfg)
        with rep.step("Start the targets"):
            targets = {}
            for label, major in (
                ("baseline", cfg.baseline_major),
                ("candidate", cfg.candidate_major),
            ):
                cluster = Cluster.create(find_installation(major), profile=Profile.TARGET)
                clusters.append(cluster)
                targets[label] = cluster
                rep.note(f"{label}: PostgreSQL {cluster.version} at {cluster.dsn(DEMO_DB)}")

        def reset(label: str) -> None:
            _restore(targets[label], dump)
            if label == "candidate" and cfg.candidate_sql:
                targets[label].psql(cfg.candidate_sql, dbname=DEMO_DB)

        capture_options = CaptureOptions(filters=Filters(databases=(DEMO_DB,), since=window_start))
        logs = [str(p) for p in source.log_files()]
        result = rehearse(
            logs,
            targets["baseline"].dsn(DEMO_DB),
            targets["candidate"].dsn(DEMO_DB),
            work,
            capture_options=capture_options,
            replay=replay,
            thresholds=thresholds,
            explain=True,
            reset=reset,
            reporter=rep,
            rounds=cfg.rounds,
            concurrent=cfg.concurrent,
        )
        servers = {}
        if cfg.keep:
            for cluster in clusters:
                cluster.detach()
                servers[cluster.name] = cluster.dsn(DEMO_DB)
        return dataclasses.replace(result, servers=servers)
    finally:
        if not cfg.keep:
            for cluster in clusters:
                cluster.stop()


def _run_clients(source: Cluster, scenario: scenarios.Scenario, cfg: DemoSettings) -> None:
    """Two pgbench processes at once: simple protocol and prepared statements."""
    simple = max(1, cfg.clients // 2)
    prepared = max(1, cfg.clients - simple)
    rate = None if cfg.rate is None else cfg.rate / 2
    procs = []
    runs: tuple[tuple[scenarios.Protocol, int], ...] = (("simple", simple), ("prepared", prepared))
    for protocol, clients in runs:
        cmd = scenarios.client_command(
            source,
            scenario,
            seconds=cfg.seconds,
            clients=clients,
            protocol=protocol,
            rate=rate,
            scale=cfg.scale,
            dbname=DEMO_DB,
        )
        procs.append(
            subprocess.Popen(
                cmd,
                env=source.env(DEMO_DB),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=cfg.seconds + 300)
        if proc.returncode != 0:
            failures.append(err.strip()[-1000:])
    if failures:
        raise ServerError("the scenario client failed: " + " | ".join(failures))


def _restore(cluster: Cluster, dump: Path) -> None:
    """(Re)create the demo database on ``cluster`` from the pre-capture dump."""
    cluster.psql(f'DROP DATABASE IF EXISTS "{DEMO_DB}" WITH (FORCE)')
    cluster.psql(f'CREATE DATABASE "{DEMO_DB}"')
    cluster.run_tool("pg_restore", "--no-owner", "-d", DEMO_DB, str(dump), dbname=DEMO_DB)
    cluster.psql("ANALYZE", dbname=DEMO_DB)
