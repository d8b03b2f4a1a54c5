"""Compare two replays of one workload: per-class latency, errors, rows and plans.

``compare_files`` is the one call: it loads both results files, compares them
(pure, in :mod:`pgtraffic.compare.core`), and optionally fills in SQL examples from the
workload and EXPLAINs the top classes on both servers.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pgtraffic.compare.core import DifferentWorkloadsError, compare_runs
from pgtraffic.compare.load import attach_sql, find_workload, load_run, representative_statements
from pgtraffic.compare.model import Comparison, Thresholds, Verdict
from pgtraffic.compare.plans import compare_plans

__all__ = [
    "Comparison",
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
    baseline: Path,
    candidate: Path,
    *,
    thresholds: Thresholds | None = None,
    workload: Path | None = None,
    explain: ExplainTargets | None = None,
) -> Comparison:
    """Compare two results files; see the module docstring."""
    run_a = load_run(baseline)
    run_b = load_run(candidate)
    wl = find_workload(run_a, workload) or find_workload(run_b, workload)
    texts = {fp: cls.normalized for fp, cls in wl.classes.items()} if wl else {}
    comparison = compare_runs(run_a, run_b, thresholds=thresholds, class_text=texts)
    if wl is None:
        return comparison
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
    return comparison


class FailOn(enum.Enum):
    """Findings that make ``pgtraffic compare --fail-on`` exit non-zero."""

    REGRESSION = "regression"
    ERRORS = "errors"
    ROWS = "rows"
    PLANS = "plans"


EXIT_BASE = 16
_FLAG = {FailOn.REGRESSION: 1, FailOn.ERRORS: 2, FailOn.ROWS: 4, FailOn.PLANS: 8}


def exit_code(comparison: Comparison, fail_on: Iterable[FailOn]) -> int:
    """0 when no selected finding is present, else 16 + the sum of the findings' flags:
    regression 1, errors 2, rows 4, plans 8 (so 17 = regressions only, 19 = regressions
    and new errors)."""
    found = {
        FailOn.REGRESSION: bool(comparison.by_verdict(Verdict.REGRESSED)),
        FailOn.ERRORS: comparison.new_errors > 0,
        FailOn.ROWS: bool(comparison.rows),
        FailOn.PLANS: any(p.changed for p in comparison.plans),
    }
    flags = sum(_FLAG[f] for f in set(fail_on) if found[f])
    return EXIT_BASE + flags if flags else 0
