"""What replay reads before it sends: the quick scan (preamble and session spans, the
statements' bytes checked) against the full one (every statement decoded).

    python bench/scan_bench.py WORKLOAD.pgtw [--runs 3]

Alternates the two, asserts they agree, prints medians and ranges.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capture.workload import read_workload  # noqa: E402
from replay.runner import full_scan, quick_scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workload = read_workload(args.workload)
    quick: list[float] = []
    full: list[float] = []
    for _ in range(args.runs):
        start = time.perf_counter()
        fast = quick_scan(workload)
        quick.append(time.perf_counter() - start)
        start = time.perf_counter()
        slow = full_scan(workload)
        full.append(time.perf_counter() - start)
        if fast != slow:
            raise SystemExit("the quick and the full scan disagree (or the file has no spans)")
    q, f = statistics.median(quick), statistics.median(full)
    print(
        f"statements {slow.statements:,}: quick {q:.2f} s ({min(quick):.2f}-{max(quick):.2f}), "
        f"full {f:.2f} s ({min(full):.2f}-{max(full):.2f}), full/quick {f / q:.1f}x"
    )


if __name__ == "__main__":
    main()
