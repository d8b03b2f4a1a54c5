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
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
    commands: list[str] = []

    logging = {
        "log_destination": "'csvlog,stderr'",
        "log_line_prefix": "'%m|%u|%d|%c|'",
    }
    src = Cluster.create(major=args.major, profile=Profile.CAPTURE, settings=logging)
    tgt = Cluster.create(major=args.major, profile=Profile.TARGET)
    try:
        pgbench_src = str(src.installation.tool("pgbench"))
        pgbench_init(src, args.scale)
        bench_cmd = [
            "-n",
            "-b",
            "simple-update",
            "-c",
            str(args.clients),
            "-j",
            "2",
            "-T",
            str(args.seconds),
        ]
        run([pgbench_src, *bench_cmd], env=src.env())
        commands.append(f"capture: pgbench {' '.join(bench_cmd)}  (log_statement=all)")
        time.sleep(1.0)
        csvs = [str(p) for p in src.log_files("*.csv")]
        workload_path = work / "simple-update.pgtw"
        t = time.monotonic()
        capture(csvs, workload_path, CaptureOptions())
        figures["capture_s"] = round(time.monotonic() - t, 2)
        workload = read_workload(workload_path)
        statements = workload.header.counts["statements"]
        figures["statements"] = statements
        stderr_logs = [str(p) for p in src.log_files("*.log")]
        replay_file = work / "simple-update.pgreplay"
        run(["pgreplay", "-f", "-o", str(replay_file), *stderr_logs])
        commands.append(f"pgreplay -f -o simple-update.pgreplay {' '.join(stderr_logs)}")

        # a lighter capture for the --speed 1 lag figure: the server is far from saturated
        rate_src = Cluster.create(major=args.major, profile=Profile.CAPTURE)
        try:
            pgbench_init(rate_src, args.scale)
            rate_cmd = [*bench_cmd, "-R", str(args.rate)]
            run([pgbench_src, *rate_cmd], env=rate_src.env())
            time.sleep(1.0)
            rate_path = work / "rate.pgtw"
            capture([str(p) for p in rate_src.log_files("*.csv")], rate_path, CaptureOptions())
        finally:
            rate_src.stop()

        pgbench_tgt = str(tgt.installation.tool("pgbench"))
        # 1. pgbench itself
        pgbench_init(tgt, args.scale)
        out, _, _ = run([pgbench_tgt, *bench_cmd], env=tgt.env())
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        figures["pgbench_statements_per_s"] = round(tps * 5)
        figures["pgbench_client_cpu_us_per_statement"] = round(
            LAST_CPU_S[0] * 1e6 / (tps * 5 * args.seconds), 1
        )
        commands.append(f"pgbench {' '.join(bench_cmd)}  (5 statements per transaction)")

        def replay_max(results: Path, *extra: str) -> tuple[str, float, int]:
            """``pgtraffic replay --max-speed`` onto a fresh pgbench database."""
            pgbench_init(tgt, args.scale)
            return run(
                pgtraffic(
                    "replay",
                    str(workload_path),
                    "--target",
                    tgt.socket_dsn(),
                    "-o",
                    str(results),
                    "--max-speed",
                    "--json",
                    "--no-progress",
                    "--workers",
                    str(args.workers),
                    *extra,
                )
            )

        # 2. pgtraffic --max-speed
        res = work / "max.pgtr"
        out, wall, rss = replay_max(res)
        report = json.loads(out[out.index("{") : out.rindex("}") + 1])
        figures["pgtraffic_max_statements_per_s"] = round(window_rate(res))
        figures["pgtraffic_max_statements_per_s_incl_startup"] = round(report["statements_per_s"])
        figures["pgtraffic_max_errors"] = report["errors"]
        figures["pgtraffic_max_rss_mib"] = round(rss / 1024, 1)
        figures["pgtraffic_client_cpu_us_per_statement"] = round(
            LAST_CPU_S[0] * 1e6 / statements, 1
        )
        figures["results_file_bytes_per_statement"] = round(res.stat().st_size / statements, 1)
        commands.append(
            f"pgtraffic replay simple-update.pgtw --target DSN -o max.pgtr --max-speed "
            f"--workers {args.workers}"
        )

        # 2b. the same through asyncpg's query path (the replayer before the direct path)
        if not args.skip_asyncpg_path:
            res_a = work / "max-asyncpg.pgtr"
            replay_max(res_a, "--via-asyncpg")
            figures["pgtraffic_asyncpg_path_statements_per_s"] = round(window_rate(res_a))
            figures["pgtraffic_asyncpg_path_client_cpu_us_per_statement"] = round(
                LAST_CPU_S[0] * 1e6 / statements, 1
            )
            commands.append("the same with --via-asyncpg (asyncpg's query path)")

        # 3. pgreplay -r -s 100
        pgbench_init(tgt, args.scale)
        _, wall, rss = run(
            [
                "pgreplay",
                "-r",
                "-s",
                "100",
                "-h",
                str(tgt.socket_dir),
                "-p",
                str(tgt.port),
                str(replay_file),
            ],
            env=tgt.env(),
        )
        figures["pgreplay_statements_per_s"] = round(statements / wall)
        figures["pgreplay_rss_mib"] = round(rss / 1024, 1)
        figures["pgreplay_client_cpu_us_per_statement"] = round(LAST_CPU_S[0] * 1e6 / statements, 1)
        commands.append("pgreplay -r -s 100 -h SOCKETDIR -p PORT simple-update.pgreplay")

        # 4. pgtraffic --speed 1, unsaturated
        pgbench_init(tgt, args.scale)
        res1 = work / "speed1.pgtr"
        out, wall, rss = run(
            pgtraffic(
                "replay",
                str(rate_path),
                "--target",
                tgt.socket_dsn(),
                "-o",
                str(res1),
                "--json",
                "--no-progress",
            )
        )
        report1 = json.loads(out[out.index("{") : out.rindex("}") + 1])
        figures["speed1_statements"] = report1["statements"]
        figures["speed1_lag_p50_ms"] = round(report1["lag_p50_ms"], 3)
        figures["speed1_lag_p99_ms"] = round(report1["lag_p99_ms"], 3)
        figures["speed1_lag_max_ms"] = round(report1["lag_max_ms"], 3)
        figures["speed1_replayer_lag_p99_ms"] = round(report1["replayer_lag_p99_ms"], 3)
        figures["speed1_replayer_lag_max_ms"] = round(report1["replayer_lag_max_ms"], 3)
        figures["speed1_service_p99_ms"] = round(report1["latency_p99_ms"], 3)
        figures["speed1_rss_mib"] = round(rss / 1024, 1)
        commands.append(
            f"capture: pgbench {' '.join(bench_cmd)} -R {args.rate}; "
            "pgtraffic replay rate.pgtw --target DSN -o speed1.pgtr"
        )
    finally:
        src.stop()
        tgt.stop()

    figures["ratio_vs_pgreplay"] = round(
        figures["pgtraffic_max_statements_per_s"] / figures["pgreplay_statements_per_s"], 2
    )
    figures["ratio_vs_pgbench"] = round(
        figures["pgtraffic_max_statements_per_s"] / figures["pgbench_statements_per_s"], 2
    )
    print(json.dumps(figures, indent=2))
    print("\ncommands:")
    for cmd in commands:
        print(f"  {cmd}")


if __name__ == "__main__":
    main()
