"""`pgtraffic compare`: what regressed between two replays of one workload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capture.errors import UsageError
from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from rich.console import Console

    from pgtraffic.compare import Comparison


def _html(comparison: Comparison) -> str:
    from pgtraffic import __version__
    from pgtraffic.compare.render_html import to_html  # matplotlib: only when a report is made

    return to_html(comparison, version=__version__)


def round_files(given: Path, name: str) -> list[Path]:
    """One results file, several separated by commas, or every .pgtr in a folder."""
    if given.is_dir():
        files = sorted(given.glob("*.pgtr"))
        if not files:
            raise UsageError(
                f"{name}: the folder {given} holds no results files (*.pgtr)",
                hint="name the files, separated by commas: a1.pgtr,a2.pgtr",
            )
        return files
    parts = [Path(part) for part in str(given).split(",") if part.strip()]
    if not parts:
        raise UsageError(f"{name}: no results file given", hint="e.g. pg16.pgtr")
    return parts


def compare(
    baseline: Annotated[
        Path,
        typer.Argument(
            metavar="BASELINE",
            help="Results file of the baseline run (.pgtr); for rounds, several "
            "separated by commas, or a folder of them.",
        ),
    ],
    candidate: Annotated[
        Path,
        typer.Argument(
            metavar="CANDIDATE",
            help="Results file of the candidate run (.pgtr); for rounds, several "
            "separated by commas, or a folder of them.",
        ),
    ],
    as_json: opt.Json = False,
    markdown: Annotated[
        Path | None, typer.Option(help="Also write a Markdown report (for a merge request).")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report with charts.")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write JUnit XML for CI.")] = None,
    fail_on: opt.FailOnOption = None,
    allow_incomplete: opt.AllowIncomplete = False,
    explain: Annotated[
        bool,
        typer.Option(
            help="EXPLAIN the top classes on both servers and compare plans "
            "(needs --baseline-dsn and --candidate-dsn)."
        ),
    ] = False,
    baseline_dsn: Annotated[
        str | None,
        typer.Option(help="Baseline server for --explain, as libpq takes it (URI, key=value)."),
    ] = None,
    candidate_dsn: Annotated[
        str | None,
        typer.Option(help="Candidate server for --explain, as libpq takes it (URI, key=value)."),
    ] = None,
    explain_top: Annotated[int, typer.Option(help="How many classes (by time) to EXPLAIN.")] = 20,
    workload: Annotated[
        Path | None,
        typer.Option(
            help="The workload file (default: the path the results name); "
            "gives query text, SQL examples and statements to EXPLAIN."
        ),
    ] = None,
    min_ratio: opt.MinRatio = opt.DEFAULT_MIN_RATIO,
    min_delta_ms: opt.MinDeltaMs = opt.DEFAULT_MIN_DELTA_MS,
    alpha: opt.Alpha = opt.DEFAULT_ALPHA,
    min_samples: opt.MinSamples = opt.DEFAULT_MIN_SAMPLES,
    limit: Annotated[int, typer.Option(help="Rows of each terminal table.")] = 25,
) -> None:
    """Compare two replays of the same workload, query class by query class.

    A class is regressed (or improved) only when its median service time moved by at
    least --min-ratio and --min-delta-ms AND the change is significant (Wilcoxon
    signed-rank on paired statements, or Mann-Whitney U; Benjamini-Hochberg across
    classes). Also reports new, resolved and changed errors by SQLSTATE, row-count
    mismatches, plan changes (--explain), and whether either run lagged too far behind
    schedule to be trusted.

    With several results files a side (rounds: replays of one workload repeated on each
    server, best in the order A B B A A B, as rehearse --rounds does), verdicts come
    from the spread between rounds: each class gets a noise floor (the smallest change
    this machine can tell from noise), a shift shared by nearly every class is reported
    once as drift and factored out, and a class is regressed only when its change holds
    in every round. With one file a side, compare says that no floor was measured.

    A run that is incomplete (interrupted, killed, sessions that could not connect,
    statements not sent, sync timeouts) is named in every report, and compare exits 6
    unless --allow-incomplete accepts it. Plans that could not be had (a server
    unreachable, an EXPLAIN that failed) are reported with the side and the reason,
    never as unchanged, and count as a plans finding. Comparing a file with itself, or
    two runs on one server, is pointed out.

    \b
    Example:
        pgtraffic compare pg16.pgtr pg18.pgtr --html report.html --fail-on regression,errors
        pgtraffic compare a1.pgtr,a2.pgtr,a3.pgtr b1.pgtr,b2.pgtr,b3.pgtr   (rounds)
        pgtraffic compare pg16.pgtr pg18.pgtr --explain --fail-on plans \\
            --baseline-dsn postgresql://app@pg16/shop --candidate-dsn postgresql://app@pg18/shop

    Exit codes: 0 no selected finding; 16 + flags when --fail-on findings are present
    (regression 1, errors 2, rows 4, plans 8 = changed or not compared;
    17 = regressed classes, 18 = new errors, 19 = both); 6 a run is incomplete (it
    comes before any finding; --allow-incomplete accepts it); 2 bad usage;
    3 unreadable input or results of different workloads.
    """
    failures = opt.fail_on(fail_on)
    thresholds = opt.thresholds(min_ratio, min_delta_ms, alpha, min_samples)
    if explain and not (baseline_dsn and candidate_dsn):
        raise UsageError("--explain needs --baseline-dsn and --candidate-dsn")
    from rich.console import Console

    from pgtraffic.compare import ExplainTargets, compare_files, exit_code
    from pgtraffic.compare.render_text import terminal, to_json, to_junit, to_markdown

    targets = None
    if explain and baseline_dsn and candidate_dsn:
        targets = ExplainTargets(baseline_dsn, candidate_dsn, explain_top)
    comparison = compare_files(
        round_files(baseline, "BASELINE"),
        round_files(candidate, "CANDIDATE"),
        thresholds=thresholds,
        workload=workload,
        explain=targets,
    )
    out = Console(highlight=False)
    if as_json:
        typer.echo(to_json(comparison))
        _warn(comparison, Console(stderr=True, highlight=False))
    else:
        out.print(terminal(comparison, limit=limit, width=out.width))
    renderers: list[tuple[Path | None, Callable[[], str]]] = [
        (markdown, lambda: to_markdown(comparison)),
        (html, lambda: _html(comparison)),
        (junit, lambda: to_junit(comparison)),
    ]
    for path, render in renderers:
        if path is not None:
            path.write_text(render(), encoding="utf-8")
            if not as_json:
                out.print(f"wrote {path}")
    code = exit_code(comparison, failures, allow_incomplete=allow_incomplete)
    if code:
        raise typer.Exit(code)


def _warn(comparison: Comparison, err: Console) -> None:
    """With --json (stdout is the document), what must not go unseen goes to stderr."""
    from pgtraffic.compare.render_text import incomplete_lines, plan_problem_lines

    for line in incomplete_lines(comparison):
        err.print(f"[bold red]incomplete:[/] {line}", highlight=False)
    for notice in comparison.notices:
        err.print(f"[bold yellow]warning:[/] {notice}", highlight=False)
    for line in plan_problem_lines(comparison)[:1]:
        err.print(f"[bold red]warning:[/] {line}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `compare` to ``app``."""
    app.command("compare")(compare)
