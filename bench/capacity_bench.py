"""A five-step capacity sweep of a 60-second capture, timed as a user waits (issue #16).

Captures pgbench's simple-update script (``-N``, 8 clients, rate-limited to
``--rate`` transactions/s so the capture is a normal load, not a saturated one)
for ``--seconds`` from a PostgreSQL 16 capture server, initialises a target with
the same pgbench data, then times the whole command, from process start to exit:

    pgtraffic capacity W.pgtw --target DSN -o DIR --speeds 1,2,4,8,16 --reset template

and prints the wall time, the reset time the sweep reports, the steps and the knee.

    python bench/capacity_bench.py --seconds 60 --rate 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from sync_bench import capture_workload  # noqa: E402

from pgtraffic.servers import Cluster, Profile  # noqa: E402
from tests.replay_helpers import run_quiet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=300, help="pgbench -R during the capture")
    parser.add_argument("--speeds", default="1,2,4,8,16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capacity-bench-") as tmp:
        work = Path(tmp)
        workload = work / "w.pgtw"
        capture_workload(args.seconds, 8, workload, rate=args.rate)
        target = Cluster.create(major=16, profile=Profile.TARGET)
        try:
            run_quiet(target, "pgbench", "-i", "-q", "-s", "10")
            cmd = [
                sys.executable, "-m", "pgtraffic.cli", "capacity", str(workload),
                "--target", target.dsn(), "-o", str(work / "sweep"),
                "--speeds", args.speeds, "--reset", "template", "--json",
            ]  # fmt: skip
            began = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - began
        finally:
            target.stop()
    print(f"$ {' '.join(cmd)}\nexit {done.returncode}; wall {wall:.1f} s")
    if done.returncode not in (0, 1):
        print(done.stderr[-3000:])
    try:
        sweep = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(done.stdout[-3000:], done.stderr[-3000:])
        return
    for step in sweep.get("steps", []):
        print(
            {k: step.get(k) for k in ("speed", "offered_statements_per_s",
                                      "achieved_statements_per_s", "p99_ms", "reset_s")}
        )  # fmt: skip
    print("knee:", sweep.get("knee"))


if __name__ == "__main__":
    main()
