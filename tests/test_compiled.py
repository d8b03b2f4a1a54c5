"""capture compiled (mypyc, setup.py) and capture as plain Python write the same workloads.

The compiled modules are built from the same source, so this pins behaviour, not
code: mypyc checks types at run time where Python does not, and its integers,
dicts and classes are its own. Each input is captured twice, in this process (the
installed modules, compiled where built) and in a child process that imports
capture from a copy of its ``.py`` files only; the workloads must be the same but
for their creation time. Inputs: logs written by real 16 and 18 servers to
csvlog, jsonlog and stderr at once, and every hand-written platform log of
tests/logs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import capture
from capture import native
from capture.errors import PgTrafficError
from capture.pipeline import CaptureOptions
from capture.pipeline import capture as run_capture
from pgtraffic.servers import Profile
from tests.conftest import ClusterFactory
from tests.test_capture_real import run_clients

LOGS = Path(__file__).parent / "logs"
FORMATS = ("*.csv", "*.json", "*.log")
"""csvlog, jsonlog and stderr, written at once by one server."""
COMPILED = native.built()
needs_compiled = pytest.mark.skipif(
    not COMPILED, reason="capture is plain Python in this install (setup.py built nothing)"
)

_CHILD = """
import json
import sys
from pathlib import Path
import capture.sessions
assert capture.sessions.__file__.endswith(".py"), capture.sessions.__file__
from capture.errors import PgTrafficError
from capture.pipeline import CaptureOptions, capture
said = []
for out, inputs, jobs in json.loads(sys.argv[1]):
    try:
        capture(inputs, Path(out), CaptureOptions(jobs=jobs, chunk_bytes=4096))
        said.append("")
    except PgTrafficError as exc:
        said.append(f"refused: {exc}")
print(json.dumps(said))
"""

Run = tuple[list[str], int]
"""The inputs of one capture, and its decoding processes."""


def _plain_captures(tmp_path: Path, runs: list[Run]) -> list[str]:
    """Capture each run to ``<i>.py.pgtw`` with capture's plain ``.py`` files, in one
    child process; what each said ("" or its refusal)."""
    plain = tmp_path / "plain"
    (plain / "capture").mkdir(parents=True)
    for source in Path(capture.__file__).parent.glob("*.py"):
        shutil.copy(source, plain / "capture" / source.name)
    jobs = [(str(tmp_path / f"{i}.py.pgtw"), inputs, n) for i, (inputs, n) in enumerate(runs)]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(jobs)],
        env={**os.environ, "PYTHONPATH": str(plain)},
        cwd=tmp_path,  # not the checkout, whose capture/ is the compiled one
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    said: list[str] = json.loads(done.stdout)
    return said


def _compiled_capture(inputs: list[str], out: Path, jobs: int) -> str:
    try:
        run_capture(inputs, out, CaptureOptions(jobs=jobs, chunk_bytes=4096))
    except PgTrafficError as exc:
        return f"refused: {exc}"
    return ""


def _body(path: Path) -> list[object]:
    """The workload's records, the header without its creation time."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        records: list[object] = [json.loads(line) for line in fh]
    header = records[0]
    assert isinstance(header, dict)
    header.pop("created")
    return records


def _agree(tmp_path: Path, runs: list[Run]) -> None:
    plain = _plain_captures(tmp_path, runs)
    for i, (inputs, jobs) in enumerate(runs):
        said = _compiled_capture(inputs, tmp_path / f"{i}.c.pgtw", jobs)
        assert plain[i] == said, inputs
        if not said:
            assert _body(tmp_path / f"{i}.c.pgtw") == _body(tmp_path / f"{i}.py.pgtw"), inputs


def test_no_compiled_module_is_older_than_its_source() -> None:
    assert native.stale() == [], "run `pip install -e .` again"


@needs_compiled
def test_this_process_runs_the_compiled_modules() -> None:
    import capture.pipeline  # noqa: F401 - imports the modules it uses

    assert set(native.running_compiled()) >= {"sessions", "decode", "csvlog", "rowkeys"}


@needs_compiled
@pytest.mark.parametrize("major", [16, 18])
def test_real_server_logs_capture_the_same(
    make_cluster: ClusterFactory, tmp_path: Path, major: int
) -> None:
    settings = {"log_destination": "'stderr,csvlog,jsonlog'", "log_min_duration_statement": "0"}
    cluster = make_cluster(major, Profile.CAPTURE, settings=settings)
    run_clients(cluster, tmp_path)
    runs = [([str(p) for p in cluster.log_files(pattern)], 2) for pattern in FORMATS]
    assert all(inputs for inputs, _ in runs)
    _agree(tmp_path, runs)


@needs_compiled
def test_hand_written_logs_capture_the_same(tmp_path: Path) -> None:
    """Every platform's layout, and every kind of damage tests/logs holds."""
    _agree(tmp_path, [([str(log)], 1) for log in sorted(LOGS.iterdir())])
