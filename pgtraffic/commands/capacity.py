"""``pgtraffic capacity``: sweep offered load to the knee (registered by pgtraffic.cli)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capture.errors import UsageError
from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from rich.table import Table

    from pgtraffic.capacity.progress import SweepProgress
    from pgtraffic.capacity.reset import Reset
    from pgtraffic.capacity.sweep import Sweep

CAPACITY_HELP = """Sweep offered load to the knee and say what breaks first.

Each step replays the whole workload at a higher load, from the same starting state
(--reset template copies the target's database once and recreates it from that copy
before every step). The load grows by time compression (--speeds 1,2,4,8, or
--until-knee, which doubles the speed until a step is not sustained and then bisects
to within 10%) or by session scale-up (--scale K: every session runs K times, the
copies on their own connections, each a fraction of the session's typical gap
later; --scale 1,2,4 makes one step per factor). A step is sustained when the
target achieved at least 95% of the offered statements/s, met every --slo and raised
no error the capture did not have. The knee is the highest sustained step; the
report says what broke at the next one (a class's latency, errors, connections
running out, a wait event that took over) or that the replayer itself was the limit.

Copies of writes collide: by default (--scale-reads-only) the copies carry only the
statements that cannot write (SELECT, SHOW, SET, BEGIN/COMMIT...): more readers of
the same data, like Oracle's query-only scale-up. --scale-writes copies every
statement: the copies then repeat the original's writes on the same rows (an INSERT
of the same key fails with 23505 and the step is not sustained; an UPDATE of the
same row waits for its row lock): a heavier write load on the same rows, not more
users with rows of their own.

--sync ddl (capacity's default) keeps the order of connections and of global
changes (DDL, roles, GRANT, functions) and leaves the order of data commits to the
target's row locks: replaying every commit in captured order (--sync commit)
caps a step below the target's capacity (measured: docs/capacity.md).

\b
Examples:
    pgtraffic capacity work.pgtw -t postgresql://app@pg18/shop -o cap18 --speeds 1,2,4,8
    pgtraffic capacity work.pgtw -t "$DSN" -o cap --until-knee --slo 'p99<50ms'
    pgtraffic capacity reads.pgtw -t "$DSN" -o cap --reset none --scale 1,2,4,8
    pgtraffic capacity-compare cap16 cap18 -o cap-16-vs-18.html

Exit codes: 0 done, 2 bad options, 3 unusable workload, 4 the reset failed,
5 target unreachable, 130 interrupted (the steps done so far are in DIR/capacity.json).
"""


class CapacitySync(enum.StrEnum):
    """capacity's --sync: replay's three modes and ``ddl`` (pgtraffic.capacity.order)."""

    DDL = "ddl"
    COMMIT = "commit"
    OBJECTS = "objects"
    NONE = "none"


SYNC_REASONS = {
    CapacitySync.DDL: "ddl: connections and global changes (DDL, roles, GRANT, functions) "
    "in captured order; data commits left to the target's row locks, so the captured "
    "commit order does not cap the step (docs/capacity.md)",
    CapacitySync.COMMIT: "commit: every commit in captured order, as asked (this can cap a "
    "step below the target's capacity: each statement waits for the commits before it)",
    CapacitySync.OBJECTS: "objects: commits on the relations a statement touches in "
    "captured order, as asked (this can cap a step on a hot table)",
    CapacitySync.NONE: "none: independent sessions, only the timing, as asked (DDL and "
    "rows other sessions create may arrive out of order)",
}

SyncOption = Annotated[
    CapacitySync,
    typer.Option(
        "--sync",
        metavar="[ddl|commit|objects|none]",
        help="Which order across sessions a step keeps. ddl (the default): connections "
        "and global changes (DDL, roles, GRANT) in captured order, data commits left to "
        "the target's row locks. commit / objects / none: as in pgtraffic replay.",
        case_sensitive=False,
        rich_help_panel=opt.REPLAY,
    ),
]


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
        str | None,
        typer.Option(
            metavar="LIST",
            help="Speeds to try, e.g. 1,2,4,8 (the default; with a --scale list, one speed: "
            "1 unless given).",
        ),
    ] = None,
    until_knee: Annotated[
        bool,
        typer.Option("--until-knee", help="Double the speed until it breaks, then bisect."),
    ] = False,
    scale: Annotated[
        str,
        typer.Option(
            metavar="K|LIST",
            help="Session scale-up: every session runs K times, the copies on their own "
            "connections (--scale 4: at every speed; --scale 1,2,4: one step per factor, "
            "at the first of --speeds).",
        ),
    ] = "1",
    scale_writes: Annotated[
        bool,
        typer.Option(
            "--scale-writes/--scale-reads-only",
            help="What the copies of --scale carry: only statements that cannot write (the "
            "default), or every statement (the copies then repeat the original's writes on "
            "the same rows: duplicate keys fail, updates queue on the same row locks).",
        ),
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
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            metavar="DIR",
            help="An earlier capacity run's -o DIR: --html draws this sweep against it.",
        ),
    ] = None,
    workers: opt.Workers = 1,
    sync: SyncOption = CapacitySync.DDL,
    sync_timeout: opt.SyncTimeout = opt.DEFAULT_SYNC_TIMEOUT,
    sync_in_blocks: opt.SyncInBlocks = False,
    map_user: opt.MapUser = None,
    map_database: opt.MapDatabase = None,
    allow_writes: opt.AllowWrites = False,
    as_json: opt.Json = False,
    html: opt.Html = None,
) -> None:
    """Thin handler: options in, :func:`pgtraffic.capacity.sweep.run_sweep`, report out."""
    from pgtraffic.capacity.model import Slo, UntilKnee, parse_scales, parse_speeds
    from pgtraffic.capacity.scale import ScaleMode
    from pgtraffic.capacity.sweep import SweepPlan, load_sweep, run_sweep

    if target is None or output is None:
        raise UsageError(
            "capacity needs --target DSN and --output DIR",
            hint="pgtraffic capacity work.pgtw -t postgresql://app@host/db -o capacity-run",
        )
    settings = opt.replay_settings(
        workers=workers,
        sync=opt.SyncChoice.NONE if sync is CapacitySync.DDL else opt.SyncChoice(sync.value),
        sync_timeout=sync_timeout,
        sync_in_blocks=sync_in_blocks,
        map_user=map_user,
        map_database=map_database,
        allow_writes=allow_writes,
    )
    scales = parse_scales(scale)
    if speeds is None:
        speeds = "1" if len(scales) > 1 else "1,2,4,8"
    plan = SweepPlan(
        speeds=parse_speeds(speeds),
        until_knee=UntilKnee() if until_knee else None,
        scales=scales,
        scale_mode=ScaleMode.WRITES if scale_writes else ScaleMode.READS,
    )
    slos = tuple(Slo.parse(s) for s in slo or ())
    before = load_sweep(baseline) if baseline is not None else None
    reset_plan = _reset_plan(workload, target, reset, reset_command, settings.map_database)
    sweep = run_sweep(
        workload,
        target,
        output,
        plan=plan,
        settings=settings,
        reset=reset_plan,
        slos=slos,
        on_step=_progress_printer(),
        sync_reason=SYNC_REASONS[sync],
        ddl_order=sync is CapacitySync.DDL,
    )
    _report(sweep, [before] if before else [], html, as_json)


def _reset_plan(
    workload: Path, target: str, reset: str, command: str | None, map_database: Mapping[str, str]
) -> Reset:
    from capture.workload import read_workload
    from pgtraffic.capacity.reset import Reset, ResetMode, databases_of
    from replay.runner import inspect_target

    try:
        mode = ResetMode(reset)
    except ValueError:
        raise UsageError(f"--reset {reset!r}: choose template, command or none") from None
    wl = read_workload(workload)
    info = inspect_target(target)
    dbs = databases_of(
        [map_database.get(s.database or "", s.database) for s in wl.sessions.values()],
        info.database,
    )
    return Reset(mode=mode, dsn=target, databases=dbs, command=command)


def _progress_printer() -> Callable[[SweepProgress], None]:
    from rich.console import Console

    err = Console(stderr=True)

    def on_step(progress: SweepProgress) -> None:
        text = progress.describe()
        step = progress.done
        if step is not None:
            text += (
                f": {step.achieved_statements_per_s:,.0f} of "
                f"{step.offered_statements_per_s:,.0f} statements/s, p99 {step.p99_ms:.2f} ms"
            )
        err.print(text if step is not None else text + " ...", highlight=False)

    return on_step


def _report(sweep: Sweep, baselines: list[Sweep], html: Path | None, as_json: bool) -> None:
    from rich.console import Console

    out = Console()
    if html is not None:
        from pgtraffic.capacity.render import to_html

        html.write_text(to_html([*baselines, sweep]), encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(sweep.to_json()))
        return
    out.print(steps_table(sweep))
    out.print(f"knee: {sweep.knee.reason}", highlight=False)
    for line in sweep.knee.culprits:
        out.print(f"  {line}", highlight=False)
    out.print(f"sync: {sweep.sync_reason or sweep.sync}", highlight=False)
    if sweep.statements_note:
        out.print(sweep.statements_note, highlight=False)
    else:
        for line in top_statements_lines(sweep):
            out.print(line, highlight=False)


def top_statements_lines(sweep: Sweep, top: int = 3) -> list[str]:
    """pg_stat_statements' top statements at the step past the knee (else the last)."""
    if not sweep.steps:
        return []
    past = [s for s in sweep.steps if sweep.knee.step is not None and s.index > sweep.knee.step]
    step = min(past, key=lambda s: s.offered_statements_per_s) if past else sweep.steps[-1]
    lines = [f"top statements at step {step.index + 1} (pg_stat_statements):"]
    for t in step.top_statements[:top]:
        lines.append(
            f"  {t.calls:>8,} calls  {t.total_exec_ms:>10,.1f} ms total  "
            f"{t.mean_exec_ms:.3f} ms mean  {t.shared_blks_read:,} blocks read  "
            f"{' '.join(t.query.split())[:80]}"
        )
    return lines if len(lines) > 1 else []


def steps_table(sweep: Sweep) -> Table:
    from rich.table import Table

    table = Table(title="Capacity sweep", title_justify="left")
    for name in (
        "step",
        "speed",
        "scale",
        "offered/s",
        "achieved/s",
        "kept up",
        "p50 ms",
        "p99 ms",
        "errors",
        "active",
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
            f"x{s.scale}",
            f"{s.offered_statements_per_s:,.0f}",
            f"{s.achieved_statements_per_s:,.0f}",
            f"{s.kept_up:.0%}",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            ", ".join(f"{k} x{v}" for k, v in s.errors.items()) or "-",
            f"{s.active_backends:.1f}",
            f"{wait[0]} {wait[1]:.0%}",
            f"{s.reset_s:.1f}",
        )
    return table


COMPARE_HELP = """Two or more capacity runs side by side in one report: 16 vs 18, before
and after a config change. Reads each run's DIR/capacity.json; the curves of all of
them on the same charts, the knees side by side and their ratio (later runs against
the first).

\b
Examples:
    pgtraffic capacity work.pgtw -t "$PG16" -o cap16 --until-knee
    pgtraffic capacity work.pgtw -t "$PG18" -o cap18 --until-knee
    pgtraffic capacity-compare cap16 cap18 -o cap-16-vs-18.html
"""


def capacity_compare_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...", help="Folders of capacity runs (-o DIR), first is the baseline."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="HTML report to write."),
    ] = None,
    as_json: opt.Json = False,
) -> None:
    """Load the saved sweeps, print the knees and their ratio, write the HTML."""
    from rich.console import Console

    from pgtraffic.capacity.render import knee_ratios, to_html
    from pgtraffic.capacity.sweep import load_sweep

    if len(runs) < 2:
        raise UsageError(
            "capacity-compare needs two capacity runs or more",
            hint="pgtraffic capacity-compare cap16 cap18 -o cmp.html",
        )
    sweeps = [load_sweep(run) for run in runs]
    rows = knee_ratios(sweeps)
    out = Console()
    if output is not None:
        output.write_text(to_html(sweeps), encoding="utf-8")
    if as_json:
        out.print_json(json.dumps({"runs": [r.to_json() for r in rows]}))
        return
    for row in rows:
        out.print(row.describe(), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("capacity", help=CAPACITY_HELP)(capacity_command)
    app.command("capacity-compare", help=COMPARE_HELP)(capacity_compare_command)
