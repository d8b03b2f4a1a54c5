"""``pgtraffic replay`` and the ``results`` group (registered on the root app by pgtraffic.cli).

Handlers parse options, call :func:`replay.runner.replay_workload` (or the results
readers) and print. Everything heavy is imported when a handler runs, so building the
app for ``--help`` loads none of it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capture.errors import PgTrafficError, UsageError
from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from replay.connection import TargetInfo
    from replay.report import ReplayReport
    from replay.results import Results
    from replay.runner import LiveStatus, ReplayPlan, ReplaySettings, TargetCheck

results_app = typer.Typer(
    help="Work with results files written by pgtraffic replay.\n\n"
    "Example: pgtraffic results report run.pgtr; pgtraffic results export run.pgtr -o run.csv",
    no_args_is_help=True,
    rich_markup_mode=None,
)

REPLAY_HELP = """Replay a workload onto a PostgreSQL server with its timing and concurrency.

One connection per captured session, as its user and database (--map-user,
--map-database), opened and closed at the captured times; each statement sent at
its captured offset divided by --speed. Results (timing, rows, errors of every
statement) are written to --output as the replay runs, so an interrupted replay
leaves a readable file (an existing one is replaced only with --force, and
never the workload itself). The closing report says whether the run kept to schedule.

\b
Examples:
    pgtraffic replay monday.pgtw --target postgresql://app@pg18:5432/shop -o pg18.pgtr
    pgtraffic replay monday.pgtw --dry-run --json
    pgtraffic replay monday.pgtw -t postgresql://pg18/shop -o x4.pgtr --speed 4 --workers 2

Before it sends anything, replay shows the target's identity and checks it: a
target that is the capture's source (capture --source-dsn) is refused, so are
logins (user@database) it lacks, and writing onto a server not marked as a replay
target (ALTER DATABASE db SET pgtraffic.replay_target = on) needs a yes at the
prompt or --allow-writes. --read-only sends only what cannot write.

Exit codes: 0 done (errors of replayed statements are results, not failures),
2 bad options, 3 unusable workload, 5 target unreachable, 6 incomplete (connections
refused or statements not sent: see the report), 7 refused before starting (the
target is the source, logins are missing, writes not confirmed), 130 interrupted.
"""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def report_table(report: ReplayReport) -> Table:
    """The closing report as a two-column rich table."""
    from rich.table import Table

    table = Table(title="Replay report", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rows: list[tuple[str, str]] = [
        ("completed", _completed(report)),
        ("run time", "-" if report.run_time_s is None else f"{report.run_time_s:.2f} s"),
        ("statements", f"{report.statements}"),
        (
            "statements/s",
            "-" if report.statements_per_s is None else f"{report.statements_per_s:,.0f}",
        ),
        ("sessions / connections", f"{report.sessions} / {report.connections_opened} opened"),
        ("connect failures", _counts(report.connect_failures)),
        *(("  could not log in", f.describe()) for f in report.login_failures[:10]),
        ("connections lost", _counts(report.connections_lost)),
        ("reconnects", str(report.reconnects)),
        ("schedule", str(report.fidelity)),
    ]
    if report.max_speed:
        rows.append(("lag", "n/a (--max-speed)"))
    else:
        rows.append(
            (
                "lag p50 / p99 / max",
                f"{_ms(report.lag_p50_ms)} / {_ms(report.lag_p99_ms)} / {_ms(report.lag_max_ms)}",
            )
        )
        rows.append(
            (
                "replayer's own lag p99 / max",
                f"{_ms(report.replayer_lag_p99_ms)} / {_ms(report.replayer_lag_max_ms)}",
            )
        )
    rows += [
        (
            "latency p50 / p95 / p99",
            f"{_ms(report.latency_p50_ms)} / {_ms(report.latency_p95_ms)} / "
            f"{_ms(report.latency_p99_ms)}",
        ),
        ("errors by SQLSTATE", _counts(report.errors)),
        ("unreplayable (skipped)", _counts(report.unreplayable)),
    ]
    if report.read_only:
        skipped = report.read_only_skipped
        rows.append(
            (
                "not sent (--read-only)",
                f"{sum(skipped.values())} statements in {len(skipped)} classes that may write",
            )
        )
    rows += report.sync_rows()
    div = report.divergence
    rate = "-" if div.agreement is None else f"{div.agreement:.2%}"
    rows += [
        ("agreement with original", f"{rate} of {div.compared}"),
        ("failed now, succeeded originally", _counts(div.new_errors)),
        ("succeeded now, failed originally", _counts(div.resolved_errors)),
        ("failed both, different SQLSTATE", _counts(div.changed_errors)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _print_report(report: ReplayReport, as_json: bool, out: Console, err: Console) -> None:
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    out.print(report_table(report))
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _print_plan(plan: ReplayPlan, as_json: bool, out: Console) -> None:
    from rich.table import Table

    if as_json:
        out.print_json(json.dumps({"dry_run": True, **plan.to_json()}))
        return
    table = Table(title="Replay plan (dry run)", show_header=False, title_justify="left")
    for key, value in plan.to_json().items():
        table.add_row(key, str(value))
    out.print(table)


class _LiveBar:
    """The replay's progress bar on stderr, fed by the runner's callbacks."""

    def __init__(self, err: Console, settings: ReplaySettings, enabled: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.err = err
        self.speed = None if settings.max_speed else settings.speed
        self.bar: Progress = Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            TextColumn("{task.fields[what]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not enabled,
            transient=False,
        )
        self.task = self.bar.add_task("replay", total=1, what="")
        self.by_time = False
        self.last = 0.0
        self.started = False
        """The target answered and the replay began writing its results file."""

    def on_target(self, info: TargetInfo, plan: ReplayPlan) -> None:
        total_us = plan.intended_duration_us
        about = "" if total_us is None else f", about {total_us / 1e6:.1f} s"
        self.err.print(
            f"target: [bold]{info.host}[/]:{info.port} PostgreSQL {info.server_version}, "
            f"database {info.database}, user {info.user}; "
            f"{plan.sessions} sessions, {plan.replayable} statements{about}",
            highlight=False,
        )
        from replay.runner import target_warnings

        for warning in target_warnings(info, plan):
            self.err.print(f"[yellow]warning:[/] {warning}", highlight=False)
        self.started = True
        self.by_time = bool(total_us)
        self.bar.update(self.task, total=(total_us or plan.replayable) or 1)
        self.bar.start()

    def on_status(self, status: LiveStatus) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and not status.done:
            return
        self.last = now
        done = status.replayed_capture_us / (self.speed or 1) if self.by_time else status.statements
        self.bar.update(
            self.task,
            completed=done,
            what=(
                f"captured {status.replayed_capture_us / 1e6:.1f}s  "
                f"statements {status.statements}  lag {status.last_lag_us / 1000:.1f}ms  "
                f"errors {status.errors}  conns {status.open_connections}"
            ),
        )


def replay_command(
    workload: Annotated[
        Path, typer.Argument(metavar="WORKLOAD", help="Workload file written by pgtraffic capture.")
    ],
    target: opt.Target = None,
    output: opt.ResultsOutput = None,
    speed: opt.Speed = opt.DEFAULT_SPEED,
    max_speed: opt.MaxSpeed = False,
    jump_idle: opt.JumpIdle = False,
    workers: opt.Workers = 1,
    sync: opt.Sync = opt.DEFAULT_SYNC,
    sync_timeout: opt.SyncTimeout = opt.DEFAULT_SYNC_TIMEOUT,
    sync_in_blocks: opt.SyncInBlocks = False,
    map_user: opt.MapUser = None,
    map_database: opt.MapDatabase = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check and schedule the workload, print the plan; no connection."
        ),
    ] = False,
    as_json: opt.Json = False,
    progress: opt.Progress = True,
    reconnect_interval: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Seconds between reconnect attempts of a session that lost its connection.",
            rich_help_panel=opt.REPLAY,
        ),
    ] = 1.0,
    loop: Annotated[
        str,
        typer.Option(
            metavar="[auto|uvloop|asyncio]",
            help="Event loop: auto (uvloop when installed), uvloop or asyncio.",
            rich_help_panel=opt.REPLAY,
        ),
    ] = "auto",
    via_asyncpg: Annotated[
        bool,
        typer.Option(
            "--via-asyncpg",
            help="Send statements through asyncpg's query paths instead of pgtraffic's own "
            "leaner wire path (slower, and named statements get asyncpg's names; for "
            "comparison or as a fallback).",
            rich_help_panel=opt.REPLAY,
        ),
    ] = False,
    read_only: opt.ReadOnly = False,
    allow_writes: opt.AllowWrites = False,
    allow_missing_logins: opt.AllowMissingLogins = False,
    target_is_copy: opt.TargetIsCopy = False,
    force: opt.Force = False,
) -> None:
    settings = opt.replay_settings(
        speed=speed,
        max_speed=max_speed,
        jump_idle=jump_idle,
        workers=workers,
        sync=sync,
        sync_timeout=sync_timeout,
        sync_in_blocks=sync_in_blocks,
        map_user=map_user,
        map_database=map_database,
        reconnect_interval=reconnect_interval,
        loop=loop,
        via_asyncpg=via_asyncpg,
        read_only=read_only,
        allow_missing_logins=allow_missing_logins,
        target_is_copy=target_is_copy,
    )
    from rich.console import Console

    out, err = Console(), Console(stderr=True)
    if dry_run:
        from replay.runner import prepare_replay

        _print_plan(prepare_replay(workload, settings, target or "").plan, as_json, out)
        return
    if target is None:
        raise UsageError(
            "--target is required to replay", hint="--target postgresql://user@host:5432/postgres"
        )
    if output is None:
        raise UsageError("--output/-o is required to replay", hint="-o run.pgtr")
    from capture.outputs import check_output

    check_output(output, inputs=[workload], force=force)
    _replay(
        workload,
        output,
        target,
        settings,
        as_json=as_json,
        progress=progress,
        out=out,
        err=err,
        allow_writes=allow_writes,
    )


def _replay(
    workload: Path,
    output: Path,
    target: str,
    settings: ReplaySettings,
    *,
    as_json: bool,
    progress: bool,
    out: Console,
    err: Console,
    allow_writes: bool = False,
) -> None:
    from replay.report import build_report
    from replay.results import read_results
    from replay.runner import replay_workload

    live = _LiveBar(err, settings, progress)
    report: ReplayReport | None = None
    try:
        replay_workload(
            workload,
            output,
            target,
            settings,
            on_target=live.on_target,
            on_status=live.on_status,
            approve=lambda check: _approve(check, err, allow_writes),
        )
    finally:
        live.bar.stop()
        # Also after Ctrl-C or a failure: report what ran (if anything did; an old file
        # left by an earlier run is not this replay's).
        if live.started:
            with contextlib.suppress(PgTrafficError):
                report = build_report(read_results(output))
                _print_report(report, as_json, out, err)
                err.print(f"results: {output}", highlight=False)
    if report is not None:
        _exit_if_incomplete(report, err)


INCOMPLETE_EXIT = 6
"""The replay ran to its end, but sessions could not connect or statements were not sent."""


def _approve(check: TargetCheck, err: Console, allow_writes: bool) -> bool:
    """Show the target's identity; before writes onto a server not marked as a replay
    target, ask (on a terminal) or refuse (without one, unless --allow-writes)."""
    import sys

    ident = check.identity
    err.print(f"target identity: {ident.describe()}", highlight=False)
    for missing in check.missing:  # only here with --allow-missing-logins
        err.print(f"[yellow]warning:[/] login will fail: {missing.describe()}", highlight=False)
    if check.statistics.tables:
        err.print(f"[yellow]warning:[/] {check.statistics.warning()}", highlight=False)
    if check.read_only:
        skipped = len(check.writes.skipped_by_read_only)
        err.print(f"--read-only: {skipped} query classes that may write will not be sent")
        return True
    if not check.unprepared_writes or allow_writes:
        return True
    err.print(
        f"[bold yellow]{check.writes.statements} statements ({len(check.writes.writes)} query "
        "classes) may write, and this server is not marked as a replay target.[/]",
        highlight=False,
    )
    if not sys.stdin.isatty():
        return False
    return typer.confirm("Replay the workload's writes onto this server?", default=False)


def _completed(report: ReplayReport) -> str:
    from replay.sqlstates import NO_CONNECTION

    if not report.completed:
        return "NO (interrupted)"
    if report.nothing_connected:
        return "INCOMPLETE: no session could connect, nothing was replayed"
    refused = sum(report.connect_failures.values())
    unsent = report.errors.get(NO_CONNECTION, 0)
    if refused or unsent:
        return f"ran to the end, INCOMPLETE: {refused} connects failed, {unsent} statements unsent"
    return "yes"


def _exit_if_incomplete(report: ReplayReport, err: Console) -> None:
    """A replay that could not send part of the workload must not pass for a clean one."""
    from replay.sqlstates import NO_CONNECTION

    refused = sum(report.connect_failures.values())
    unsent = report.errors.get(NO_CONNECTION, 0)
    if report.nothing_connected:
        named = "; ".join(f.describe() for f in report.login_failures[:5]) or "no attempt"
        err.print(
            f"[bold red]incomplete replay: no session could connect:[/] {named}. Nothing "
            "was replayed: log in as roles and databases the target has (--map-user "
            "OLD=NEW, --map-database OLD=NEW) or create them there",
            highlight=False,
        )
        raise typer.Exit(INCOMPLETE_EXIT)
    if not refused and not unsent:
        return
    codes = ", ".join(f"{k} x{v}" for k, v in report.connect_failures.items()) or "none"
    err.print(
        f"[bold red]incomplete replay:[/] {refused} connection attempts failed ({codes}) "
        f"and {unsent} of {report.statements} statements were not sent; the results "
        "describe only part of the workload",
        highlight=False,
    )
    for failure in report.login_failures[:5]:
        err.print(f"  could not log in: {failure.describe()}", highlight=False)
    raise typer.Exit(INCOMPLETE_EXIT)


AcceptDamaged = Annotated[
    bool,
    typer.Option(
        "--accept-damaged",
        help="Read a results file damaged in the middle (a checksum that fails): only "
        "its intact parts, and the output says it is incomplete. Without it such a "
        "file is refused.",
    ),
]


def _read_checked(path: Path, accept_damaged: bool, err: Console) -> Results:
    """Read a results file for ``results`` commands; say on stderr when it is incomplete."""
    from replay.results import read_results

    results = read_results(path, accept_damaged=accept_damaged)
    for why in results.incompleteness():
        err.print(f"[bold yellow]incomplete results:[/] {why}", highlight=False)
    return results


@results_app.command("export")
def export_command(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="Results file (.pgtr).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="CSV file to write.")
    ],
    force: opt.Force = False,
    accept_damaged: AcceptDamaged = False,
) -> None:
    """Write a results file as CSV (one row per statement, with a header row).

    The CSV is written under a temporary name and renamed when complete; an
    existing file is replaced only with --force. Rows of an incomplete run (killed,
    cut short, or damaged and read with --accept-damaged) are what the file holds:
    the command says so on stderr and exits 6.

    Example: pgtraffic results export run.pgtr -o run.csv
    """
    from rich.console import Console

    from capture.outputs import check_output
    from replay.results import export_csv

    err = Console(stderr=True)
    check_output(output, inputs=[results], force=force)
    loaded = _read_checked(results, accept_damaged, err)
    rows = export_csv(loaded, output)
    if loaded.incomplete:
        err.print(
            f"wrote {rows} rows to {output}: INCOMPLETE, only part of the run", highlight=False
        )
        raise typer.Exit(INCOMPLETE_EXIT)
    err.print(f"wrote {rows} rows to {output}", highlight=False)


@results_app.command("report")
def report_command(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="Results file (.pgtr).")],
    as_json: opt.Json = False,
    accept_damaged: AcceptDamaged = False,
) -> None:
    """Print the closing report of a (possibly interrupted) replay again.

    A file damaged in the middle is refused (exit 3) unless --accept-damaged;
    then the report covers its intact parts and says it is incomplete (with
    --json: "incomplete" lists why).

    Example: pgtraffic results report run.pgtr --json
    """
    from rich.console import Console

    from replay.report import build_report

    out, err = Console(), Console(stderr=True)
    loaded = _read_checked(results, accept_damaged, err)
    report = build_report(loaded)
    if as_json:
        out.print_json(json.dumps({**report.to_json(), "incomplete": loaded.incompleteness()}))
        return
    _print_report(report, as_json, out, err)


def register(app: typer.Typer) -> None:
    """Add ``replay`` and the ``results`` group to app."""
    app.command("replay", help=REPLAY_HELP)(replay_command)
    app.add_typer(results_app, name="results")
