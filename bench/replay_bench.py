"""Replay throughput and timing, side by side with pgreplay and pgbench.

1. On a *capture* cluster, run pgbench's simple-update script with every
   statement logged (csvlog for pgtraffic, stderr with pgreplay's prefix for
   pgreplay), then capture the csvlog into a workload.
2. On a *target* cluster, each time from a freshly initialised pgbench database:
   - pgbench itself, same script and client count: the ceiling;
   - ``pgtraffic replay --max-speed``;
   - ``pgreplay -r -s 100`` on pgreplay's own parse of the same log;
   - ``pgtraffic replay --speed 1`` on an unsaturated run: lag p99.
3. Print ratios (and the commands) as Markdown for bench/RESULTS.md.

Run: python bench/replay_bench.py [--clients 8] [--seconds 10] [--scale 10]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from capture.pipeline import CaptureOptions, capture  # noqa: E402
from capture.workload import read_workload  # noqa: E402
from pgtraffic.servers import Cluster, Profile  # noqa: E402
from replay.results import read_results  # noqa: E402

QUIET = (
    "-c log_statement=none -c log_min_duration_statement=-1 -c log_connections=off "
    "-c log_disconnections=off -c log_min_error_statement=panic"
)


LAST_CPU_S = [0.0]
"""User + system CPU seconds of the last command run (the client's own cost)."""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, int]:
    """Run a command; returns (stdout+stderr, wall seconds, peak RSS in KiB via time -f)."""
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS_KIB=%M CPU_S=%U+%S", *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}")
    found = re.findall(r"MAXRSS_KIB=(\d+)", proc.stdout)
    cpu = re.findall(r"CPU_S=([\d.]+)\+([\d.]+)", proc.stdout)
    LAST_CPU_S[0] = float(cpu[-1][0]) + float(cpu[-1][1]) if cpu else 0.0
    return proc.stdout, wall, int(found[-1]) if found else 0


def quiet_env(cluster: Cluster) -> dict[str, str]:
    env = cluster.env()
    env["PGOPTIONS"] = QUIET
    return env


def pgbench_init(cluster: Cluster, scale: int) -> None:
    run(
        [str(cluster.installation.tool("pgbench")), "-i", "-q", "-s", str(scale)],
        env=quiet_env(cluster),
    )
    run(
        [str(cluster.installation.tool("psql")), "-X", "-q", "-c", "CHECKPOINT"],
        env=quiet_env(cluster),
    )


LEAN_CLI = (
    "import sys, typer; from pgtraffic.commands.replay import register; "
    "app = typer.Typer(); register(app); app()"
)


def pgtraffic(*args: str) -> list[str]:
    """``pgtraffic replay ...`` without importing the other commands (their imports,
    scipy and matplotlib for compare, would dominate the peak RSS figure)."""
    return [sys.executable, "-c", LEAN_CLI, *args]


def window_rate(path: Path) -> float:
    """Statements per second between the first send and the last completion."""
    recs = read_results(path).records
    span = (recs["start_us"] + recs["service_us"]).max() - recs["start_us"].min()
    return float(len(recs) / (span / 1e6))


def _json_report(out: str) -> dict[str, Any]:
    """The JSON object a ``pgtraffic replay --json`` run printed."""
    report: dict[str, Any] = json.loads(out[out.index("{") : out.rindex("}") + 1])
    return report


class _Bench:
    """One benchmark run: the clusters, the captured inputs, the figures and commands."""

    def __init__(self, args: argparse.Namespace, src: Cluster, tgt: Cluster) -> None:
        self.args = args
        self.work: Path = args.workdir
        self.src, self.tgt = src, tgt
        self.figures: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
        self.commands: list[str] = []
        self.bench_cmd = ["-n", "-b", "simple-update", "-c", str(args.clients), "-j", "2"]
        self.bench_cmd += ["-T", str(args.seconds)]
        self.pgbench_src = str(src.installation.tool("pgbench"))
        self.workload_path = self.work / "simple-update.pgtw"
        self.replay_file = self.work / "simple-update.pgreplay"
        self.rate_path = self.work / "rate.pgtw"
        self.statements = 0

    def capture_inputs(self) -> None:
        """The saturated capture (csvlog for pgtraffic, stderr for pgreplay) and the
        lighter one for the --speed 1 lag figure, where the server is far from saturated."""
        src, args = self.src, self.args
        pgbench_init(src, args.scale)
        run([self.pgbench_src, *self.bench_cmd], env=src.env())
        self.commands.append(f"capture: pgbench {' '.join(self.bench_cmd)}  (log_statement=all)")
        time.sleep(1.0)
        csvs = [str(p) for p in src.log_files("*.csv")]
        t = time.monotonic()
        capture(csvs, self.workload_path, CaptureOptions())
        self.figures["capture_s"] = round(time.monotonic() - t, 2)
        self.statements = read_workload(self.workload_path).header.counts["statements"]
        self.figures["statements"] = self.statements
        stderr_logs = [str(p) for p in src.log_files("*.log")]
        run(["pgreplay", "-f", "-o", str(self.replay_file), *stderr_logs])
        self.commands.append(f"pgreplay -f -o simple-update.pgreplay {' '.join(stderr_logs)}")
        rate_src = Cluster.create(major=args.major, profile=Profile.CAPTURE)
        try:
            pgbench_init(rate_src, args.scale)
            run([self.pgbench_src, *self.bench_cmd, "-R", str(args.rate)], env=rate_src.env())
            time.sleep(1.0)
            csvs = [str(p) for p in rate_src.log_files("*.csv")]
            capture(csvs, self.rate_path, CaptureOptions())
        finally:
            rate_src.stop()

    def cpu_per_statement(self, statements: float | None = None) -> float:
        """The last command's CPU, microseconds per statement."""
        return round(LAST_CPU_S[0] * 1e6 / (statements or self.statements), 1)

    def pgbench_ceiling(self) -> None:
        tgt = self.tgt
        pgbench_init(tgt, self.args.scale)
        out, _, _ = run([str(tgt.installation.tool("pgbench")), *self.bench_cmd], env=tgt.env())
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        self.figures["pgbench_statements_per_s"] = round(tps * 5)
        self.figures["pgbench_client_cpu_us_per_statement"] = self.cpu_per_statement(
            tps * 5 * self.args.seconds
        )
        self.commands.append(f"pgbench {' '.join(self.bench_cmd)}  (5 statements per transaction)")

    def replay(self, workload: Path, results: Path, *extra: str) -> tuple[str, float, int]:
        """``pgtraffic replay`` onto a fresh pgbench database."""
        tgt = self.tgt
        pgbench_init(tgt, self.args.scale)
        dsn = tgt.socket_dsn()
        return run(
            pgtraffic(
                "replay", str(workload), "--target", dsn, "-o", str(results), "--force", *extra
            )
        )

    def pgtraffic_max(self) -> None:
        """``--max-speed``, then (unless skipped) the same through asyncpg's query path
        (the replayer before the direct path)."""
        res = self.work / "max.pgtr"
        workers = str(self.args.workers)
        flags = ("--max-speed", "--json", "--no-progress", "--workers", workers)
        out, _, rss = self.replay(self.workload_path, res, *flags)
        report = _json_report(out)
        figures = self.figures
        figures["pgtraffic_max_statements_per_s"] = round(window_rate(res))
        figures["pgtraffic_max_statements_per_s_incl_startup"] = round(report["statements_per_s"])
        figures["pgtraffic_max_errors"] = report["errors"]
        figures["pgtraffic_max_rss_mib"] = round(rss / 1024, 1)
        figures["pgtraffic_client_cpu_us_per_statement"] = self.cpu_per_statement()
        figures["results_file_bytes_per_statement"] = round(res.stat().st_size / self.statements, 1)
        self.commands.append(
            "pgtraffic replay simple-update.pgtw --target DSN -o max.pgtr --max-speed "
            f"--workers {workers}"
        )
        if not self.args.skip_asyncpg_path:
            res_a = self.work / "max-asyncpg.pgtr"
            self.replay(self.workload_path, res_a, *flags, "--via-asyncpg")
            figures["pgtraffic_asyncpg_path_statements_per_s"] = round(window_rate(res_a))
            figures["pgtraffic_asyncpg_path_client_cpu_us_per_statement"] = self.cpu_per_statement()
            self.commands.append("the same with --via-asyncpg (asyncpg's query path)")

    def pgreplay(self) -> None:
        """``pgreplay -r -s 100`` on its own parse of the same log."""
        tgt = self.tgt
        pgbench_init(tgt, self.args.scale)
        where = ["-h", str(tgt.socket_dir), "-p", str(tgt.port)]
        _, wall, rss = run(
            ["pgreplay", "-r", "-s", "100", *where, str(self.replay_file)], env=tgt.env()
        )
        self.figures["pgreplay_statements_per_s"] = round(self.statements / wall)
        self.figures["pgreplay_rss_mib"] = round(rss / 1024, 1)
        self.figures["pgreplay_client_cpu_us_per_statement"] = self.cpu_per_statement()
        self.commands.append("pgreplay -r -s 100 -h SOCKETDIR -p PORT simple-update.pgreplay")

    def speed1(self) -> None:
        """``pgtraffic replay --speed 1`` of the unsaturated capture: lag."""
        out, _, rss = self.replay(
            self.rate_path, self.work / "speed1.pgtr", "--json", "--no-progress"
        )
        report = _json_report(out)
        figures = self.figures
        figures["speed1_statements"] = report["statements"]
        for name in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms"):
            figures[f"speed1_{name}"] = round(report[name], 3)
        for name in ("replayer_lag_p99_ms", "replayer_lag_max_ms"):
            figures[f"speed1_{name}"] = round(report[name], 3)
        figures["speed1_service_p99_ms"] = round(report["latency_p99_ms"], 3)
        figures["speed1_rss_mib"] = round(rss / 1024, 1)
        self.commands.append(
            f"capture: pgbench {' '.join(self.bench_cmd)} -R {self.args.rate}; "
            "pgtraffic replay rate.pgtw --target DSN -o speed1.pgtr"
        )

    def print(self) -> None:
        figures = self.figures
        ours = figures["pgtraffic_max_statements_per_s"]
        figures["ratio_vs_pgreplay"] = round(ours / figures["pgreplay_statements_per_s"], 2)
        figures["ratio_vs_pgbench"] = round(ours / figures["pgbench_statements_per_s"], 2)
        print(json.dumps(figures, indent=2))
        print("\ncommands:")
        for cmd in self.commands:
            print(f"  {cmd}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=int, default=200, help="tps of the --speed 1 capture")
    parser.add_argument("--major", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pgtraffic-replay-bench"))
    parser.add_argument(
        "--skip-asyncpg-path",
        action="store_true",
        help="do not also time --max-speed with --via-asyncpg",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    logging = {"log_destination": "'csvlog,stderr'", "log_line_prefix": "'%m|%u|%d|%c|'"}
    src = Cluster.create(major=args.major, profile=Profile.CAPTURE, settings=logging)
    tgt = Cluster.create(major=args.major, profile=Profile.TARGET)
    try:
        bench = _Bench(args, src, tgt)
        bench.capture_inputs()
        bench.pgbench_ceiling()
        bench.pgtraffic_max()
        bench.pgreplay()
        bench.speed1()
    finally:
        src.stop()
        tgt.stop()
    bench.print()


if __name__ == "__main__":
    main()
