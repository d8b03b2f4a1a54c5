"""CLI commands for replay (registered on the root app by pgtraffic.cli)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from capture.errors import PgTrafficError, UsageError
from capture.workload import read_workload
from replay.engine import ReplayOptions
from replay.report import ReplayReport, build_report
from replay.results import export_csv, read_results
from replay.runner import (
    LiveStatus,
    build_schedule,
    inspect_target,
    plan_replay,
    run_replay,
    scan_workload,
    with_defaults,
)

results_app = typer.Typer(help="Work with results files written by pgtraffic replay.")


def _mapping(pairs: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise UsageError(
                f"{option} expects OLD=NEW, got {pair!r}", hint=f"{option} app=app_test"
            )
        out[old] = new
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def report_table(report: ReplayReport) -> Table:
    """The closing report as a two-column rich table."""
    table = Table(title="Replay report", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rows: list[tuple[str, str]] = [
        ("completed", "yes" if report.completed else "NO (interrupted)"),
        ("run time", "-" if report.run_time_s is None else f"{report.run_time_s:.2f} s"),
        ("statements", f"{report.statements}"),
        (
            "statements/s",
            "-" if report.statements_per_s is None else f"{report.statements_per_s:,.0f}",
        ),
        ("sessions / connections", f"{report.sessions} / {report.connections_opened} opened"),
        ("connect failures", _counts(report.connect_failures)),
        ("connections lost", _counts(report.connections_lost)),
        ("reconnects", str(report.reconnects)),
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


def replay_command(
    workload: Annotated[Path, typer.Argument(help="Workload file written by pgtraffic capture.")],
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="libpq URI of the server to replay onto; passwords from PGPASSWORD/.pgpass.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Results file to write (.pgtr).")
    ] = None,
    speed: Annotated[float, typer.Option(help="Replay speed factor (2 = twice as fast).")] = 1.0,
    max_speed: Annotated[
        bool, typer.Option("--max-speed", help="No waiting: each session as fast as it can.")
    ] = False,
    jump_idle: Annotated[
        bool, typer.Option("--jump-idle", help="Skip stretches in which no session was active.")
    ] = False,
    map_user: Annotated[
        list[str] | None, typer.Option("--map-user", help="Replay user OLD as NEW (OLD=NEW).")
    ] = None,
    map_database: Annotated[
        list[str] | None,
        typer.Option("--map-database", help="Replay database OLD as NEW (OLD=NEW)."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes sharing the sessions.")] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and schedule the workload; do not connect.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")
    ] = True,
    reconnect_interval: Annotated[
        float, typer.Option(help="Seconds between reconnect attempts of a session.")
    ] = 1.0,
    loop: Annotated[
        str, typer.Option(help="Event loop: auto (uvloop when installed), uvloop or asyncio.")
    ] = "auto",
    via_asyncpg: Annotated[
        bool,
        typer.Option(
            "--via-asyncpg",
            help="Send statements through asyncpg's query paths instead of pgtraffic's own "
            "leaner wire path (slower, and named statements get asyncpg's names; for "
            "comparison or as a fallback).",
        ),
    ] = False,
) -> None:
    """Replay a workload onto a PostgreSQL server with the original timing and concurrency."""
    out = Console()
    err = Console(stderr=True)
    options_error = None
    if speed <= 0:
        options_error = f"--speed must be positive, not {speed}"
    if loop not in ("auto", "uvloop", "asyncio"):
        options_error = f"--loop must be auto, uvloop or asyncio, not {loop!r}"
    if options_error:
        raise UsageError(options_error, hint="use --max-speed for no waiting at all")
    users = _mapping(map_user, "--map-user")
    databases = _mapping(map_database, "--map-database")
    wl = read_workload(workload)
    scan = scan_workload(wl)
    schedule = build_schedule(scan, speed=speed, max_speed=max_speed, jump_idle=jump_idle)
    base = ReplayOptions(
        dsn=target or "",
        schedule=schedule,
        map_user=users,
        map_database=databases,
        workers=workers,
        reconnect_interval_s=reconnect_interval,
        event_loop=loop,
        direct_simple=not via_asyncpg,
    )
    plan = plan_replay(scan, schedule, wl, base)
    if dry_run:
        if as_json:
            out.print_json(json.dumps({"dry_run": True, **plan.to_json()}))
        else:
            table = Table(title="Replay plan (dry run)", show_header=False, title_justify="left")
            for key, value in plan.to_json().items():
                table.add_row(key, str(value))
            out.print(table)
        return
    if target is None:
        raise UsageError(
            "--target is required to replay", hint="--target postgresql://user@host:5432/postgres"
        )
    if output is None:
        raise UsageError("--output/-o is required to replay", hint="-o run.pgtr")
    info = inspect_target(target)
    err.print(
        f"target: [bold]{info.host}[/]:{info.port} PostgreSQL {info.server_version}, "
        f"database {info.database}, user {info.user}; "
        f"{plan.sessions} sessions, {plan.replayable} statements"
        + (
            ""
            if plan.intended_duration_us is None
            else f", about {plan.intended_duration_us / 1e6:.1f} s"
        ),
        highlight=False,
    )
    max_conn = info.settings.get("max_connections")
    if max_conn and max_conn.isdigit() and plan.peak_sessions > int(max_conn):
        err.print(
            f"[yellow]warning:[/] the workload peaks at {plan.peak_sessions} sessions but the "
            f"target allows max_connections={max_conn}: expect SQLSTATE 53300",
            highlight=False,
        )
    options = with_defaults(base, info)
    total_us = plan.intended_duration_us
    bar = Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        TextColumn("{task.fields[what]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not progress,
        transient=False,
    )
    task = bar.add_task("replay", total=(total_us or plan.replayable) or 1, what="")
    last = [0.0]

    def on_status(status: LiveStatus) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and not status.done:
            return
        last[0] = now
        done = status.replayed_capture_us / (schedule.speed or 1) if total_us else status.statements
        captured = status.replayed_capture_us / 1e6
        bar.update(
            task,
            completed=done,
            what=(
                f"captured {captured:.1f}s  statements {status.statements}  "
                f"lag {status.last_lag_us / 1000:.1f}ms  errors {status.errors}  "
                f"conns {status.open_connections}"
            ),
        )

    try:
        with bar:
            run_replay(wl, output, options, info, on_status=on_status)
    finally:
        # Also after Ctrl-C or a failure: report what ran (if anything did).
        with contextlib.suppress(PgTrafficError):
            report = build_report(read_results(output))
            _print_report(report, as_json, out, err)
            err.print(f"results: {output}", highlight=False)


@results_app.command("export")
def export_command(
    results: Annotated[Path, typer.Argument(help="Results file (.pgtr).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write.")],
) -> None:
    """Write a results file as CSV (one row per statement, with a header row)."""
    loaded = read_results(results)
    rows = export_csv(loaded, output)
    Console(stderr=True).print(f"wrote {rows} rows to {output}", highlight=False)


@results_app.command("report")
def report_command(
    results: Annotated[Path, typer.Argument(help="Results file (.pgtr).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Print the closing report of a (possibly interrupted) replay again."""
    report = build_report(read_results(results))
    _print_report(report, as_json, Console(), Console(stderr=True))


def register(app: typer.Typer) -> None:
    """Add ``replay`` and the ``results`` group to app."""
    app.command("replay")(replay_command)
    app.add_typer(results_app, name="results")
