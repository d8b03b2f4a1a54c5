"""Why the demo's CI analytics class (percentile_cont) is slower on 18: a control with
io_method=sync, on the workload and dump a `pgtraffic demo --workdir DIR` left behind.

    pgtraffic demo --workdir /tmp/demo
    python bench/io_method_bench.py /tmp/demo --out /tmp/io
    python bench/io_method_bench.py /tmp/demo --isolated

Default: three targets (16; 18 with io_method=sync; 18 as initdb makes it, io_method=
worker and data checksums on), each restored from the demo's pre-capture dump right
before each replay of the demo's workload, in the order 16, 18 sync, 18 worker, 18
worker, 18 sync, 16; then compare 16 with each 18, one round a side and two. The only
difference between the two 18s is how they read pages that are not in shared buffers.

``--isolated``: no replay; right after a restore (and ANALYZE) of both, the class's
query for 200 projects drawn as the scenario's client draws them, one statement at a
time, each project on 16 and on 18 in turn (``--io-method sync`` for the 18): cold
(the first read of each page since the restore) and warm (the same again), and the
same for a count of a project's open issues.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WATCHED = ("percentile_cont", "AS builds, sum(", "b.stage")
"""The CI analytics class, the skip-scan class, the other CI analytics statement."""


def replays(demo: Path, out: Path) -> None:
    from pgtraffic.compare import compare_files
    from pgtraffic.rehearsal import DEMO_DB, SilentReporter, _restore, replay_once
    from pgtraffic.servers import Cluster, Profile, find_installation
    from replay.runner import ReplaySettings

    out.mkdir(parents=True, exist_ok=True)
    dump, workload = demo / "pre-capture.dump", demo / "workload.pgtw"
    targets = {
        "16": (16, None),
        "18-sync": (18, {"io_method": "sync"}),
        "18-worker": (18, None),
    }
    clusters: dict[str, Cluster] = {}
    try:
        for label, (major, settings) in targets.items():
            clusters[label] = Cluster.create(
                find_installation(major), profile=Profile.TARGET, settings=settings
            )
        files: dict[str, list[Path]] = {k: [] for k in targets}
        for label in ("16", "18-sync", "18-worker", "18-worker", "18-sync", "16"):
            _restore(clusters[label], dump)
            path = out / f"{label}-{len(files[label]) + 1}.pgtr"
            dsn = clusters[label].dsn(DEMO_DB)
            replay_once(workload, dsn, path, ReplaySettings(), SilentReporter(), label)
            files[label].append(path)
        for label in ("18-sync", "18-worker"):
            for n in (1, 2):
                c = compare_files(files["16"][:n], files[label][:n], workload=workload)
                for cls in c.classes:
                    text = " ".join(cls.text.split())
                    if any(w in text for w in WATCHED):
                        floor = (
                            f"{cls.rounds.floor:.0%}" if cls.rounds and cls.rounds.floor else "-"
                        )
                        print(
                            f"16 vs {label}, {n} round(s) a side: {cls.verdict.value:9} "
                            f"{cls.ratio_p50:.2f}x q={cls.q_value:.2g} floor {floor}  {text[:60]}"
                        )
    finally:
        for cluster in clusters.values():
            cluster.stop()


def _projects(n: int, scale: float, seed: int = 7) -> list[int]:
    """Project ids drawn as pgbench's random_exponential(1, nprojects, 3.0) draws them."""
    rng = random.Random(seed)
    nprojects = max(1, int(20000 * scale))
    cut = math.exp(-3.0)
    return [
        1 + int(nprojects * -math.log(cut + (1 - cut) * (1.0 - rng.random())) / 3.0)
        for _ in range(n)
    ]


def isolated(demo: Path, scale: float, io_method: str | None) -> None:
    import psycopg

    from pgtraffic.rehearsal import DEMO_DB, _restore
    from pgtraffic.servers import Cluster, Profile, find_installation

    script = (ROOT / "scenarios/gitlab/pipeline_stats.pgbench").read_text().split(";")[0]
    lines = [line for line in script.splitlines() if not line.startswith(("\\", "--"))]
    queries = {
        "CI analytics (percentile_cont)": "\n".join(lines).replace(":p", "%s"),
        "open issues count": (
            "SELECT count(*) FROM issues WHERE project_id = %s AND state = 'opened'"
        ),
    }
    projects = _projects(200, scale)
    times: dict[tuple[int, str, str], list[float]] = {}
    clusters: dict[int, Cluster] = {}
    try:
        for major in (16, 18):
            settings = {"io_method": io_method} if major == 18 and io_method else None
            clusters[major] = Cluster.create(
                find_installation(major), profile=Profile.TARGET, settings=settings
            )
            _restore(clusters[major], demo / "pre-capture.dump")
        conns = {m: psycopg.connect(c.dsn(DEMO_DB), autocommit=True) for m, c in clusters.items()}
        for phase in ("cold", "warm"):
            for name, sql in queries.items():
                for k, p in enumerate(projects):  # the two servers in turn, first in turn
                    for major in (16, 18) if k % 2 == 0 else (18, 16):
                        began = time.perf_counter()
                        conns[major].execute(sql.encode(), (p,)).fetchall()
                        spent = time.perf_counter() - began
                        times.setdefault((major, phase, name), []).append(spent)
        for conn in conns.values():
            conn.close()
    finally:
        for cluster in clusters.values():
            cluster.stop()
    for phase in ("cold", "warm"):
        for name in queries:
            a, b = times[(16, phase, name)], times[(18, phase, name)]
            paired = statistics.median(y / x for x, y in zip(a, b, strict=True))
            print(
                f"{phase} {name}: 16 p50 {statistics.median(a) * 1e3:.3f} ms, 18 p50 "
                f"{statistics.median(b) * 1e3:.3f} ms, paired median ratio {paired:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", type=Path, help="a demo's --workdir (dump and workload)")
    parser.add_argument("--out", type=Path, default=Path("io-method-bench"))
    parser.add_argument("--isolated", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="the demo's scale")
    parser.add_argument("--io-method", default=None, help="the 18's io_method (--isolated)")
    args = parser.parse_args()
    if args.isolated:
        isolated(args.demo, args.scale, args.io_method)
    else:
        replays(args.demo, args.out)


if __name__ == "__main__":
    main()
