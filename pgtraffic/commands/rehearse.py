"""`pgtraffic demo` and `pgtraffic rehearse`: the whole pipeline in one command."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn
    from rich.status import Status

    from pgtraffic.rehearsal import RehearsalResult
    from replay.runner import LiveStatus


class ConsoleReporter:
    """Shows each step with its time, and live progress bars for capture and replay."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None
        self._progress: Progress | None = None

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        self.console.print(f"[bold]▶ {title}[/]")
        self._status = self.console.status(title)
        self._status.start()
        try:
            yield
        except BaseException:
            self._stop_live()
            self.console.print(f"[red]✗ {title} failed after {time.monotonic() - started:.1f} s[/]")
            raise
        self._stop_live()
        self.console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - started:.1f} s)[/]")

    def _stop_live(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _bar(self, description: str, total: float | None, *columns: ProgressColumn) -> Progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if self._status is not None:
            self._status.stop()
            self._status = None
        progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            *columns,
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        progress.add_task(description, total=total, detail="")
        progress.start()
        self._progress = progress
        return progress

    def note(self, text: str) -> None:
        self.console.print(f"  {text}", highlight=False)

    def capture_progress(self) -> Callable[[int, int | None], None] | None:
        from rich.progress import DownloadColumn

        def update(done: int, total: int | None) -> None:
            bar = self._progress or self._bar("reading logs", total, DownloadColumn())
            bar.update(bar.task_ids[0], completed=done, total=total)

        return update

    def replay_progress(self, label: str, total: int) -> Callable[[LiveStatus], None] | None:
        from rich.progress import TextColumn

        def update(status: LiveStatus) -> None:
            bar = self._progress or self._bar(
                f"replaying on {label}", total, TextColumn("{task.fields[detail]}")
            )
            bar.update(
                bar.task_ids[0],
                completed=status.statements,
                detail=f"{status.statements:,}/{total:,} statements, "
                f"{status.errors:,} errors, lag {status.last_lag_us / 1000:.1f} ms",
            )

        return update


def _report(result: RehearsalResult, html: Path, out: Console) -> None:
    from pgtraffic import __version__
    from pgtraffic.compare.render_html import to_html  # matplotlib: only when a report is made
    from pgtraffic.compare.render_text import terminal

    html.write_text(to_html(result.comparison, version=__version__), encoding="utf-8")
    out.print(terminal(result.comparison, width=out.width))
    out.print(f"\nHTML report: [bold]{html.resolve()}[/]", highlight=False)
    out.print(
        f"Workload: {result.workload}  results: {result.baseline_results}, "
        f"{result.candidate_results}",
        highlight=False,
    )


Workdir = Annotated[
    Path, typer.Option(metavar="DIR", help="Where the workload, results and report are written.")
]


def demo_command(
    seconds: Annotated[float, typer.Option(help="How long the scenario's client runs.")] = 30,
    clients: Annotated[
        int, typer.Option(help="Client connections (half use prepared statements).")
    ] = 4,
    scale: Annotated[
        float, typer.Option(help="Scenario data scale (1 = a few million rows).")
    ] = 1.0,
    rate: Annotated[
        float, typer.Option(help="Client transactions/s in all; 0 = as fast as it goes.")
    ] = 100.0,
    speed: opt.Speed = opt.DEFAULT_SPEED,
    workers: opt.Workers = 1,
    sync: opt.Sync = opt.DEFAULT_SYNC,
    sync_timeout: opt.SyncTimeout = opt.DEFAULT_SYNC_TIMEOUT,
    sync_in_blocks: opt.SyncInBlocks = False,
    workdir: Workdir = Path("pgtraffic-demo"),
    html: opt.Html = None,
    keep: Annotated[
        bool, typer.Option(help="Leave the servers running and print their DSNs.")
    ] = False,
    rounds: opt.Rounds = 1,
    concurrent: opt.Concurrent = False,
    baseline_version: Annotated[
        int, typer.Option(metavar="MAJOR", help="PostgreSQL major version of the baseline.")
    ] = 16,
    candidate_version: Annotated[
        int,
        typer.Option(
            metavar="MAJOR", help="PostgreSQL major version of the candidate (16: an A/A run)."
        ),
    ] = 18,
    candidate_sql: Annotated[
        str | None,
        typer.Option(
            metavar="SQL",
            help="SQL run on the candidate after each restore: the change under test "
            "(e.g. a DROP INDEX), to see what a regression looks like.",
        ),
    ] = None,
) -> None:
    """See pgtraffic work end to end on embedded PostgreSQL 16 and 18, in a few minutes.

    Starts a capture-ready PostgreSQL 16, loads the bundled GitLab-like scenario,
    runs its client (pgbench, simple and prepared protocol) for --seconds, captures
    the log, restores the pre-capture data onto a 16 and an 18 target, replays the
    workload on both, compares them (with EXPLAIN on both) and writes report.html.

    With --rounds N each target is replayed N times (A B B A A B ..., each on freshly
    restored data) and the verdicts come from the spread between rounds; with
    --concurrent both targets are replayed at the same time in each round.

    \b
    Example:
        pgtraffic demo --seconds 20 --workdir /tmp/demo
        pgtraffic demo --candidate-version 16 --rounds 3      (A/A: should flag nothing)
        pgtraffic demo --candidate-version 16 --rounds 3 \\
            --candidate-sql 'DROP INDEX index_merge_requests_on_author_id'
    """
    settings = opt.replay_settings(
        speed=speed,
        workers=workers,
        sync=sync,
        sync_timeout=sync_timeout,
        sync_in_blocks=sync_in_blocks,
    )
    from rich.console import Console

    from pgtraffic.rehearsal import DemoSettings, demo

    out = Console(highlight=False)
    result = demo(
        workdir,
        DemoSettings(
            seconds=seconds,
            clients=clients,
            scale=scale,
            rate=rate or None,
            keep=keep,
            rounds=rounds,
            concurrent=concurrent,
            baseline_major=baseline_version,
            candidate_major=candidate_version,
            candidate_sql=candidate_sql,
        ),
        replay=settings,
        reporter=ConsoleReporter(out),
    )
    _report(result, html or workdir / "report.html", out)
    if result.servers:
        out.print("Servers left running (stop them with: pgtraffic servers stop --all):")
        for name, dsn in result.servers.items():
            out.print(f"  {name}: {dsn}")


def rehearse_command(
    log: Annotated[
        list[str],
        typer.Option(
            "--log", metavar="LOG", help="PostgreSQL log file(s) to capture (repeatable)."
        ),
    ],
    baseline: opt.BaselineDsn,
    candidate: opt.CandidateDsn,
    workdir: Workdir = Path("pgtraffic-rehearsal"),
    speed: opt.Speed = opt.DEFAULT_SPEED,
    max_speed: opt.MaxSpeed = False,
    jump_idle: opt.JumpIdle = False,
    workers: opt.Workers = 1,
    sync: opt.Sync = opt.DEFAULT_SYNC,
    sync_timeout: opt.SyncTimeout = opt.DEFAULT_SYNC_TIMEOUT,
    sync_in_blocks: opt.SyncInBlocks = False,
    map_user: opt.MapUser = None,
    map_database: opt.MapDatabase = None,
    explain: Annotated[bool, typer.Option(help="EXPLAIN the top classes on both servers.")] = True,
    html: opt.Html = None,
    fail_on: opt.FailOnOption = None,
    allow_incomplete: opt.AllowIncomplete = False,
    allow_same_server: Annotated[
        bool,
        typer.Option(
            "--allow-same-server",
            help="Allow --baseline and --candidate to be one server and database (an A/A "
            "run: the candidate replays on the state the baseline replay left).",
        ),
    ] = False,
    rounds: opt.Rounds = 1,
    concurrent: opt.Concurrent = False,
    allow_writes: opt.AllowWrites = False,
    reset_command: Annotated[
        str | None,
        typer.Option(
            metavar="CMD",
            help="Shell command run before each replay to restore that server's data to "
            "the pre-capture state (your snapshot restore); it gets PGTRAFFIC_SIDE "
            "(baseline or candidate) and PGTRAFFIC_DSN. A failure stops the rehearsal.",
        ),
    ] = None,
    min_ratio: opt.MinRatio = opt.DEFAULT_MIN_RATIO,
    min_delta_ms: opt.MinDeltaMs = opt.DEFAULT_MIN_DELTA_MS,
    alpha: opt.Alpha = opt.DEFAULT_ALPHA,
    min_samples: opt.MinSamples = opt.DEFAULT_MIN_SAMPLES,
    database: opt.Database = None,
    application: opt.Application = None,
    exclude_application: opt.ExcludeApplication = None,
    since: opt.Since = None,
    until: opt.Until = None,
) -> None:
    """Capture your logs, replay them on two servers (one after the other), compare.

    Both servers should hold the data as it was when the capture began (restore a
    backup or snapshot taken then). The two must be different servers (read from
    them: system identifier, data directory, start time): one server twice is
    refused before anything runs, unless --allow-same-server; so are writes onto a server
    not marked as a replay target (pgtraffic.replay_target = on), unless --allow-writes
    (exit 7). Other exit codes are those of `pgtraffic compare` (6 when a replay was
    incomplete, unless --allow-incomplete).

    With --rounds N each server is replayed N times (A B B A A B ...), --reset-command
    restoring its data before each replay, and the verdicts come from the spread
    between rounds (see pgtraffic compare --help). With --concurrent each round
    replays onto both servers at the same time (both reset first).

    \b
    Example:
        pgtraffic rehearse --log pg.csv --baseline postgresql://pg16/app \\
            --candidate postgresql://pg18/app --fail-on regression,errors
        pgtraffic rehearse --log pg.csv --baseline ... --candidate ... --rounds 3 \\
            --reset-command './restore-snapshot.sh "$PGTRAFFIC_SIDE"'
    """
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
        allow_writes=allow_writes,
    )
    failures = opt.fail_on(fail_on)
    thresholds = opt.thresholds(min_ratio, min_delta_ms, alpha, min_samples)
    since_at, until_at = opt.parse_time(since, "--since"), opt.parse_time(until, "--until")
    from rich.console import Console

    from capture.filters import Filters
    from capture.pipeline import CaptureOptions
    from pgtraffic.compare import exit_code
    from pgtraffic.rehearsal import rehearse

    filters = Filters(
        databases=tuple(database or ()),
        applications=tuple(application or ()),
        exclude_applications=tuple(exclude_application or ()),
        since=since_at,
        until=until_at,
    )
    out = Console(highlight=False)
    result = rehearse(
        log,
        baseline,
        candidate,
        workdir,
        capture_options=CaptureOptions(filters=filters),
        replay=settings,
        thresholds=thresholds,
        explain=explain,
        reporter=ConsoleReporter(out),
        allow_same_server=allow_same_server,
        rounds=rounds,
        concurrent=concurrent,
        reset=_reset_runner(reset_command, baseline, candidate),
    )
    _report(result, html or workdir / "report.html", out)
    code = exit_code(result.comparison, failures, allow_incomplete=allow_incomplete)
    if code:
        raise typer.Exit(code)


def _reset_runner(
    command: str | None, baseline: str, candidate: str
) -> Callable[[str], None] | None:
    """The --reset-command as a reset callback (None without one)."""
    if command is None:
        return None

    def reset(label: str) -> None:
        import os
        import subprocess

        from pgtraffic.errors import ReplayError

        env = dict(os.environ)
        env["PGTRAFFIC_SIDE"] = label
        env["PGTRAFFIC_DSN"] = baseline if label == "baseline" else candidate
        done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ReplayError(
                f"the reset command failed for the {label} (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-500:]}",
                hint="run it by hand with PGTRAFFIC_SIDE set to see why",
            )

    return reset


def register(app: typer.Typer) -> None:
    """Add `demo` and `rehearse` to ``app``."""
    app.command("demo")(demo_command)
    app.command("rehearse")(rehearse_command)
