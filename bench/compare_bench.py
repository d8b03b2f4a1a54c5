"""Benchmark: `pgtraffic compare` on two results files of N statements each.

Writes two results files in the real format (through ResultsWriter, as the replayer
does) for a workload of 200 query classes and 2,000 sessions, one with a planted
regression, then times the whole `pgtraffic compare ... --json` command in a
subprocess and reads its peak RSS from /proc via os.wait4.

    python bench/compare_bench.py --statements 5000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from replay.results import ResultsWriter, create_results_file

CLASSES = 200
SESSIONS = 2000


def write_run(path: Path, n: int, seed: int, slow_class: int | None) -> None:
    create_results_file(
        path,
        {
            "workload_id": "bench-workload",
            "target": {"host": "bench", "port": 5432, "server_version": f"bench-{seed}"},
            "speed": 1.0,
            "max_speed": False,
        },
    )
    layout = np.random.default_rng(7)
    rng = np.random.default_rng(seed)
    writer = ResultsWriter(path, capacity=65536)
    sessions = [f"{i:08x}.{i:04x}" for i in range(SESSIONS)]
    fps = [f"{layout.integers(0, 2**63):016x}" for _ in range(CLASSES)]
    block = 1_000_000
    for start in range(0, n, block):
        m = min(block, n - start)
        pos = np.arange(start, start + m)
        fp = layout.integers(0, CLASSES, m)
        service = (layout.lognormal(np.log(400), 0.8, m) * rng.lognormal(0, 0.1, m)).astype(int)
        if slow_class is not None:
            service[fp == slow_class] = (service[fp == slow_class] * 2.0).astype(int)
        intended = pos * 100
        lag = rng.integers(0, 500, m)
        add = writer.add
        for i in range(m):
            add(
                sessions[pos[i] % SESSIONS],
                int(pos[i] // SESSIONS),
                fps[fp[i]],
                int(intended[i]),
                int(intended[i] + lag[i]),
                int(service[i]),
                1,
                None,
                None,
            )
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--statements", type=int, default=5_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="pgtraffic-compare-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    a, b = workdir / "a.pgtr", workdir / "b.pgtr"
    t0 = time.perf_counter()
    write_run(a, args.statements, 1, None)
    write_run(b, args.statements, 2, 17)
    print(
        f"wrote 2 x {args.statements:,} statements in {time.perf_counter() - t0:.1f}s "
        f"({a.stat().st_size / 1e6:.1f} MB + {b.stat().st_size / 1e6:.1f} MB)"
    )
    cmd = [sys.executable, "-m", "pgtraffic.cli", "compare", str(a), str(b), "--json"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    rss_mb = usage.ru_maxrss / 1024
    code = os.waitstatus_to_exitcode(status)
    print(f"command: {' '.join(cmd)}")
    cpu = usage.ru_utime + usage.ru_stime
    load = os.getloadavg()[0]
    print(
        f"exit {code}; wall {elapsed:.1f}s; CPU {cpu:.1f}s; peak RSS {rss_mb:.0f} MB "
        f"(load average {load:.1f} on {os.cpu_count()} cores: wall time includes waiting "
        "for a core)"
    )
    if code != 0:
        print(proc.stderr.read().decode() if proc.stderr else "", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
