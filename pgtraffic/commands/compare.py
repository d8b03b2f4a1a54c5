"""`pgtraffic compare`: what regressed between two replays of one workload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from capture.errors import UsageError
from pgtraffic import __version__
from pgtraffic.compare import (
    Comparison,
    ExplainTargets,
    FailOn,
    Thresholds,
    compare_files,
    exit_code,
)
from pgtraffic.compare.render_text import terminal, to_json, to_junit, to_markdown


def _fail_on(value: str | None) -> list[FailOn]:
    if not value:
        return []
    out = []
    for item in value.split(","):
        item = item.strip()
        try:
            out.append(FailOn(item))
        except ValueError:
            choices = ", ".join(f.value for f in FailOn)
            raise UsageError(f"--fail-on {item!r}: choose from {choices}") from None
    return out


def _html(comparison: Comparison) -> str:
    from pgtraffic.compare.render_html import to_html  # matplotlib: only when a report is made

    return to_html(comparison, version=__version__)


def compare(
    baseline: Annotated[Path, typer.Argument(help="Results file of the baseline run (.pgtr).")],
    candidate: Annotated[Path, typer.Argument(help="Results file of the candidate run (.pgtr).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    markdown: Annotated[
        Path | None, typer.Option(help="Also write a Markdown report (for a merge request).")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report with charts.")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write JUnit XML for CI.")] = None,
    fail_on: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated findings that fail the command: regression,errors,rows,plans."
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            help="EXPLAIN the top classes on both servers and compare plans "
            "(needs --baseline-dsn and --candidate-dsn)."
        ),
    ] = False,
    baseline_dsn: Annotated[
        str | None, typer.Option(help="Baseline server, for --explain.")
    ] = None,
    candidate_dsn: Annotated[
        str | None, typer.Option(help="Candidate server, for --explain.")
    ] = None,
    explain_top: Annotated[int, typer.Option(help="How many classes (by time) to EXPLAIN.")] = 20,
    workload: Annotated[
        Path | None,
        typer.Option(
            help="The workload file (default: the path the results name); "
            "gives query text, SQL examples and statements to EXPLAIN."
        ),
    ] = None,
    min_ratio: Annotated[float, typer.Option(help="Smallest median ratio that counts.")] = 1.10,
    min_delta_ms: Annotated[
        float, typer.Option(help="Smallest median change that counts (ms).")
    ] = 0.2,
    alpha: Annotated[
        float, typer.Option(help="False-discovery rate for the per-class tests.")
    ] = 0.05,
    min_samples: Annotated[int, typer.Option(help="Fewer executions: 'too few samples'.")] = 10,
    limit: Annotated[int, typer.Option(help="Rows of each terminal table.")] = 25,
) -> None:
    """Compare two replays of the same workload, query class by query class.

    A class is regressed (or improved) only when its median service time moved by at
    least --min-ratio and --min-delta-ms AND the change is significant (Wilcoxon
    signed-rank on paired statements, or Mann-Whitney U; Benjamini-Hochberg across
    classes). Also reports new, resolved and changed errors by SQLSTATE, row-count
    mismatches, plan changes (--explain), and whether either run lagged too far behind
    schedule to be trusted.

    Example:

        pgtraffic compare pg16.pgtr pg18.pgtr --html report.html --fail-on regression,errors

    Exit codes: 0 no selected finding; 16 + flags when --fail-on findings are present
    (regression 1, errors 2, rows 4, plans 8: 17 = regressed classes, 18 = new errors,
    19 = both); 2 bad usage; 3 unreadable input or results of different workloads.
    """
    failures = _fail_on(fail_on)
    targets = None
    if explain:
        if not (baseline_dsn and candidate_dsn):
            raise UsageError("--explain needs --baseline-dsn and --candidate-dsn")
        targets = ExplainTargets(baseline_dsn, candidate_dsn, explain_top)
    thresholds = Thresholds(
        min_ratio=min_ratio, min_delta_us=min_delta_ms * 1000, alpha=alpha, min_samples=min_samples
    )
    comparison = compare_files(
        baseline, candidate, thresholds=thresholds, workload=workload, explain=targets
    )
    out = Console(highlight=False)
    if as_json:
        typer.echo(to_json(comparison))
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
    code = exit_code(comparison, failures)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `compare` to ``app``."""
    app.command("compare")(compare)
