"""What causal sync costs: ``--max-speed`` throughput of each ``--sync`` mode, same run.

Captures pgbench's simple-update script (``-N``: BEGIN, UPDATE, SELECT, INSERT, END;
8 clients, no dependencies between them beyond the tables they share) from a
PostgreSQL 16 capture server, then replays it onto one target at ``--max-speed``
with each mode, rounds alternating the order of the modes, timing the whole
``pgtraffic replay`` command (wall clock, from process start to exit) and reading
statements/s from its report. Prints medians and ranges, and each mode's ratio to
``--sync none``.

    python bench/sync_bench.py --seconds 10 --rounds 3 [--modes none,commit,rows,objects]

The target is initialized again (``pgbench -i``) before every replay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capture.pipeline import CaptureOptions, capture  # noqa: E402
from pgtraffic.servers import Cluster, Profile  # noqa: E402
from tests.replay_helpers import run_quiet  # noqa: E402


def capture_workload(seconds: int, clients: int, out: Path, rate: int | None = None) -> None:
    """pgbench -N (scale 10) captured from a fresh 16; ``rate``: pgbench -R (None: flat out)."""
    source = Cluster.create(major=16, profile=Profile.CAPTURE)
    limit = [] if rate is None else ["-R", str(rate)]
    try:
        run_quiet(source, "pgbench", "-i", "-q", "-s", "10")
        source.run_tool(
            "pgbench", "-n", "-N", "-c", str(clients), "-j", "2", *limit, "-T", str(seconds)
        )
        time.sleep(0.6)
        capture([str(p) for p in source.log_files()], out, CaptureOptions())
    finally:
        source.stop()


def replay_once(workload: Path, target: Cluster, mode: str, out: Path) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "pgtraffic.cli",
        "replay",
        str(workload),
        "--target",
        target.socket_dsn(),
        "-o",
        str(out),
        "--max-speed",
        "--sync",
        mode,
        "--json",
        "--no-progress",
        "--force",
    ]
    began = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"replay --sync {mode} failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    return {
        "wall_s": wall,
        "statements_per_s": float(report["statements_per_s"]),
        "wall_statements_per_s": report["statements"] / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="none,commit,rows,objects")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pgtraffic-sync-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    workload = args.workdir / "simple-update.pgtw"
    capture_workload(args.seconds, args.clients, workload)
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    target = Cluster.create(major=16, profile=Profile.TARGET)
    try:
        run_quiet(target, "pgbench", "-i", "-q", "-s", "10")
        for round_no in range(args.rounds):
            order = modes if round_no % 2 == 0 else modes[::-1]
            for mode in order:
                # the same starting state for every replay: the writes of the one
                # before (bloat, a longer history table) would slow the next
                run_quiet(target, "pgbench", "-i", "-q", "-s", "10")
                result = replay_once(workload, target, mode, args.workdir / f"{mode}.pgtr")
                runs[mode].append(result)
                print(json.dumps({"round": round_no, "sync": mode, **result}), flush=True)
    finally:
        target.stop()
    base = statistics.median(r["wall_statements_per_s"] for r in runs[modes[0]])
    print(f"\n| --sync | statements/s (wall, median) | range | vs {modes[0]} |")
    print("|---|--:|--:|--:|")
    for mode in modes:
        values = [r["wall_statements_per_s"] for r in runs[mode]]
        median = statistics.median(values)
        print(
            f"| {mode} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} | "
            f"{median / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
