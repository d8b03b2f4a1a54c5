"""Compare two replays of one workload: per-class latency, errors, rows and plans.

``compare_files`` is the one call: it loads both results files, compares them
(pure, in :mod:`pgtraffic.compare.core`), and optionally fills in SQL examples from the
workload and EXPLAINs the top classes on both servers.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgtraffic.compare.core import DifferentWorkloadsError, check_same_workload, compare_runs
from pgtraffic.compare.load import (
    attach_sql,
    find_workload,
    load_run,
    representative_statements,
    run_identity,
    same_target,
)
from pgtraffic.compare.model import Comparison, Completeness, RunData, Thresholds, Verdict
from pgtraffic.compare.multi import apply_rounds
from pgtraffic.compare.plans import compare_plans
from pgtraffic.compare.targets import target_differences

__all__ = [
    "INCOMPLETE_EXIT",
    "Comparison",
    "Completeness",
    "DifferentWorkloadsError",
    "ExplainTargets",
    "FailOn",
    "Thresholds",
    "Verdict",
    "compare_files",
    "exit_code",
]


@dataclass(frozen=True, slots=True)
class ExplainTargets:
    baseline_dsn: str
    candidate_dsn: str
    top: int = 20


def compare_files(
    baseline: Path | Sequence[Path],
    candidate: Path | Sequence[Path],
    *,
    thresholds: Thresholds | None = None,
    workload: Path | None = None,
    explain: ExplainTargets | None = None,
) -> Comparison:
    """Compare two results files, or several a side (rounds); see the module docstring.

    With several files a side, the class verdicts are reached across the rounds
    (:mod:`pgtraffic.compare.rounds`); errors, rows and plans are those of each side's
    first file.
    """
    paths_a = [baseline] if isinstance(baseline, Path) else list(baseline)
    paths_b = [candidate] if isinstance(candidate, Path) else list(candidate)
    runs_a = [load_run(p) for p in paths_a]
    runs_b = [load_run(p) for p in paths_b]
    run_a, run_b = runs_a[0], runs_b[0]
    wl = find_workload(run_a, workload) or find_workload(run_b, workload)
    texts = {fp: cls.normalized for fp, cls in wl.classes.items()} if wl else {}
    comparison = compare_runs(run_a, run_b, thresholds=thresholds, class_text=texts)
    for other in [*runs_a[1:], *runs_b[1:]]:
        check_same_workload(run_a, other)
    if len(runs_a) > 1 or len(runs_b) > 1:
        comparison = apply_rounds(comparison, runs_a, runs_b)
    comparison = dataclasses.replace(
        comparison,
        notices=_notices(paths_a[0], paths_b[0], run_a, run_b) + _round_notices(paths_a + paths_b),
        targets=target_differences(run_a.header, run_b.header),
    )
    if wl is None:
        if explain is None:
            return comparison
        named = workload or run_a.workload_path or run_b.workload_path
        return dataclasses.replace(
            comparison,
            explain_error=f"the workload file ({named or 'not named by the results'}) was not "
            "found, so there were no statements to EXPLAIN; pass --workload FILE",
        )
    comparison = attach_sql(comparison, wl)
    if explain is not None:
        by_time = sorted(
            comparison.classes, key=lambda c: -max(c.baseline.total, c.candidate.total)
        )
        order = [
            c.fingerprint
            for c in comparison.classes
            if c.verdict in (Verdict.REGRESSED, Verdict.IMPROVED)
        ]
        order += [c.fingerprint for c in by_time[: explain.top] if c.fingerprint not in order]
        reps = representative_statements(wl, order)
        databases = {sid: s.database for sid, s in wl.sessions.items()}
        plans = compare_plans(
            reps, texts, databases, explain.baseline_dsn, explain.candidate_dsn, order
        )
        comparison = dataclasses.replace(comparison, plans=plans)
        if not plans:
            comparison = dataclasses.replace(
                comparison,
                explain_error=f"none of the {len(order)} classes chosen has a statement "
                "EXPLAIN accepts (SELECT, INSERT, UPDATE, DELETE, MERGE)",
            )
    return comparison


def _notices(path_a: Path, path_b: Path, a: RunData, b: RunData) -> tuple[str, ...]:
    """What the reader must know about the two inputs themselves."""
    try:
        same_file = path_a.samefile(path_b)
    except OSError:
        same_file = False
    if same_file:
        return (
            f"{path_a} and {path_b} are the same file: the run is compared with itself, "
            "so nothing can differ",
        )
    if run_identity(a) == run_identity(b):
        return (
            f"{path_a} and {path_b} hold the same replay (same workload, target and start "
            "time: one is a copy of the other): nothing can differ",
        )
    where = same_target(a, b)
    if where is not None:
        return (
            f"both runs replayed on the same server ({where}): an A/A comparison of one "
            "server, the second run on the state the first one left unless it was reset",
        )
    return ()


def _round_notices(paths: Sequence[Path]) -> tuple[str, ...]:
    """A results file given twice among the rounds counts one replay twice."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            return (f"{path} is given twice among the rounds: one replay counts as two",)
        seen[key] = path
    return ()


class FailOn(enum.Enum):
    """Findings that make ``pgtraffic compare --fail-on`` exit non-zero."""

    REGRESSION = "regression"
    ERRORS = "errors"
    ROWS = "rows"
    PLANS = "plans"


EXIT_BASE = 16
INCOMPLETE_EXIT = 6
"""A run was incomplete (``pgtraffic replay`` exits 6 for such a run too)."""
_FLAG = {FailOn.REGRESSION: 1, FailOn.ERRORS: 2, FailOn.ROWS: 4, FailOn.PLANS: 8}


def exit_code(
    comparison: Comparison, fail_on: Iterable[FailOn], *, allow_incomplete: bool = False
) -> int:
    """6 when a run is incomplete (interrupted, killed, sessions that could not connect,
    statements not sent, sync timeouts) unless ``allow_incomplete``; else 0 when no
    selected finding is present, else 16 + the sum of the findings' flags: regression 1,
    errors 2, rows 4, plans 8 (changed, or could not be compared), so 17 = regressions
    only, 19 = regressions and new errors."""
    if comparison.incomplete_runs() and not allow_incomplete:
        return INCOMPLETE_EXIT
    found = {
        FailOn.REGRESSION: bool(comparison.by_verdict(Verdict.REGRESSED)),
        FailOn.ERRORS: comparison.new_errors > 0,
        FailOn.ROWS: bool(comparison.rows),
        FailOn.PLANS: any(p.changed for p in comparison.plans) or comparison.plans_unavailable,
    }
    flags = sum(_FLAG[f] for f in set(fail_on) if found[f])
    return EXIT_BASE + flags if flags else 0
