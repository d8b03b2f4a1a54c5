"""Compare verdicts across rounds on this machine: A/A false alarms, a planted regression,
and the 16 -> 18 demo, each a whole `pgtraffic demo --rounds N` (issue #14).

For each repetition it runs the demo's rehearsal (capture on 16, restore the dump on
two fresh targets, replay each --rounds times, restoring before every replay, compare
across rounds) and prints, per run, the classes flagged, the median and largest noise
floor, the drift, and for the planted run whether the class that lost its index was
caught:

    python bench/rounds_bench.py --aa 5 --planted 5 --upgrade 1 --rounds 3

Replays alternate (A B B A A B) by default; ``--concurrent`` replays both sides of a
round at the same time, ``--modes alternating,concurrent`` runs each repetition in
both modes, one after the other (so the machine's load, which others share, falls on
both modes alike). ``--save DIR`` writes each run's per-class round locations as JSON
(``pgtraffic.compare.multi.round_locations``) for analysis after the fact; the row
printed also gives, from those locations, the correlation of a class's baseline and
candidate residuals in the same round (what a paired test across rounds would gain)
and the floors such a paired test would have.

The planted change drops the index of the merge-request badge count on the candidate after
every restore (``--candidate-sql`` of the demo). The 16 -> 18 run uses ``--scale`` like
the others (0.3 by default); the demo's own default is 1, where its CI analytics class
comes out regressed (``percentile_class`` in the row; bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgtraffic.compare import Comparison  # noqa: E402

PLANTED_SQL = "DROP INDEX index_merge_requests_on_author_id"
PLANTED_CLASS = "FROM merge_requests WHERE author_id"
"""The badge count of a user's open merge requests: a sequential scan without the index."""
PERCENTILE_CLASS = "percentile_cont"
SKIP_SCAN_CLASS = "AS builds, sum("

Locations = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def residuals(locations: Locations) -> dict[str, tuple[list[float], list[float]]]:
    """Each class's round locations with every round's shared shift taken out (as
    :func:`pgtraffic.compare.rounds.judge_rounds` does before its test)."""
    import numpy as np

    from pgtraffic.compare.rounds import round_factors

    factors = round_factors(locations)
    if factors is None:
        return {k: (list(a), list(b)) for k, (a, b) in locations.items()}
    fa, fb = factors
    return {
        k: ((np.asarray(a) - fa).tolist(), (np.asarray(b) - fb).tolist())
        for k, (a, b) in locations.items()
    }


def paired_view(locations: Locations) -> dict[str, float | None]:
    """What pairing round k of the baseline with round k of the candidate would give:
    the median over classes of the correlation of their residuals within a round, and
    the median floor of a paired t-test (moderated like the unpaired one)."""
    import numpy as np

    from pgtraffic.compare.rounds import estimate_prior, t_quantile

    res = residuals(locations)
    correlations, variances = [], []
    for a, b in res.values():
        if len(a) != len(b) or len(a) < 3:
            return {"residual_corr": None, "paired_floor_median": None}
        x, y = np.asarray(a), np.asarray(b)
        if x.std() > 0 and y.std() > 0:
            correlations.append(float(np.corrcoef(x, y)[0, 1]))
        variances.append(float(np.var(y - x, ddof=1)))
    rounds = len(next(iter(res.values()))[0])
    df = rounds - 1
    prior = estimate_prior(variances, df)
    floors = []
    for v in variances:
        total_df: float = df
        if prior is not None:
            v, total_df = (
                (prior.variance, math.inf)
                if math.isinf(prior.df)
                else ((prior.df * prior.variance + df * v) / (prior.df + df), prior.df + df)
            )
        floors.append(math.exp(t_quantile(0.975, total_df) * math.sqrt(v / rounds)) - 1)
    return {
        "residual_corr": round(statistics.median(correlations), 2) if correlations else None,
        "paired_floor_median": round(statistics.median(floors), 3) if floors else None,
    }


def class_row(c: Comparison, needle: str) -> list[object]:
    return [
        (cls.verdict.value, round(cls.ratio_p50, 2), cls.rounds.floor if cls.rounds else None)
        for cls in c.classes
        if needle in " ".join(cls.text.split())
    ]


def summarize(c: Comparison, locations: Locations) -> dict[str, object]:
    from pgtraffic.compare import Verdict

    floors = [cls.rounds.floor for cls in c.classes if cls.rounds and cls.rounds.floor]
    flagged = [
        (cls.verdict.value, round(cls.ratio_p50, 2), " ".join(cls.text.split())[:70])
        for cls in c.classes
        if cls.verdict in (Verdict.REGRESSED, Verdict.IMPROVED)
    ]
    runs = [s for _, s in c.rounds.runs] if c.rounds else [c.baseline, c.candidate]
    return {
        "classes": len(c.classes),
        "flagged": flagged,
        "caught": any(v == "regressed" and PLANTED_CLASS in text for v, _, text in flagged),
        "planted_class": class_row(c, PLANTED_CLASS),
        "percentile_class": class_row(c, PERCENTILE_CLASS),
        "skip_scan_class": class_row(c, SKIP_SCAN_CLASS),
        "changed_plans": sum(1 for p in c.plans if p.changed),
        "floor_median": round(statistics.median(floors), 3) if floors else None,
        "floor_max": round(max(floors), 3) if floors else None,
        "drift": c.rounds.drift.ratio if c.rounds and c.rounds.drift else None,
        "lag_p95_max_ms": round(max(s.lag_p95_ms for s in runs), 1),
        "incomplete": [side for side, _ in c.incomplete_runs()],
        **paired_view(locations),
    }


def one_run(kind: str, concurrent: bool, args: argparse.Namespace, k: int) -> dict[str, object]:
    from pgtraffic.compare.load import load_run
    from pgtraffic.compare.multi import round_locations
    from pgtraffic.rehearsal import DemoSettings, demo

    settings = DemoSettings(
        seconds=args.seconds,
        scale=args.scale,
        rounds=args.rounds,
        candidate_major=18 if kind == "upgrade" else 16,
        candidate_sql=PLANTED_SQL if kind == "planted" else None,
        concurrent=concurrent,
    )
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rounds-bench-") as work:
        result = demo(Path(work), settings)
        base, cand = ([load_run(p) for p in side] for side in result.rounds)
        locations = round_locations(base, cand)
    row: dict[str, object] = {
        "kind": kind,
        "mode": "concurrent" if concurrent else "alternating",
        "seconds": round(time.perf_counter() - began, 1),
        "load": (round(load_before, 1), round(os.getloadavg()[0], 1)),
        **summarize(result.comparison, locations),
    }
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        texts = {c.fingerprint: " ".join(c.text.split())[:80] for c in result.comparison.classes}
        dump = {"row": row, "texts": texts, "locations": locations}
        (args.save / f"{kind}-{row['mode']}-{k}.json").write_text(json.dumps(dump, indent=1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aa", type=int, default=5, help="A/A runs (16 vs 16)")
    parser.add_argument("--planted", type=int, default=5, help="runs with the index dropped")
    parser.add_argument("--upgrade", type=int, default=1, help="16 -> 18 runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="the demo client's run")
    parser.add_argument("--scale", type=float, default=0.3, help="the scenario's data scale")
    parser.add_argument(
        "--concurrent", action="store_true", help="replay both sides of a round at once"
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="comma-separated modes to run each repetition in, in turn "
        "(alternating,concurrent); overrides --concurrent",
    )
    parser.add_argument("--save", type=Path, default=None, help="write each run's locations")
    args = parser.parse_args()
    modes = (args.modes or ("concurrent" if args.concurrent else "alternating")).split(",")
    plan = ["planted"] * args.planted + ["aa"] * args.aa + ["upgrade"] * args.upgrade
    for k, kind in enumerate(plan):
        for mode in modes:
            row = one_run(kind, mode.strip() == "concurrent", args, k)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
