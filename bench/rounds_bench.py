"""Compare verdicts across rounds on this machine: A/A false alarms, a planted regression,
and the 16 -> 18 demo, each a whole `pgtraffic demo --rounds N` (issue #14).

For each repetition it runs the demo's rehearsal (capture on 16, restore the dump on
two fresh targets, replay each --rounds times in the order A B B A A B, restoring
before every replay, compare across rounds) and prints, per run, the classes
flagged, the median and largest noise floor, the drift, and for the planted run
whether the class that lost its index was caught:

    python bench/rounds_bench.py --aa 5 --planted 5 --upgrade 1 --rounds 3

The planted change drops the index of the merge-request badge count on the candidate after
every restore (``--candidate-sql`` of the demo).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLANTED_SQL = "DROP INDEX index_merge_requests_on_author_id"
PLANTED_CLASS = "FROM merge_requests WHERE author_id"
"""The badge count of a user's open merge requests: a sequential scan without the index."""


def one_run(kind: str, args: argparse.Namespace) -> dict[str, object]:
    from pgtraffic.compare import Verdict
    from pgtraffic.rehearsal import DemoSettings, demo

    settings = DemoSettings(
        seconds=args.seconds,
        scale=args.scale,
        rounds=args.rounds,
        candidate_major=18 if kind == "upgrade" else 16,
        candidate_sql=PLANTED_SQL if kind == "planted" else None,
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rounds-bench-") as work:
        result = demo(Path(work), settings)
    c = result.comparison
    floors = [cls.rounds.floor for cls in c.classes if cls.rounds and cls.rounds.floor]
    flagged = [
        (cls.verdict.value, round(cls.ratio_p50, 2), " ".join(cls.text.split())[:70])
        for cls in c.classes
        if cls.verdict in (Verdict.REGRESSED, Verdict.IMPROVED)
    ]
    caught = any(v == "regressed" and PLANTED_CLASS in text for v, _, text in flagged)
    planted = [
        (round(cls.ratio_p50, 2), cls.rounds.floor if cls.rounds else None)
        for cls in c.classes
        if PLANTED_CLASS in " ".join(cls.text.split())
    ]
    drift = c.rounds.drift.ratio if c.rounds and c.rounds.drift else None
    return {
        "kind": kind,
        "seconds": round(time.perf_counter() - began, 1),
        "classes": len(c.classes),
        "flagged": flagged,
        "caught": caught,
        "planted_class": planted,
        "floor_median": statistics.median(floors) if floors else None,
        "floor_max": max(floors) if floors else None,
        "drift": drift,
        "incomplete": [side for side, _ in c.incomplete_runs()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aa", type=int, default=5, help="A/A runs (16 vs 16)")
    parser.add_argument("--planted", type=int, default=5, help="runs with the index dropped")
    parser.add_argument("--upgrade", type=int, default=1, help="16 -> 18 runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="the demo client's run")
    parser.add_argument("--scale", type=float, default=0.3, help="the scenario's data scale")
    args = parser.parse_args()
    plan = ["planted"] * args.planted + ["aa"] * args.aa + ["upgrade"] * args.upgrade
    for kind in plan:
        row = one_run(kind, args)
        print(row, flush=True)


if __name__ == "__main__":
    main()
