"""Records of a comparison between two replays of one workload (all frozen)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pgtraffic.compare.stats import Interval, Summary, TestResult
from replay.fidelity import FidelityLimits, FidelityVerdict

IntArray = npt.NDArray[np.integer[Any]]


@dataclass(frozen=True)
class RunData:
    """One results file, as columns: everything compare needs, nothing more.

    Interned columns (``session``, ``fingerprint``, ``sqlstate``,
    ``original_sqlstate``) index the matching tuple; ``sqlstates[0]`` is ``""``,
    which means success. ``rows`` is -1 where the command tag gave no row count.
    """

    path: str
    label: str
    workload_id: str
    server_version: str | None
    max_speed: bool
    speed: float
    duration_s: float
    sessions: tuple[str, ...]
    fingerprints: tuple[str, ...]
    sqlstates: tuple[str, ...]
    session: IntArray
    index: IntArray
    fingerprint: IntArray
    intended_us: IntArray
    start_us: IntArray
    service_us: IntArray
    rows: IntArray
    sqlstate: IntArray
    original_sqlstate: IntArray
    workload_path: str | None = None
    header: dict[str, object] = field(default_factory=dict)
    sync_wait_us: IntArray | None = None
    """Per statement: time waited for other sessions' commits (--sync); None: no waits."""

    def __len__(self) -> int:
        return int(self.service_us.size)


class Verdict(enum.StrEnum):
    REGRESSED = "regressed"
    IMPROVED = "improved"
    UNCHANGED = "unchanged"
    TOO_FEW = "too few samples"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a difference counts: all three must hold (plus the direction)."""

    min_ratio: float = 1.10
    """Ratio of medians at least this (or at most its inverse, for improved)."""
    min_delta_us: float = 200.0
    """Absolute change of the median of at least this many microseconds."""
    alpha: float = 0.05
    """False-discovery rate across classes (Benjamini-Hochberg q-value below this)."""
    min_samples: int = 10
    """Fewer successful executions on either side: *too few samples*."""
    fidelity: FidelityLimits = field(default_factory=FidelityLimits)
    """When a run was behind schedule (the replay report judges by the same limits)."""


@dataclass(frozen=True, slots=True)
class ClassComparison:
    fingerprint: str
    text: str
    baseline: Summary
    candidate: Summary
    baseline_errors: int
    candidate_errors: int
    ratio_p50: float
    ratio_p95: float
    delta_p50_us: float
    ci_p50: Interval | None
    ci_p95: Interval | None
    test: TestResult
    q_value: float
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Example:
    session: str
    index: int
    sql: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Divergence:
    """Statements of one class that came out differently on the candidate, the same way."""

    fingerprint: str
    text: str
    count: int
    examples: tuple[Example, ...]


@dataclass(frozen=True, slots=True)
class ErrorDivergence(Divergence):
    """Statements of one class whose outcome changed the same way."""

    change: str
    """``new`` (failed only in the candidate), ``resolved`` or ``changed``."""
    baseline_sqlstate: str
    candidate_sqlstate: str


@dataclass(frozen=True, slots=True)
class RowMismatch(Divergence):
    """Statements of one class whose row counts differ between the runs."""

    compared: int
    """Statements of the class whose row counts both runs reported."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    label: str
    path: str
    server_version: str | None
    statements: int
    errors: int
    duration_s: float
    throughput: float
    total_service_ms: float
    lag_p50_ms: float
    lag_p95_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    max_speed: bool
    speed: float
    faithful: bool
    fidelity_note: str
    fidelity: FidelityVerdict = FidelityVerdict.ON_SCHEDULE

    @property
    def error_rate(self) -> float:
        """Share of statements that failed (0 for an empty run)."""
        return self.errors / self.statements if self.statements else 0.0

    def errors_text(self) -> str:
        return f"{self.errors:,} ({self.error_rate:.2%})"


@dataclass(frozen=True, slots=True)
class PlanDiff:
    fingerprint: str
    text: str
    sql: str
    baseline_plan: str
    candidate_plan: str
    changed: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    second: int
    baseline_p95_ms: float
    candidate_p95_ms: float
    baseline_lag_p95_ms: float
    candidate_lag_p95_ms: float


@dataclass(frozen=True)
class Comparison:
    baseline: RunSummary
    candidate: RunSummary
    thresholds: Thresholds
    classes: tuple[ClassComparison, ...]
    errors: tuple[ErrorDivergence, ...]
    rows: tuple[RowMismatch, ...]
    paired: int
    total_ratio: float
    geomean_ratio: float
    timeline: tuple[TimelinePoint, ...] = ()
    plans: tuple[PlanDiff, ...] = ()
    samples: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """Per top class: latency samples (ms, subsampled) of each side, for charts."""

    def by_verdict(self, verdict: Verdict) -> list[ClassComparison]:
        return [c for c in self.classes if c.verdict is verdict]

    @property
    def new_errors(self) -> int:
        return sum(d.count for d in self.errors if d.change in ("new", "changed"))
