"""Two checkouts of pgtraffic side by side, same run, same inputs: nothing slower?

``--before DIR`` is another checkout (``git worktree add /tmp/before REV``); the
tree this script lives in is *after*. Runs alternate (before, after, after,
before, ...) and time whole commands, wall clock, from process start to exit:

* ``capture LOG -o W`` on ``--log`` (a pgbench csvlog, e.g. one made by
  bench/capture_bench.py);
* ``replay W --max-speed`` of a pgbench simple-update capture (8 clients), and
  ``replay W --speed 1`` of a rate-limited one (``-R 200``, an unsaturated target),
  for statements/s and lag p99. Both are captured by *before*, so that both
  checkouts read them (a newer workload format may not be readable by older code);
  *after* replays them as it would any older workload.

    python bench/ab_bench.py --before /tmp/before --log /tmp/pgbench16.csv --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgtraffic.servers import Cluster, Profile  # noqa: E402
from tests.replay_helpers import run_quiet  # noqa: E402


def cli(checkout: Path) -> list[str]:
    """How to run the CLI of ``checkout`` (the module moved to pgtraffic/ in 0.1)."""
    module = "pgtraffic.cli" if (checkout / "pgtraffic" / "cli.py").is_file() else "replay.cli"
    return [sys.executable, "-m", module]


def timed(checkout: Path, *args: str) -> tuple[float, str]:
    began = time.monotonic()
    done = subprocess.run(
        [*cli(checkout), *args],
        cwd=checkout,
        env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(args[:2])} failed: {done.stderr[-1500:]}")
    return wall, done.stdout


def workloads(before: Path, workdir: Path, seconds: int) -> tuple[Path, Path]:
    """(simple-update at full speed, simple-update at -R 200), captured by ``before``."""
    out = []
    for name, rate in (("max", None), ("rate", "200")):
        source = Cluster.create(major=16, profile=Profile.CAPTURE)
        try:
            run_quiet(source, "pgbench", "-i", "-q", "-s", "10")
            extra = ["-R", rate] if rate else []
            source.run_tool("pgbench", "-n", "-N", "-c", "8", "-j", "2", "-T", str(seconds), *extra)
            time.sleep(0.6)
            path = workdir / f"{name}.pgtw"
            timed(before, "capture", *map(str, source.log_files()), "-o", str(path))
            out.append(path)
        finally:
            source.stop()
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--log", type=Path, help="a csvlog to time capture on")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--capture-only", action="store_true", help="time capture of --log only, no replay"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pgtraffic-ab-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sides = {"before": args.before.resolve(), "after": ROOT}
    results: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    if args.capture_only:
        max_w = rate_w = Path()
        target = None
    else:
        max_w, rate_w = workloads(sides["before"], args.workdir, args.seconds)
        target = Cluster.create(major=16, profile=Profile.TARGET)
        run_quiet(target, "pgbench", "-i", "-q", "-s", "10")
    try:
        for n in range(args.rounds):
            order = list(sides) if n % 2 == 0 else list(sides)[::-1]
            for side in order:
                row = one_round(sides[side], args, target, max_w, rate_w)
                for key, value in row.items():
                    results[side].setdefault(key, []).append(value)
                print(json.dumps({"round": n, "side": side, **row}), flush=True)
    finally:
        if target is not None:
            target.stop()
    print("\n| measure | before (median, range) | after (median, range) | after / before |")
    print("|---|--:|--:|--:|")
    for key in results["after"]:
        b, a = results["before"][key], results["after"][key]
        print(
            f"| {key} | {statistics.median(b):.2f} ({min(b):.2f}-{max(b):.2f}) | "
            f"{statistics.median(a):.2f} ({min(a):.2f}-{max(a):.2f}) | "
            f"{statistics.median(a) / statistics.median(b):.2f} |"
        )


def one_round(
    checkout: Path, args: argparse.Namespace, target: Cluster | None, max_w: Path, rate_w: Path
) -> dict[str, float]:
    row: dict[str, float] = {}
    if args.log is not None:
        out = args.workdir / "capture.pgtw"
        out.unlink(missing_ok=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        row["capture_wall_s"], _ = timed(checkout, "capture", str(args.log), "-o", str(out))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row["capture_cpu_s"] = (after.ru_utime - before.ru_utime) + (
            after.ru_stime - before.ru_stime
        )
    if target is None:
        return row
    # no --force (older checkouts lack it): the results file goes before each replay
    common = ["--target", target.socket_dsn(), "--json", "--no-progress"]
    res_path = args.workdir / "r.pgtr"
    res = str(res_path)
    res_path.unlink(missing_ok=True)
    wall, text = timed(checkout, "replay", str(max_w), "-o", res, "--max-speed", *common)
    report = json.loads(text)
    row["max_speed_statements_per_s_wall"] = report["statements"] / wall
    res_path.unlink(missing_ok=True)
    wall, text = timed(checkout, "replay", str(rate_w), "-o", res, *common)
    report = json.loads(text)
    row["speed1_lag_p99_ms"] = float(report["lag_p99_ms"])
    row["speed1_replayer_lag_p99_ms"] = float(report["replayer_lag_p99_ms"])
    return row


if __name__ == "__main__":
    main()
