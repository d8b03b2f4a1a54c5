"""Capture throughput: pgtraffic capture vs pgreplay -f and pgbadger on one pgbench log.

Generates (or reuses) a csvlog (``--format stderr``: a stderr log with
``log_line_prefix = '%m|%u|%d|%c|'``, the prefix pgreplay requires) of at least
--size-gb written by PostgreSQL 16
while pgbench runs in simple-protocol mode with log_statement=all,
log_min_duration_statement=-1 and connection logging, then times, on that same
file and in the same run:

* ``pgreplay -f -c -o OUT LOG``  (parse-only mode of pgreplay; no ``-c`` for stderr),
* ``pgbadger -j 2 -f csv -o OUT LOG`` (``-f stderr -p PREFIX`` for stderr),
* ``pgtraffic capture LOG -o OUT``,

``--runs N`` times each tool N times, alternating, and reports medians with
ranges; it reports statements/s for each (the statement count is pgtraffic's, so the
ratios are ratios of wall times), the CPU each used (cores busy on average),
and pgtraffic's peak RSS summed over its process tree.

    python bench/capture_bench.py --size-gb 1 --workdir /tmp/pgtraffic-bench
    python bench/capture_bench.py --format stderr --size-gb 1 --runs 3

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


STDERR_PREFIX = "%m|%u|%d|%c|"
"""The one log_line_prefix pgreplay reads stderr logs with."""


def generate(log: Path, size_gb: float, fmt: str = "csvlog") -> None:
    from pgtraffic.servers import Cluster, Profile

    settings = {"log_min_duration_statement": "-1", "max_connections": "50"}
    if fmt == "stderr":
        settings |= {"log_destination": "'stderr'", "log_line_prefix": f"'{STDERR_PREFIX}'"}
    pattern = "*.csv" if fmt == "csvlog" else "*.log"
    cluster = Cluster.create(major=16, profile=Profile.CAPTURE, settings=settings)
    try:
        cluster.run_tool("pgbench", "-i", "-q", "-s", "10")
        target = int(size_gb * (1 << 30))
        while True:
            files = cluster.log_files(pattern)
            size = sum(f.stat().st_size for f in files)
            print(f"  log size {size / (1 << 20):,.0f} MiB", flush=True)
            if size >= target:
                break
            cluster.run_tool("pgbench", "-n", "-M", "simple", "-c", "8", "-j", "2", "-T", "20")
        files = cluster.log_files(pattern)
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


def _commands(args: argparse.Namespace, log: Path, work: Path) -> dict[str, list[str]]:
    """The command of each tool timed, on the same file."""
    out = work / "bench.pgtw"
    cmds = {
        "pgtraffic capture": [
            sys.executable,
            "-m",
            "pgtraffic.cli",
            "capture",
            str(log),
            "-o",
            str(out),
            "-q",
            "--force",
        ],
    }
    if not args.skip_peers:
        flags = ["-c"] if args.format == "csvlog" else []
        cmds["pgreplay -f" + (" -c" if flags else "")] = [
            "pgreplay",
            "-f",
            *flags,
            "-o",
            str(work / "bench.replay"),
            str(log),
        ]
    if not (args.skip_pgbadger or args.skip_peers):
        fmt = ["-f", "csv"] if args.format == "csvlog" else ["-f", "stderr", "-p", STDERR_PREFIX]
        cmds["pgbadger -j 2"] = [
            "pgbadger",
            "-j",
            "2",
            *fmt,
            "-q",
            "-o",
            str(work / "bench.html"),
            str(log),
        ]
    return cmds


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--format", choices=["csvlog", "stderr"], default="csvlog")
    parser.add_argument("--runs", type=int, default=1, help="times each tool, alternating")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pgtraffic-bench"))
    parser.add_argument("--log", type=Path, help="reuse this log instead of generating one")
    parser.add_argument("--skip-pgbadger", action="store_true")
    parser.add_argument("--skip-peers", action="store_true", help="time only pgtraffic")
    parser.add_argument(
        "--skip-memory", action="store_true", help="no second run of each tool for its memory"
    )
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = args.log or work / ("pgbench16.csv" if args.format == "csvlog" else "pgbench16.log")
    if not log.exists():
        print(f"generating {log} ({args.size_gb} GB)", flush=True)
        generate(log, args.size_gb, args.format)
    size = log.stat().st_size
    print(f"log: {log} ({size / (1 << 30):.2f} GiB), {os.cpu_count()} CPUs", flush=True)
    cmds = _commands(args, log, work)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cmds}
    for k in range(args.runs):
        for name, cmd in cmds.items():
            runs[name].append(run(cmd, name, memory=not args.skip_memory and k == 0))
    statements = count_statements(work / "bench.pgtw")
    _table(runs, statements, size)


def _table(runs: dict[str, list[dict[str, float]]], statements: int, size: int) -> None:
    ours = _median([r["wall"] for r in runs["pgtraffic capture"]])
    print(
        f"\nstatements: {statements:,}; log {size / (1 << 20):,.0f} MiB; medians of "
        f"{len(runs['pgtraffic capture'])} runs\n"
    )
    print(
        "| tool | wall s (median, range) | statements/s | MB/s | CPU cores busy | peak RSS MiB "
        "| peak PSS MiB | pgtraffic speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        walls = [r["wall"] for r in results]
        wall = _median(walls)
        cpu = _median([r["cpu"] for r in results])
        first = results[0]
        print(
            f"| {name} | {wall:.1f} ({min(walls):.1f}-{max(walls):.1f}) | "
            f"{statements / wall:,.0f} | {size / 1e6 / wall:.1f} | {cpu / wall:.2f} | "
            f"{first['rss'] / (1 << 20):,.0f} | {first['pss'] / (1 << 20):,.0f} | "
            f"{wall / ours:.2f}x |"
        )


if __name__ == "__main__":
    main()
