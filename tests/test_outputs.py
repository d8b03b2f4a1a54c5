"""Outputs never destroy inputs, never replace a file unasked, never end in a traceback (#12).

Through the CLI, in subprocesses, as a user runs it; replays go to a real server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from capture.workload import read_workload
from pgtraffic.servers import Cluster
from pgtraffic.servers.cluster import free_port
from replay.results import read_results
from tests.replay_helpers import simple, write_workload

LOGS = Path(__file__).parent / "logs"


def _run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)


def _refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    shutil.copyfile(LOGS / "pg13_24cols.csv", path)
    return path


def test_capture_never_writes_over_its_log(
    pgtraffic_cmd: list[str], log: Path, tmp_path: Path
) -> None:
    before = log.read_bytes()
    _refused(_run(pgtraffic_cmd, "capture", str(log), "-o", str(log)), "is also an input")
    _refused(_run(pgtraffic_cmd, "capture", str(log), "-o", str(log), "--force"), "also an input")
    link = tmp_path / "link.pgtw"
    link.symlink_to(log)
    _refused(_run(pgtraffic_cmd, "capture", str(log), "-o", str(link), "--force"), "also an input")
    via = tmp_path / "sub" / ".." / "log.csv"
    (tmp_path / "sub").mkdir()
    _refused(_run(pgtraffic_cmd, "capture", str(log), "-o", str(via), "--force"), "also an input")
    assert log.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pgtw", "log.csv", "sub"]


def test_capture_replaces_a_file_only_with_force(
    pgtraffic_cmd: list[str], log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "w.pgtw"
    out.write_text("keep me")
    result = _run(pgtraffic_cmd, "capture", str(log), "-o", str(out), "-q")
    _refused(result, "exists; not replacing it")
    assert "--force" in result.stderr
    assert out.read_text() == "keep me"
    # a capture that fails leaves the old file as it was, even with --force
    bad = _run(pgtraffic_cmd, "capture", str(LOGS / "not_a_log.txt"), "-o", str(out), "--force")
    assert bad.returncode == 3
    assert out.read_text() == "keep me"
    done = _run(pgtraffic_cmd, "capture", str(log), "-o", str(out), "-q", "--force")
    assert done.returncode == 0, done.stderr
    assert read_workload(out).header.counts["statements"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "w.pgtw"]


def test_an_output_folder_that_does_not_exist_is_a_clear_error(
    pgtraffic_cmd: list[str], log: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "w.pgtw"
    result = _run(pgtraffic_cmd, "capture", str(log), "-o", str(missing))
    _refused(result, "does not exist")
    assert f"mkdir -p {missing.parent}" in result.stderr
    workload = tmp_path / "w.pgtw"
    write_workload(workload, [simple("a", 0, 0, "SELECT 1")])
    replay = _run(
        pgtraffic_cmd, "replay", str(workload), "-t", "postgresql://x@127.0.0.1:1/x", "-o",
        str(missing),
    )  # fmt: skip
    _refused(replay, "does not exist")
    _refused(
        _run(pgtraffic_cmd, "results", "export", str(workload), "-o", str(missing)),
        "does not exist",
    )
    _refused(_run(pgtraffic_cmd, "capture", str(log), "-o", str(tmp_path)), "is a folder")


def _selects(path: Path, count: int) -> Path:
    """A workload of one session running ``SELECT 0`` .. ``SELECT count-1``, 1 ms apart."""
    write_workload(path, [simple("a", i, i * 1000, f"SELECT {i}") for i in range(count)])
    return path


@pytest.mark.pg(">=16")
def test_replay_never_writes_over_the_workload_or_old_results(
    pgtraffic_cmd: list[str], pg16: Cluster, tmp_path: Path
) -> None:
    workload = _selects(tmp_path / "w.pgtw", 20)
    before = workload.read_bytes()
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    for target in (closed, pg16.dsn()):
        for extra in ((), ("--force",)):
            result = _run(pgtraffic_cmd, "replay", str(workload), "-t", target, "-o",
                          str(workload), *extra)  # fmt: skip
            _refused(result, "is also an input")
    assert workload.read_bytes() == before
    old = tmp_path / "run.pgtr"
    old.write_bytes(b"an earlier run")
    result = _run(pgtraffic_cmd, "replay", str(workload), "-t", pg16.dsn(), "-o", str(old))
    _refused(result, "exists; not replacing it")
    assert old.read_bytes() == b"an earlier run"
    again = _run(pgtraffic_cmd, "replay", str(workload), "-t", pg16.dsn(), "-o", str(old), "-f")
    assert again.returncode == 0, again.stderr
    assert len(read_results(old)) == 20


@pytest.mark.pg(">=16")
def test_results_export_is_atomic_and_asks_before_replacing(
    pgtraffic_cmd: list[str], pg16: Cluster, tmp_path: Path
) -> None:
    workload = _selects(tmp_path / "w.pgtw", 5)
    run = tmp_path / "run.pgtr"
    assert (
        _run(pgtraffic_cmd, "replay", str(workload), "-t", pg16.dsn(), "-o", str(run)).returncode
        == 0
    )
    before = run.read_bytes()
    _refused(_run(pgtraffic_cmd, "results", "export", str(run), "-o", str(run), "-f"), "input")
    assert run.read_bytes() == before
    csv = tmp_path / "run.csv"
    csv.write_text("old export\n")
    _refused(_run(pgtraffic_cmd, "results", "export", str(run), "-o", str(csv)), "exists")
    assert csv.read_text() == "old export\n"
    # an export that fails (unreadable results) leaves the old CSV, with --force too
    broken = tmp_path / "broken.pgtr"
    broken.write_bytes(b"not results")
    failed = _run(pgtraffic_cmd, "results", "export", str(broken), "-o", str(csv), "--force")
    assert failed.returncode == 3
    assert csv.read_text() == "old export\n"
    done = _run(pgtraffic_cmd, "results", "export", str(run), "-o", str(csv), "--force")
    assert done.returncode == 0, done.stderr
    assert len(csv.read_text().splitlines()) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.pgtr", "run.csv", "run.pgtr", "w.pgtw",
    ]  # fmt: skip
