"""Pure statistics for comparing two latency samples: no I/O, numpy arrays in.

The verdict for one query class needs *both* a statistical test (is the difference
real?) and an effect size (is it big enough to matter?). Latencies are skewed and
heavy-tailed, so the tests are rank-based (Wilcoxon signed-rank on paired
instances, Mann-Whitney U otherwise), never a t-test on means, and the p-values
of all classes are adjusted together (Benjamini-Hochberg) so a hundred classes do
not produce five false alarms by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Summary:
    """Location and spread of one latency sample (microseconds)."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    total: float

    @classmethod
    def of(cls, values: FloatArray) -> Summary:
        if values.size == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, 0.0)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(
            int(values.size),
            float(p50),
            float(p95),
            float(p99),
            float(values.mean()),
            float(values.sum()),
        )


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence interval for a ratio (candidate / baseline)."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class TestResult:
    """Outcome of the significance test between two samples."""

    method: str
    """``wilcoxon-paired``, ``mann-whitney`` or ``none`` (too few samples)."""
    p_value: float
    pairs: int
    """Paired instances used (0 for an unpaired test)."""


def ratio(candidate: float, baseline: float) -> float:
    """candidate / baseline, with 0/0 = 1 and x/0 = inf."""
    if baseline == 0:
        return 1.0 if candidate == 0 else math.inf
    return candidate / baseline


def significance(
    baseline: FloatArray,
    candidate: FloatArray,
    paired_baseline: FloatArray | None = None,
    paired_candidate: FloatArray | None = None,
    *,
    min_samples: int = 10,
) -> TestResult:
    """Two-sided test that the two latency distributions differ.

    When paired instances (the same statement replayed on both sides) are given and
    there are enough of them, the Wilcoxon signed-rank test on log ratios removes the
    statement-to-statement variation that an unpaired test must treat as noise.
    """
    from scipy import stats as sps  # imported here: it costs a second at CLI start-up

    if (
        paired_baseline is not None
        and paired_candidate is not None
        and paired_baseline.size >= min_samples
    ):
        diffs = np.log(np.maximum(paired_candidate, 1.0)) - np.log(np.maximum(paired_baseline, 1.0))
        if not np.any(diffs):
            return TestResult("wilcoxon-paired", 1.0, int(diffs.size))
        res = sps.wilcoxon(diffs, zero_method="zsplit", alternative="two-sided")
        return TestResult("wilcoxon-paired", float(res.pvalue), int(diffs.size))
    if baseline.size < min_samples or candidate.size < min_samples:
        return TestResult("none", math.nan, 0)
    if np.array_equal(np.unique(baseline), np.unique(candidate)) and baseline.size == 1:
        return TestResult("mann-whitney", 1.0, 0)
    res = sps.mannwhitneyu(baseline, candidate, alternative="two-sided", method="asymptotic")
    return TestResult("mann-whitney", float(res.pvalue), 0)


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """q-values: p-values adjusted for the false discovery rate (NaN stays NaN)."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    q = [math.nan] * len(p_values)
    if not idx:
        return q
    ps = np.array([p_values[i] for i in idx])
    order = np.argsort(ps)
    m = len(ps)
    adjusted = ps[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    adjusted = np.minimum(adjusted, 1.0)
    for rank, pos in enumerate(order):
        q[idx[pos]] = float(adjusted[rank])
    return q


def bootstrap_ratio_intervals(
    baseline: FloatArray,
    candidate: FloatArray,
    *,
    resamples: int = 200,
    max_sample: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Interval, Interval]:
    """Percentile-bootstrap intervals for the ratios of medians and of p95s.

    Each side is resampled independently; large samples are first subsampled to
    ``max_sample`` values, which keeps the cost bounded on millions of statements.
    """
    rng = np.random.default_rng(seed)

    def draws(values: FloatArray) -> FloatArray:
        if values.size > max_sample:
            values = rng.choice(values, size=max_sample, replace=False)
        picks = rng.integers(0, values.size, size=(resamples, values.size))
        return values[picks]

    a = draws(baseline)
    b = draws(candidate)
    alpha = (1 - confidence) / 2 * 100
    bounds = [alpha, 100 - alpha]
    out = []
    for q in (50, 95):
        qa = np.percentile(a, q, axis=1)
        qb = np.percentile(b, q, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(qa > 0, qb / np.where(qa > 0, qa, 1), np.where(qb > 0, np.inf, 1.0))
        low, high = np.percentile(ratios, bounds)
        out.append(Interval(float(low), float(high)))
    return out[0], out[1]


def geometric_mean(values: list[float]) -> float:
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if not finite:
        return math.nan
    return float(math.exp(sum(math.log(v) for v in finite) / len(finite)))
