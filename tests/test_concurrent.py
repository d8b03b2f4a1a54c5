"""`rehearse --concurrent`: each round replays onto both servers at the same time."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from capture.pipeline import CaptureOptions, capture
from pgtraffic.compare import compare_files
from pgtraffic.compare.render_text import noise_lines
from pgtraffic.concurrent import SideRun, replay_together
from pgtraffic.errors import TargetError
from pgtraffic.rehearsal import SilentReporter
from pgtraffic.servers import Cluster
from replay.results import read_results
from replay.runner import ReplaySettings
from tests.conftest import ClusterFactory
from tests.replay_helpers import run_cli
from tests.test_compare import DB, _prepare
from tests.test_rehearse import _captured_source, _two_round_rehearsal


def _span(path: Path) -> tuple[float, float]:
    """When a replay ran (its final summary's start and end), as POSIX seconds."""
    final = read_results(path).final
    assert final is not None, path
    return (
        dt.datetime.fromisoformat(final["start_time"]).timestamp(),
        dt.datetime.fromisoformat(final["end_time"]).timestamp(),
    )


def test_rehearse_concurrent_replays_both_sides_at_once_after_both_resets(
    make_cluster: ClusterFactory, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    args, work, resets = _two_round_rehearsal(
        make_cluster, tmp_path, "--concurrent", reset_echo="$PGTRAFFIC_SIDE $(date +%s.%N)"
    )
    result = run_cli(pgtraffic_cmd, *args, timeout=600, columns=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = " ".join(result.stdout.split())
    assert "Replay onto both servers at the same time (round 2 of 2)" in out
    assert "all 2 replays started within" in out
    entries = [line.split() for line in resets.read_text().splitlines()]
    # both reset before each round, the first side swapping: A B, then B A
    assert [side for side, _ in entries] == ["baseline", "candidate", "candidate", "baseline"]
    previous_end = 0.0
    for k, suffix in enumerate(("", "-2")):
        (a0, a1), (b0, b1) = (_span(work / f"{s}{suffix}.pgtr") for s in ("baseline", "candidate"))
        assert max(a0, b0) < min(a1, b1), "the two replays of a round overlap in time"
        assert abs(a0 - b0) < 1.0, "and start together"
        round_resets = [float(at) for _, at in entries[2 * k : 2 * k + 2]]
        assert previous_end < min(round_resets) and max(round_resets) < min(a0, b0)
        previous_end = max(a1, b1)
    # compare reads the four files as two rounds a side, replayed together (from their times)
    base, cand = ([work / f"{s}.pgtr", work / f"{s}-2.pgtr"] for s in ("baseline", "candidate"))
    c = compare_files(base, cand)
    assert c.rounds is not None and (c.rounds.baseline, c.rounds.candidate) == (2, 2)
    assert c.rounds.concurrent and not c.incomplete_runs()
    assert any("ran at the same time as its candidate round" in line for line in noise_lines(c))
    # paired the other way round (baseline 1 with candidate 2), no round ran together
    crossed = compare_files(base, cand[::-1])
    assert crossed.rounds is not None and not crossed.rounds.concurrent


def test_rehearse_concurrent_refuses_one_database_twice(
    pg16: Cluster, tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    """Both replays would write into one database at once: refused even with
    --allow-same-server, before anything runs."""
    work = tmp_path / "work"
    log = tmp_path / "pg.csv"
    log.write_text("")
    argv = ["rehearse", "--log", str(log), "--baseline", pg16.dsn(), "--candidate", pg16.dsn()]
    argv += ["--concurrent", "--allow-same-server", "--workdir", str(work)]
    result = run_cli(pgtraffic_cmd, *argv, columns=200)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--concurrent replays onto --baseline and --candidate at the same time" in " ".join(
        result.stderr.split()
    )
    assert not work.exists()


def test_replay_together_stops_both_sides_when_one_cannot_start(
    make_cluster: ClusterFactory, pg16: Cluster, tmp_path: Path
) -> None:
    """A side that cannot reach its target raises its own error here; the other side,
    waiting at the start, sends nothing and does not hang."""
    logs = _captured_source(make_cluster, tmp_path, "-c", "1", "-t", "20")
    workload = tmp_path / "w.pgtw"
    capture([p for p in logs if p != "--log"], workload, CaptureOptions())
    _prepare(pg16)
    sides = [
        SideRun("baseline", pg16.dsn(DB), tmp_path / "a.pgtr"),
        SideRun("candidate", "postgresql://postgres@127.0.0.1:1/nowhere", tmp_path / "b.pgtr"),
    ]
    began = time.monotonic()
    with pytest.raises(TargetError):
        replay_together(workload, sides, ReplaySettings(max_speed=True), SilentReporter())
    assert time.monotonic() - began < 60
    assert not (tmp_path / "a.pgtr").exists(), "the reachable side did not start alone"
