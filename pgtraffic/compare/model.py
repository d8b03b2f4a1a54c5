"""Records of a comparison between two replays of one workload (all frozen)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pgtraffic.compare.rounds import Drift, RoundsEffect
from pgtraffic.compare.stats import Interval, Summary, TestResult
from pgtraffic.compare.targets import TargetDifferences
from replay.fidelity import FidelityLimits, FidelityVerdict

IntArray = npt.NDArray[np.integer[Any]]


@dataclass(frozen=True, slots=True)
class Completeness:
    """Whether a run replayed the whole workload; if not, what is missing.

    A run is incomplete when the replay stopped early (Ctrl-C, or killed: the results
    file has no final summary), when sessions could not connect or statements were not
    sent (the replay report's connect failures and ``08003`` counts), or when sync waits
    timed out (those statements went ahead of the commits they came after).
    """

    finished: bool = True
    """The replay ran to its end (False: interrupted or killed)."""
    killed: bool = False
    """No final summary: the replay was killed (``kill -9``, a crash) or is still running."""
    connect_failures: int = 0
    """Connection attempts the target refused."""
    unsent: int = 0
    """Statements not sent for want of a connection."""
    sync_timeouts: int = 0
    """Sync waits that reached ``--sync-timeout``."""
    statements: int = 0
    """Statements in the results file."""

    @property
    def complete(self) -> bool:
        return not self.reasons()

    def reasons(self) -> tuple[str, ...]:
        """Why the run is incomplete, one phrase per cause (empty when complete)."""
        out = []
        if self.killed:
            out.append("the replay was killed before it finished (no final summary)")
        elif not self.finished:
            out.append("the replay was interrupted before it finished")
        if self.connect_failures:
            out.append(f"{self.connect_failures:,} connection attempts failed")
        if self.unsent:
            out.append(f"{self.unsent:,} of {self.statements:,} statements were not sent")
        if self.sync_timeouts:
            out.append(
                f"{self.sync_timeouts:,} sync waits timed out (those statements went ahead "
                "of the commits they came after)"
            )
        return tuple(out)


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
    completeness: Completeness = field(default_factory=Completeness)

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
    rounds: RoundsEffect | None = None
    """With several rounds a side: the effect across rounds (the verdict's basis; the
    ratio, interval and q-value above are then the rounds' ones)."""


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
    """One side of a comparison. The lag fields are NaN for --max-speed runs: without a
    schedule, lag (send time minus intended send time) means nothing."""

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
    completeness: Completeness = field(default_factory=Completeness)

    @property
    def complete(self) -> bool:
        return self.completeness.complete

    def lag_text(self) -> str:
        """Lag p50 / p99 / max in ms, or why it does not apply."""
        if self.max_speed:
            return "n/a (--max-speed: no schedule)"
        return f"{self.lag_p50_ms:.1f} / {self.lag_p99_ms:.1f} / {self.lag_max_ms:.1f}"

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
    """Why the plans could not be compared (None: they were)."""
    failed: str | None = None
    """The side(s) whose EXPLAIN failed: ``baseline``, ``candidate`` or ``both``."""

    @property
    def compared(self) -> bool:
        return self.error is None


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
    notices: tuple[str, ...] = ()
    """Things the reader must know about the inputs (the same file twice, one server)."""
    explain_error: str | None = None
    """--explain was asked for but nothing could be explained, and why."""
    rounds: Rounds | None = None
    """Several results files a side: how the verdicts were reached across them."""
    targets: TargetDifferences | None = None
    """What differs between the two targets besides the version."""

    def incomplete_runs(self) -> list[tuple[str, RunSummary]]:
        """(side, summary) of each run that is incomplete (with rounds: every round's)."""
        sides = [("baseline", self.baseline), ("candidate", self.candidate)]
        if self.rounds is not None:
            sides = list(self.rounds.runs)
        return [(side, run) for side, run in sides if not run.complete]

    @property
    def unexplained(self) -> list[PlanDiff]:
        """Classes whose plans could not be compared."""
        return [p for p in self.plans if not p.compared]

    @property
    def plans_unavailable(self) -> bool:
        """Plans were asked for, and some (or all) could not be compared."""
        return self.explain_error is not None or bool(self.unexplained)

    def by_verdict(self, verdict: Verdict) -> list[ClassComparison]:
        return [c for c in self.classes if c.verdict is verdict]

    @property
    def new_errors(self) -> int:
        return sum(d.count for d in self.errors if d.change in ("new", "changed"))


@dataclass(frozen=True, slots=True)
class Rounds:
    """A comparison of several replays a side (rounds), see :mod:`pgtraffic.compare.rounds`."""

    baseline: int
    candidate: int
    drift: Drift | None
    """A shift shared by nearly every class, reported once and factored out."""
    runs: tuple[tuple[str, RunSummary], ...]
    """Every round's run, labelled (``baseline round 2``), first rounds first."""
    statements: int
    """Statements that succeeded in every round on both sides (what locations use)."""
    concurrent: bool = False
    """Each baseline round ran at the same time as the candidate round of its number
    (``rehearse --concurrent``), read from the runs' start times and durations."""
