"""Capture throughput: pgtraffic capture vs pgreplay -f and pgbadger on one pgbench csvlog.

Generates (or reuses) a csvlog of at least --size-gb written by PostgreSQL 16
while pgbench runs in simple-protocol mode with log_statement=all,
log_min_duration_statement=-1 and connection logging, then times, on that same
file and in the same run:

* ``pgreplay -f -c -o OUT LOG``  (parse-only mode of pgreplay),
* ``pgbadger -j 2 -f csv -o OUT LOG``,
* ``pgtraffic capture LOG -o OUT``,

and reports statements/s for each (the statement count is pgtraffic's, so the
ratios are ratios of wall times), the CPU each used (cores busy on average),
and pgtraffic's peak RSS summed over its process tree.

    python bench/capture_bench.py --size-gb 1 --workdir /tmp/pgtraffic-bench

PostgreSQL 16 is used because pgreplay aborts on the ``Parameters:`` lines of
17+ logs (not present in simple-mode logs, but kept comparable anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def generate(log: Path, size_gb: float) -> None:
    from pgtraffic.servers import Cluster, Profile

    cluster = Cluster.create(
        major=16,
        profile=Profile.CAPTURE,
        settings={"log_min_duration_statement": "-1", "max_connections": "50"},
    )
    try:
        cluster.run_tool("pgbench", "-i", "-q", "-s", "10")
        target = int(size_gb * (1 << 30))
        while True:
            files = cluster.log_files()
            size = sum(f.stat().st_size for f in files)
            print(f"  log size {size / (1 << 20):,.0f} MiB", flush=True)
            if size >= target:
                break
            cluster.run_tool("pgbench", "-n", "-M", "simple", "-c", "8", "-j", "2", "-T", "20")
        files = cluster.log_files()
        assert len(files) == 1, files
        log.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(files[0]), log)
    finally:
        cluster.stop()


def run(cmd: list[str], label: str, *, memory: bool = True) -> dict[str, float]:
    """Wall time and CPU seconds of cmd's process tree, then (``memory``) its peak
    memory, RSS and PSS, measured in a second run of the same command.

    Timing and memory are separate runs because sampling memory is not free:
    reading /proc/PID/smaps of every process ten times a second took CPU from the
    tool being timed, most from the one with several processes on two cores.
    RSS summed over processes counts pages they share (forked workers) several
    times; PSS splits shared pages between them, so it is the memory really used.
    """
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu_of: dict[int, float] = {}
    done = threading.Event()

    def sample_cpu() -> None:
        # /proc/PID/stat only, four times a second: cheap, unlike the memory
        # sampling (a process's last quarter second may be missed)
        while not done.wait(0.25):
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        cpu_of[p.pid] = t.user + t.system
            except psutil.Error:
                pass

    thread = threading.Thread(target=sample_cpu, daemon=True)
    thread.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}): {err.decode()[-2000:]}")
    cpu = sum(cpu_of.values())
    result = {"wall": wall, "cpu": cpu, "rss": 0.0, "pss": 0.0}
    if memory:
        result["rss"], result["pss"] = _peak_memory(cmd, label)
    print(f"  {label}: {result}", flush=True)
    return result


def _peak_memory(cmd: list[str], label: str) -> tuple[float, float]:
    """Peak RSS and PSS summed over cmd's process tree, sampled every 0.1 s."""
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    peak_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss
        while not done.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                total = 0
                proportional = 0
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        total += info.rss
                        proportional += info.pss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
                peak_pss = max(peak_pss, proportional)
            except psutil.Error:
                pass
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return float(peak), float(peak_pss)


def count_statements(workload: Path) -> int:
    from capture.workload import read_workload

    return read_workload(workload).header.counts["statements"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pgtraffic-bench"))
    parser.add_argument("--log", type=Path, help="reuse this csvlog instead of generating one")
    parser.add_argument("--skip-pgbadger", action="store_true")
    parser.add_argument("--skip-peers", action="store_true", help="time only pgtraffic")
    parser.add_argument(
        "--skip-memory", action="store_true", help="no second run of each tool for its memory"
    )
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = args.log or work / "pgbench16.csv"
    if not log.exists():
        print(f"generating {log} ({args.size_gb} GB)", flush=True)
        generate(log, args.size_gb)
    size = log.stat().st_size
    print(f"log: {log} ({size / (1 << 30):.2f} GiB), {os.cpu_count()} CPUs", flush=True)

    results: dict[str, dict[str, float]] = {}
    out = work / "bench.pgtw"
    results["pgtraffic capture"] = run(
        [sys.executable, "-m", "pgtraffic.cli", "capture", str(log), "-o", str(out), "-q"],
        "pgtraffic",
        memory=not args.skip_memory,
    )
    statements = count_statements(out)
    if args.skip_peers:
        args.skip_pgbadger = True
    else:
        results["pgreplay -f -c"] = run(
            ["pgreplay", "-f", "-c", "-o", str(work / "bench.replay"), str(log)],
            "pgreplay",
            memory=not args.skip_memory,
        )
    if not args.skip_pgbadger:
        results["pgbadger -j 2"] = run(
            ["pgbadger", "-j", "2", "-f", "csv", "-q", "-o", str(work / "bench.html"), str(log)],
            "pgbadger",
            memory=not args.skip_memory,
        )
    ours = results["pgtraffic capture"]["wall"]
    print(f"\nstatements: {statements:,}; log {size / (1 << 20):,.0f} MiB\n")
    print(
        "| tool | wall s | statements/s | MB/s | CPU cores busy | peak RSS MiB "
        "| peak PSS MiB | pgtraffic speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['wall']:.1f} | {statements / r['wall']:,.0f} | "
            f"{size / 1e6 / r['wall']:.1f} | {r['cpu'] / r['wall']:.2f} | "
            f"{r['rss'] / (1 << 20):,.0f} | {r['pss'] / (1 << 20):,.0f} | {r['wall'] / ours:.2f}x |"
        )


if __name__ == "__main__":
    main()
