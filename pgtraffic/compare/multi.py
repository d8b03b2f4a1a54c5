"""Round locations of every class from several results files per side.

The statements of one workload are the same in every replay, so each class's
location per round is taken over the *same* statements: those that succeeded in
every round on both sides (a statement that failed once would otherwise move its
class's location in that round only). See :mod:`pgtraffic.compare.rounds`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence

import numpy as np

from pgtraffic.compare.core import run_summary, severity
from pgtraffic.compare.model import (
    ClassComparison,
    Comparison,
    IntArray,
    Rounds,
    RunData,
    Thresholds,
    Verdict,
)
from pgtraffic.compare.rounds import (
    RoundsEffect,
    RoundsJudgement,
    judge_rounds,
    location,
    significant,
)
from pgtraffic.compare.stats import TestResult


def _keys(run: RunData, sessions: dict[str, int], width: int) -> IntArray:
    table = np.array([sessions.setdefault(s, len(sessions)) for s in run.sessions], np.int64)
    ids = table[run.session] if run.session.size else run.session.astype(np.int64)
    return ids * width + run.index.astype(np.int64)


def _common_ok(runs: Sequence[RunData]) -> list[IntArray]:
    """Per run, the positions of the statements that succeeded in every run, in one
    common order (by statement key)."""
    width = max((int(r.index.max()) + 1 for r in runs if r.index.size), default=1)
    sessions: dict[str, int] = {}
    keyed = [(_keys(r, sessions, width), r.sqlstate == 0) for r in runs]
    common: IntArray | None = None
    for keys, ok in keyed:
        good = np.unique(keys[ok])
        common = good if common is None else np.intersect1d(common, good, assume_unique=True)
    assert common is not None
    positions: list[IntArray] = []
    for keys, _ok in keyed:
        order = np.argsort(keys, kind="stable")
        found = np.searchsorted(keys[order], common)
        positions.append(order[found])
    return positions


def round_locations(
    baseline: Sequence[RunData], candidate: Sequence[RunData]
) -> dict[str, tuple[list[float], list[float]]]:
    """Per class fingerprint: its location in each baseline round and each
    candidate round, over the statements that succeeded in all of them."""
    runs = [*baseline, *candidate]
    if not runs:
        return {}
    return _locations(runs, _common_ok(runs), len(baseline))


def _locations(
    runs: Sequence[RunData], positions: Sequence[IntArray], baseline: int
) -> dict[str, tuple[list[float], list[float]]]:
    """:func:`round_locations` over ``positions`` (from :func:`_common_ok`); the first
    ``baseline`` runs are the baseline's."""
    first = runs[0]
    pos0 = positions[0]
    classes = first.fingerprint[pos0]
    out: dict[str, tuple[list[float], list[float]]] = {}
    for cid in np.unique(classes):
        members = classes == cid
        locs = [
            location(run.service_us[pos[members]].astype(np.float64))
            for run, pos in zip(runs, positions, strict=True)
        ]
        key = first.fingerprints[int(cid)]
        out[key] = (locs[:baseline], locs[baseline:])
    return out


def _span(run: RunData) -> tuple[float, float] | None:
    """When a run sent its statements (POSIX seconds), from its header's start time and
    its duration; None when the header has no start time."""
    started = run.header.get("start_time")
    if not isinstance(started, str):
        return None
    try:
        start = dt.datetime.fromisoformat(started).timestamp()
    except ValueError:
        return None
    return start, start + START_SLACK_S + run.duration_s


START_SLACK_S = 0.3
"""A replay's first statement goes this long after the start time its header records."""


def replayed_together(baseline: Sequence[RunData], candidate: Sequence[RunData]) -> bool:
    """Whether each baseline round ran at the same time as the candidate round of its
    number: their spans overlap over at least half of the shorter one (replays one
    after the other, even back to back, overlap not at all)."""
    if len(baseline) != len(candidate) or not baseline:
        return False
    for a, b in zip(baseline, candidate, strict=True):
        sa, sb = _span(a), _span(b)
        if sa is None or sb is None:
            return False
        overlap = min(sa[1], sb[1]) - max(sa[0], sb[0])
        if overlap <= 0.5 * min(sa[1] - sa[0], sb[1] - sb[0]):
            return False
    return True


def _verdict(cls: ClassComparison, effect: RoundsEffect, q: float, th: Thresholds) -> Verdict:
    delta = cls.baseline.p50 * (effect.ratio - 1)
    if not significant(effect, q, th.alpha) or abs(delta) < th.min_delta_us:
        return Verdict.UNCHANGED
    if effect.ratio >= th.min_ratio:
        return Verdict.REGRESSED
    if effect.ratio <= 1 / th.min_ratio:
        return Verdict.IMPROVED
    return Verdict.UNCHANGED


def _judged_class(cls: ClassComparison, judged: RoundsJudgement, th: Thresholds) -> ClassComparison:
    effect = judged.effects.get(cls.fingerprint)
    if effect is None or cls.verdict is Verdict.TOO_FEW:
        return cls
    q = judged.q_values[cls.fingerprint]
    return dataclasses.replace(
        cls,
        ratio_p50=effect.ratio,
        delta_p50_us=cls.baseline.p50 * (effect.ratio - 1),
        ci_p50=effect.interval if not math.isnan(effect.interval.low) else None,
        test=TestResult("rounds-t", effect.p_value, len(effect.round_ratios)),
        q_value=q,
        verdict=_verdict(cls, effect, q, th),
        rounds=effect,
    )


def apply_rounds(
    first: Comparison,
    baseline: Sequence[RunData],
    candidate: Sequence[RunData],
) -> Comparison:
    """The comparison of the first round of each side, its class verdicts replaced by
    verdicts across all rounds (errors, rows and plans stay the first rounds')."""
    th = first.thresholds
    runs = [*baseline, *candidate]
    positions = _common_ok(runs)  # once: both the locations and the count use it
    locations = _locations(runs, positions, len(baseline))
    judged = judge_rounds(locations, alpha=th.alpha)
    classes = sorted((_judged_class(c, judged, th) for c in first.classes), key=severity)
    summaries = tuple(
        (f"{side} round {k + 1}", run_summary(run, th))
        for side, side_runs in (("baseline", baseline), ("candidate", candidate))
        for k, run in enumerate(side_runs)
    )
    common = len(positions[0])
    rounds = Rounds(
        len(baseline),
        len(candidate),
        judged.drift,
        summaries,
        common,
        concurrent=replayed_together(baseline, candidate),
    )
    return dataclasses.replace(first, classes=tuple(classes), rounds=rounds)
