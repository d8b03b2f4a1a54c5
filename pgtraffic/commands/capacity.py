"""``pgtraffic capacity``: sweep offered load to the knee (registered by pgtraffic.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capture.errors import UsageError
from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from rich.table import Table

    from pgtraffic.capacity.model import Step
    from pgtraffic.capacity.sweep import Sweep

CAPACITY_HELP = """Sweep offered load to the knee and say what breaks first.

Each step replays the whole workload faster (time compression: --speeds 1,2,4,8, or
--until-knee, which doubles the speed until a step is not sustained and then bisects
to within 10%), from the same starting state (--reset template copies the target's
database once and recreates it from that copy before every step). A step is
sustained when the target achieved at least 95% of the offered statements/s, met
every --slo and raised no error the capture did not have. The knee is the highest
sustained step; the report says what broke at the next one (a class's latency,
errors, a wait event that took over) or that the replayer itself was the limit.

\b
Examples:
    pgtraffic capacity work.pgtw -t postgresql://app@pg18/shop -o cap18 --speeds 1,2,4,8
    pgtraffic capacity work.pgtw -t "$DSN" -o cap --until-knee --slo 'p99<50ms'
    pgtraffic capacity reads.pgtw -t "$DSN" -o cap --reset none --speeds 1,4,16

Exit codes: 0 done, 2 bad options, 3 unusable workload, 4 the reset failed,
5 target unreachable, 130 interrupted (the steps done so far are in DIR/capacity.json).
"""


def capacity_command(
    workload: Annotated[Path, typer.Argument(metavar="WORKLOAD", help="Workload file (.pgtw).")],
    target: opt.Target = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="DIR", help="Folder for each step's results and the report."
        ),
    ] = None,
    speeds: Annotated[
        str, typer.Option(metavar="LIST", help="Speeds to try, e.g. 1,2,4,8.")
    ] = "1,2,4,8",
    until_knee: Annotated[
        bool,
        typer.Option("--until-knee", help="Double the speed until it breaks, then bisect."),
    ] = False,
    slo: Annotated[
        list[str] | None,
        typer.Option(
            metavar="OBJECTIVE",
            help="Latency objective a sustained step must meet: 'p99<50ms', or for one "
            "class 'FINGERPRINT:p95<20ms' (repeatable).",
        ),
    ] = None,
    reset: Annotated[
        str,
        typer.Option(
            metavar="[template|command|none]",
            help="How to restore the starting state before each step: template (copy the "
            "database once, recreate it from the copy), command (--reset-command), none "
            "(read-only workloads).",
        ),
    ] = "template",
    reset_command: Annotated[
        str | None,
        typer.Option(metavar="CMD", help="Shell command that restores your own snapshot."),
    ] = None,
    workers: opt.Workers = 1,
    sync: opt.Sync = opt.DEFAULT_SYNC,
    sync_timeout: opt.SyncTimeout = opt.DEFAULT_SYNC_TIMEOUT,
    sync_in_blocks: opt.SyncInBlocks = False,
    map_user: opt.MapUser = None,
    map_database: opt.MapDatabase = None,
    as_json: opt.Json = False,
    html: opt.Html = None,
) -> None:
    """Thin handler: options in, :func:`pgtraffic.capacity.sweep.run_sweep`, report out."""
    from rich.console import Console

    from pgtraffic.capacity.model import Slo, UntilKnee, parse_speeds
    from pgtraffic.capacity.reset import Reset, ResetMode, databases_of
    from pgtraffic.capacity.sweep import SweepPlan, run_sweep
    from replay.runner import inspect_target

    if target is None or output is None:
        raise UsageError(
            "capacity needs --target DSN and --output DIR",
            hint="pgtraffic capacity work.pgtw -t postgresql://app@host/db -o capacity-run",
        )
    settings = opt.replay_settings(
        workers=workers,
        sync=sync,
        sync_timeout=sync_timeout,
        sync_in_blocks=sync_in_blocks,
        map_user=map_user,
        map_database=map_database,
    )
    plan = SweepPlan(speeds=parse_speeds(speeds), until_knee=UntilKnee() if until_knee else None)
    slos = tuple(Slo.parse(s) for s in slo or ())
    try:
        mode = ResetMode(reset)
    except ValueError:
        raise UsageError(f"--reset {reset!r}: choose template, command or none") from None
    from capture.workload import read_workload

    wl = read_workload(workload)
    info = inspect_target(target)
    dbs = databases_of(
        [settings.map_database.get(s.database or "", s.database) for s in wl.sessions.values()],
        info.database,
    )
    reset_plan = Reset(mode=mode, dsn=target, databases=dbs, command=reset_command)
    err = Console(stderr=True)
    out = Console()

    def on_step(k: int, total: int | None, speed: float, step: Step | None) -> None:
        of = f"/{total}" if total else ""
        if step is None:
            err.print(f"step {k}{of}: speed {speed:g} ...", highlight=False)
        else:
            err.print(
                f"step {k}{of}: speed {speed:g}: {step.achieved_statements_per_s:,.0f} of "
                f"{step.offered_statements_per_s:,.0f} statements/s, p99 {step.p99_ms:.2f} ms",
                highlight=False,
            )

    sweep = run_sweep(
        workload,
        target,
        output,
        plan=plan,
        settings=settings,
        reset=reset_plan,
        slos=slos,
        on_step=on_step,
    )
    if html is not None:
        from pgtraffic.capacity.render import to_html

        html.write_text(to_html([sweep]), encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(sweep.to_json()))
    else:
        out.print(steps_table(sweep))
        out.print(f"knee: {sweep.knee.reason}", highlight=False)
        for line in sweep.knee.culprits:
            out.print(f"  {line}", highlight=False)


def steps_table(sweep: Sweep) -> Table:
    from rich.table import Table

    table = Table(title="Capacity sweep", title_justify="left")
    for name in (
        "step",
        "speed",
        "offered/s",
        "achieved/s",
        "kept up",
        "p50 ms",
        "p99 ms",
        "errors",
        "top wait",
        "reset s",
    ):
        table.add_column(name, justify="right")
    for s in sweep.steps:
        wait = max(s.waits.items(), key=lambda kv: kv[1]) if s.waits else ("-", 0.0)
        mark = " <- knee" if sweep.knee.step == s.index else ""
        table.add_row(
            f"{s.index + 1}{mark}",
            f"{s.speed:g}",
            f"{s.offered_statements_per_s:,.0f}",
            f"{s.achieved_statements_per_s:,.0f}",
            f"{s.kept_up:.0%}",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            ", ".join(f"{k} x{v}" for k, v in s.errors.items()) or "-",
            f"{wait[0]} {wait[1]:.0%}",
            f"{s.reset_s:.1f}",
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("capacity", help=CAPACITY_HELP)(capacity_command)
