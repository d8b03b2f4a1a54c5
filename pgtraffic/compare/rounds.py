"""Pure statistics for comparisons over several rounds per side: no I/O.

One replay is one draw of the machine's state (caches, neighbours, the kernel's
mood): two replays of one workload on one server differ by a few percent per
class, and a test *within* one pair of runs, however many statements it has,
cannot see that spread. So with rounds (``A B B A A B ...``) the experimental unit
is the round, not the statement:

- each round gives each class one **location**: the trimmed mean of the log
  latencies of its statements (statements are the same in every round, so their
  own spread cancels);
- a class's **effect** is the difference of the mean locations (candidate minus
  baseline, on the log scale: a ratio), tested with a two-sample t-test whose
  variance is the spread of the locations *between rounds of the same side*, with
  ``R_a + R_b - 2`` degrees of freedom. A permutation test over rounds would need no
  normality, but with 3 rounds a side it has 20 arrangements and cannot go below
  p = 0.1; locations are means of thousands of values, normal enough;
- with 3 rounds a side that t-test has 4 degrees of freedom, and one class's
  spread is a poor estimate from 6 values; the classes' variances are therefore
  **moderated** towards their common level (empirical Bayes, Smyth 2004, as limma
  does for gene expression): each class keeps its own spread, shrunk towards the
  typical one by as much as the classes' spreads agree, and the test gains the
  degrees of freedom of that prior. Classes that are really noisier keep most of
  their own variance, so their false-positive rate is not bought for the others;
- that same spread gives the class its **noise floor**: the smallest effect that
  reaches significance on this machine with these rounds; smaller changes cannot be
  told from noise here;
- a shift shared by nearly every class is **drift** (the machine got slower
  between the sides, or warmer): reported once, and factored out of each class's
  effect, so that it does not scatter over the classes as small verdicts.

A class is regressed (improved) only when the effect, drift removed, is significant
after the false-discovery adjustment across classes, exceeds the floor, and points
the same way in every pair of rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pgtraffic.compare.stats import Interval, benjamini_hochberg

FloatArray = npt.NDArray[np.float64]

TRIM = 0.1
"""Share of the lowest and of the highest log latencies a round location leaves out."""

DRIFT_MIN_CLASSES = 5
"""Fewer tested classes than this: no drift is estimated (it would be a class's own effect)."""

DRIFT_SHARE = 0.8
"""Drift is a shift shared by at least this share of the classes (same sign)."""


def location(latencies_us: FloatArray, trim: float = TRIM) -> float:
    """One round's location for one class: trimmed mean of log latencies (µs >= 1)."""
    if latencies_us.size == 0:
        return math.nan
    logs = np.sort(np.log(np.maximum(latencies_us, 1.0)))
    cut = int(logs.size * trim)
    kept = logs[cut : logs.size - cut] if logs.size - 2 * cut > 0 else logs
    return float(kept.mean())


@dataclass(frozen=True, slots=True)
class RoundsEffect:
    """A class's effect across rounds: candidate / baseline, drift removed."""

    ratio: float
    """exp(mean candidate location - mean baseline location - drift)."""
    interval: Interval
    """95% confidence interval of :attr:`ratio`."""
    p_value: float
    floor: float | None
    """Smallest ratio change (e.g. 0.12 = 12%) that reaches significance here; None
    when the rounds give no spread to measure (one round on a side)."""
    round_ratios: tuple[float, ...]
    """Per pair of rounds (baseline round k, candidate round k), drift removed."""
    consistent: bool
    """Every pair of rounds points the same way as :attr:`ratio`."""


@dataclass(frozen=True, slots=True)
class Drift:
    """A shift shared by nearly every class, candidate vs baseline."""

    ratio: float
    """The shared shift (e.g. 1.03: the candidate side 3% slower everywhere)."""
    share: float
    """Share of the classes whose own effect points the same way."""
    classes: int


def t_quantile(p: float, df: float) -> float:
    from scipy import stats as sps  # imported here: it costs a second at CLI start-up

    return float(sps.t.ppf(p, df)) if math.isfinite(df) else float(sps.norm.ppf(p))


def _t_p_value(t: float, df: float) -> float:
    from scipy import stats as sps

    return float(2 * (sps.t.sf(abs(t), df) if math.isfinite(df) else sps.norm.sf(abs(t))))


@dataclass(frozen=True, slots=True)
class Prior:
    """The classes' common between-round variance (log scale) and how many degrees
    of freedom it is worth (``inf``: every class has the same variance)."""

    variance: float
    df: float


def pooled_variance(baseline: Sequence[float], candidate: Sequence[float]) -> tuple[float, int]:
    """The between-round variance of one class's locations, pooled over both sides,
    and its degrees of freedom (``R_a + R_b - 2``)."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    df = a.size + b.size - 2
    if df < 1:
        return math.nan, 0
    squares = float(((a - a.mean()) ** 2).sum()) + float(((b - b.mean()) ** 2).sum())
    return squares / df, df


def _trigamma_inverse(x: float) -> float:
    from scipy import optimize, special

    return float(optimize.brentq(lambda y: float(special.polygamma(1, y)) - x, 1e-6, 1e7))


def estimate_prior(variances: Sequence[float], df: int) -> Prior | None:
    """Smyth's (2004) moment estimates of the prior variance and its degrees of
    freedom from the classes' own variances (all with ``df`` degrees of freedom):
    log variances scatter by ``trigamma(df/2)`` from sampling alone; what scatters
    more tells how different the classes really are."""
    from scipy import special

    logs = np.log([v for v in variances if v > 0 and math.isfinite(v)])
    if logs.size < 3 or df < 1:
        return None
    half = df / 2
    e = logs - float(special.digamma(half)) + math.log(half)
    excess = float(e.var(ddof=1)) - float(special.polygamma(1, half))
    if excess <= 1e-7:
        return Prior(float(math.exp(e.mean())), math.inf)
    d0 = 2 * _trigamma_inverse(excess)
    variance = math.exp(float(e.mean()) + float(special.digamma(d0 / 2)) - math.log(d0 / 2))
    return Prior(variance, d0)


def class_effect(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    drift: float = 0.0,
    alpha: float = 0.05,
    prior: Prior | None = None,
    df_lost: float = 0.0,
) -> RoundsEffect:
    """Test one class from its round locations (log scale) on each side.

    ``drift`` is the shared log shift to factor out (0: none); ``prior`` the
    classes' common variance to moderate this class's own towards (None: its own);
    ``df_lost`` the degrees of freedom the round factors took from this class (its
    share of them), which its variance is corrected for.
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    effect = float(b.mean() - a.mean()) - drift
    pairs = tuple(
        math.exp(float(y - x) - drift) for x, y in zip(a.tolist(), b.tolist(), strict=False)
    )
    consistent = all((r > 1) == (effect > 0) for r in pairs if r != 1)
    variance, whole_df = pooled_variance(baseline, candidate)
    df = whole_df - df_lost
    if df < 1:
        nan = math.nan
        return RoundsEffect(math.exp(effect), Interval(nan, nan), nan, None, pairs, consistent)
    variance *= whole_df / df
    total_df: float = df
    if prior is not None:
        if math.isinf(prior.df):
            variance, total_df = prior.variance, math.inf
        else:
            variance = (prior.df * prior.variance + df * variance) / (prior.df + df)
            total_df = prior.df + df
    se = math.sqrt(variance * (1 / a.size + 1 / b.size))
    crit = t_quantile(1 - alpha / 2, total_df)
    p = _t_p_value(effect / se, total_df) if se > 0 else (1.0 if effect == 0 else 0.0)
    low, high = math.exp(effect - crit * se), math.exp(effect + crit * se)
    floor = math.exp(crit * se) - 1
    return RoundsEffect(math.exp(effect), Interval(low, high), p, floor, pairs, consistent)


def estimate_drift(effects: Sequence[float]) -> Drift | None:
    """The shift shared by nearly every class, from the classes' own log effects.

    It is the median effect, counted as drift only when at least
    :data:`DRIFT_SHARE` of at least :data:`DRIFT_MIN_CLASSES` classes point its
    way; one class's large change (a dropped index) moves the median not at all.
    """
    values = [e for e in effects if math.isfinite(e)]
    if len(values) < DRIFT_MIN_CLASSES:
        return None
    median = float(np.median(values))
    if median == 0:
        return None
    same = sum(1 for e in values if (e > 0) == (median > 0) and e != 0)
    share = same / len(values)
    if share < DRIFT_SHARE:
        return None
    return Drift(math.exp(median), share, len(values))


@dataclass(frozen=True, slots=True)
class RoundsJudgement:
    """Every class's effect across rounds, the drift factored out, and q-values."""

    effects: Mapping[str, RoundsEffect]
    q_values: Mapping[str, float]
    drift: Drift | None
    prior: Prior | None
    """The classes' common variance their own were moderated towards."""
    rounds: tuple[int, int]
    """Rounds on the baseline and on the candidate side."""


def round_factors(
    locations: Mapping[str, tuple[Sequence[float], Sequence[float]]],
) -> tuple[FloatArray, FloatArray] | None:
    """Each round's shift shared by the classes (the machine's state in that round).

    Per class, its locations are centred on their mean over all rounds; a round's
    factor is the median of those deviations over the classes. None when fewer than
    :data:`DRIFT_MIN_CLASSES` classes have every round, or rounds differ in number.
    """
    shapes = {(len(a), len(b)) for a, b in locations.values()}
    if len(shapes) != 1 or len(locations) < DRIFT_MIN_CLASSES:
        return None
    na, nb = shapes.pop()
    if na + nb < 3:
        return None
    matrix = np.array([[*a, *b] for a, b in locations.values()], dtype=np.float64)
    if not np.isfinite(matrix).all():
        return None
    deviations = matrix - matrix.mean(axis=1, keepdims=True)
    factors = np.median(deviations, axis=0)
    return factors[:na], factors[na:]


def judge_rounds(
    locations: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    alpha: float = 0.05,
) -> RoundsJudgement:
    """Test every class (key -> its baseline and candidate round locations).

    The machine's state moves every class of a round together, so each round's
    shared shift (:func:`round_factors`) is taken out of every class's locations
    first: what is left is each class's own noise, and the shared part of the
    difference between the sides is the drift (reported when nearly every class
    points its way). With too few classes to tell a shared shift, drift is
    estimated from the classes' raw effects instead. The p-values are adjusted
    together.
    """
    usable = {k: (list(a), list(b)) for k, (a, b) in locations.items() if len(a) and len(b)}
    raw = {key: float(np.mean(b) - np.mean(a)) for key, (a, b) in usable.items()}
    drift = estimate_drift(list(raw.values()))
    factors = round_factors(usable)
    lost = 0.0
    shift = math.log(drift.ratio) if drift is not None else 0.0
    if factors is not None:
        fa, fb = factors
        usable = {
            key: ((np.asarray(a) - fa).tolist(), (np.asarray(b) - fb).tolist())
            for key, (a, b) in usable.items()
        }
        shared = float(fb.mean() - fa.mean())
        if drift is not None:
            drift = Drift(math.exp(shared), drift.share, drift.classes)
        shift = 0.0  # the shared shift left with the round factors
        lost = (len(fa) + len(fb) - 1) / len(usable)
    spreads = [pooled_variance(*usable[key]) for key in usable]
    dfs = {df for _, df in spreads}
    prior = estimate_prior([v for v, _ in spreads], dfs.pop()) if len(dfs) == 1 else None
    effects = {
        key: class_effect(a, b, drift=shift, alpha=alpha, prior=prior, df_lost=lost)
        for key, (a, b) in usable.items()
    }
    keys = list(effects)
    qs = benjamini_hochberg([effects[k].p_value for k in keys])
    sides = [(len(a), len(b)) for a, b in locations.values()]
    rounds = max(sides) if sides else (0, 0)
    return RoundsJudgement(effects, dict(zip(keys, qs, strict=True)), drift, prior, rounds)


def significant(effect: RoundsEffect, q: float, alpha: float) -> bool:
    """Significant after adjustment, beyond the floor, and the same way in every round."""
    if math.isnan(q) or q >= alpha or not effect.consistent:
        return False
    change = abs(math.log(effect.ratio))
    return effect.floor is None or change > math.log1p(effect.floor)


def balanced_order(rounds: int) -> list[str]:
    """The side of each replay, ``A B B A A B ...``: each pair of rounds swaps which
    side goes first, so a trend over time (a cache warming, a neighbour starting)
    falls on both sides alike."""
    order: list[str] = []
    for k in range(rounds):
        order.extend(("A", "B") if k % 2 == 0 else ("B", "A"))
    return order
