"""Causal replay, measured: outcome agreement, sync cost, upgrade divergence precision.

The workload nobody on the team wrote is PostgreSQL's own regression suite: its
SQL scripts (``--regress-dir``, e.g. the copy in libpg_query's
``test/sql/postgres_regress``) run one after another, each in its own psql
session, on a capture server of ``--source`` (16). Later scripts use tables,
types, functions and roles made by earlier ones, and some scripts reconnect or
create databases. The bench then:

1. captures the log and replays it onto fresh servers of the same version at each
   pace (``--speed 1``, ``--speed 4``, ``--max-speed``) and each ``--sync`` mode, and
   reports the share of statements that ended as they did originally (same
   SQLSTATE or success), sync waits and timeouts, and the replay's wall time;
2. runs the same scripts natively on ``--candidate`` (18) with the same psql, and
   replays the 16 capture onto an 18 server: a statement whose replayed outcome
   differs from its original one is a *divergence*; it is real when running the
   scripts natively on 18 gave that statement a different outcome than on 16.
   Precision and recall of the replay's divergences against that ground truth
   are reported per pace and mode.

    python bench/causal_bench.py --regress-dir DIR [--paces 1,4,max] [--modes commit,none]

Statements whose outcome differs between two native runs of the same version are
nondeterministic (random(), timing, OIDs): run with ``--control`` to measure them
and leave them out of both figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capture.pipeline import CaptureOptions, capture  # noqa: E402
from capture.workload import Workload, read_workload  # noqa: E402
from pgtraffic.servers import Cluster, Installation, Profile, find_installation  # noqa: E402
from replay.sync import SyncMode  # noqa: E402
from tests.replay_helpers import replay  # noqa: E402

Key = tuple[int, int]
"""(session rank by connection order, statement index): the same in every run."""


def scripts(regress_dir: Path, limit: int | None) -> list[Path]:
    """The suite's scripts in their dependency order (the schedule's, else by name)."""
    schedule = regress_dir / "parallel_schedule"
    found = {p.stem: p for p in regress_dir.glob("*.sql")}
    order: list[Path] = []
    if schedule.is_file():
        for line in schedule.read_text().splitlines():
            if line.startswith("test:"):
                order += [found.pop(n) for n in line.split()[1:] if n in found]
    order += [found[n] for n in sorted(found)]
    return order[:limit] if limit else order


def run_scripts(cluster: Cluster, psql: Installation, files: Iterable[Path]) -> None:
    env = cluster.env("regression")
    cluster.psql("CREATE DATABASE regression")
    for path in files:
        try:
            subprocess.run(
                [str(psql.tool("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", str(path)],
                env=env,
                cwd=path.parent,
                capture_output=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(f"  {path.name}: timed out after 120 s", flush=True)


def capture_run(major: int, psql: Installation, files: list[Path], out: Path) -> Workload:
    cluster = Cluster.create(find_installation(major), profile=Profile.CAPTURE)
    try:
        run_scripts(cluster, psql, files)
        time.sleep(0.6)
        capture([str(p) for p in cluster.log_files()], out, CaptureOptions(jobs=2))
    finally:
        cluster.stop()
    return read_workload(out)


def session_ranks(workload: Workload) -> dict[str, int]:
    """Sessions numbered by connection order: the same numbers in every run."""
    ordered = sorted(workload.sessions, key=_connect_order(workload))
    return {sid: i for i, sid in enumerate(ordered)}


def keyed_outcomes(workload: Workload) -> dict[Key, str | None]:
    return {k: state for k, (_, state) in keyed(workload).items()}


def keyed(workload: Workload) -> dict[Key, tuple[str, str | None]]:
    """(session rank, index) -> (SQL, original SQLSTATE) of each replayable statement."""
    rank = session_ranks(workload)
    return {
        (rank[s.session], s.seq): (s.sql, s.sqlstate)
        for s in workload.statements()
        if s.kind.replayable
    }


def _connect_order(workload: Workload) -> Callable[[str], tuple[int, str]]:
    def key(sid: str) -> tuple[int, str]:
        session = workload.sessions[sid]
        return (session.connect_us if session.connect_us is not None else -1, sid)

    return key


@dataclass(frozen=True, slots=True)
class Outcome:
    agreement: float
    divergent: frozenset[Key]
    statements: int
    wall_s: float
    sync_wait_s: float


def replay_once(workload: Workload, major: int, pace: str, mode: SyncMode, out: Path) -> Outcome:
    target = Cluster.create(find_installation(major), profile=Profile.TARGET)
    try:
        # no CREATE DATABASE here: the workload's first session creates it, and every
        # later session into it must wait for that (the causal order under test)
        kwargs: dict[str, object] = {"max_speed": True} if pace == "max" else {"speed": float(pace)}
        start = time.monotonic()
        results = replay(workload, target, out, sync=mode, **kwargs)
        wall = time.monotonic() - start
    finally:
        target.stop()
    original = keyed_outcomes(workload)
    rank = session_ranks(workload)
    divergent = set()
    for session, index, _, _, _, _, _, state, orig in results.rows():
        if state != orig:
            divergent.add((rank[session], index))
    waits = (
        results.records["sync_wait_us"].sum() / 1e6
        if "sync_wait_us" in (results.records.dtype.names or ())
        else 0.0
    )
    return Outcome(
        agreement=1 - len(divergent) / max(1, len(original)),
        divergent=frozenset(divergent),
        statements=len(original),
        wall_s=wall,
        sync_wait_s=float(waits),
    )


def truth(base: Workload, other: Workload) -> tuple[set[Key], set[Key]]:
    """Statements whose native outcome differs between the runs, and the keys that do
    not align: absent from one run, or with other SQL there (psql sends catalog
    queries that depend on the server's version, which shifts a session's later
    statements)."""
    a, b = keyed(base), keyed(other)
    aligned = {k for k in a if k in b and a[k][0] == b[k][0]}
    differ = {k for k in aligned if a[k][1] != b[k][1]}
    return differ, (set(a) | set(b)) - aligned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regress-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N scripts only")
    parser.add_argument("--source", type=int, default=16)
    parser.add_argument("--candidate", type=int, default=18)
    parser.add_argument("--paces", default="1,4,max")
    parser.add_argument("--modes", default="commit,objects,none")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--control", action="store_true", help="a second native run of --source")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pgtraffic-causal-bench"))
    parser.add_argument(
        "--rescore", action="store_true", help="score the runs saved in --workdir again"
    )
    args = parser.parse_args()
    if args.rescore:
        rescore(args.workdir, args.source)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = scripts(args.regress_dir, args.limit)
    psql = find_installation(args.source)
    print(f"{len(files)} scripts", flush=True)
    base = capture_run(args.source, psql, files, args.workdir / "source.pgtw")
    noisy: set[Key] = set()
    if args.control:
        again = capture_run(args.source, psql, files, args.workdir / "control.pgtw")
        differ, shifted = truth(base, again)
        noisy = differ | shifted
        print(f"nondeterministic statements (two native runs disagree): {len(noisy)}")
    native = capture_run(args.candidate, psql, files, args.workdir / "candidate.pgtw")
    real, unaligned = truth(base, native)
    real -= noisy
    (args.workdir / "truth.json").write_text(json.dumps(sorted(real)))
    print(
        f"statements {len(keyed_outcomes(base))}, differ natively {args.source} vs "
        f"{args.candidate}: {len(real)}, unaligned {len(unaligned)}",
        flush=True,
    )
    rows = []
    for mode in [SyncMode(m) for m in args.modes.split(",")]:
        for pace in args.paces.split(","):
            for major in (args.source, args.candidate):
                name = f"r-{major}-{mode.value}-{pace}"
                runs = [
                    replay_once(base, major, pace, mode, args.workdir / f"{name}.pgtr")
                    for _ in range(args.rounds)
                ]
                divergent = sorted(runs[0].divergent)
                (args.workdir / f"{name}.divergent.json").write_text(json.dumps(divergent))
                excluded = noisy if major == args.source else noisy | unaligned
                row = summarize(runs, major, pace, mode, args.source, real, excluded)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print_table(rows)


def rescore(workdir: Path, source: int) -> None:
    """The figures again from what a run left in ``workdir`` (wall times are not kept)."""
    base = read_workload(workdir / "source.pgtw")
    real, unaligned = truth(base, read_workload(workdir / "candidate.pgtw"))
    noisy: set[Key] = set()
    if (workdir / "control.pgtw").is_file():
        differ, shifted = truth(base, read_workload(workdir / "control.pgtw"))
        noisy = differ | shifted
    real -= noisy
    total = len(keyed(base))
    print(f"statements {total}, really different {len(real)}, unaligned {len(unaligned)}")
    rows = []
    for path in sorted(workdir.glob("r-*.divergent.json")):
        _, major, mode, pace = path.name.split(".")[0].split("-")
        found = {tuple(k) for k in json.loads(path.read_text())}
        run = Outcome(0.0, frozenset(found), total, 0.0, 0.0)  # type: ignore[arg-type]
        excluded = noisy if int(major) == source else noisy | unaligned
        rows.append(summarize([run], int(major), pace, SyncMode(mode), source, real, excluded))
    print_table(rows)


def summarize(
    runs: list[Outcome],
    major: int,
    pace: str,
    mode: SyncMode,
    source: int,
    real: set[Key],
    excluded: set[Key],
) -> dict[str, object]:
    row: dict[str, object] = {
        "target": major,
        "pace": pace,
        "sync": mode.value,
        "statements": runs[0].statements,
        "wall_s": statistics.median(r.wall_s for r in runs),
        "sync_wait_s": statistics.median(r.sync_wait_s for r in runs),
    }
    if major == source:
        row["agreement"] = statistics.median(
            1 - len(r.divergent - excluded) / max(1, r.statements) for r in runs
        )
        return row
    precision, recall = [], []
    for r in runs:
        found = r.divergent - excluded
        hit = len(found & real)
        precision.append(hit / len(found) if found else 1.0)
        recall.append(hit / len(real) if real else 1.0)
    row["divergent"] = statistics.median(len(r.divergent - excluded) for r in runs)
    row["precision"] = statistics.median(precision)
    row["recall"] = statistics.median(recall)
    return row


def print_table(rows: list[dict[str, object]]) -> None:
    print("\n| target | sync | pace | statements | agreement | precision | recall | wall s |")
    print("|---|---|---|--:|--:|--:|--:|--:|")
    for r in rows:

        def pct(name: str, r: dict[str, object] = r) -> str:
            value = r.get(name)
            return "" if value is None else f"{float(str(value)):.2%}"

        print(
            f"| {r['target']} | {r['sync']} | {r['pace']} | {r['statements']} | "
            f"{pct('agreement')} | {pct('precision')} | {pct('recall')} | "
            f"{float(str(r['wall_s'])):.1f} |"
        )


if __name__ == "__main__":
    main()
