"""Damaged, repeated and edited inputs are never passed off as whole (#12).

Logs are written by a real PostgreSQL 16 server while psql runs; results files by
real replays onto one. Each test damages a copy the way a user did.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from capture.errors import LogParseError, WorkloadFormatError
from capture.overlaps import DUPLICATE
from capture.pipeline import CaptureOptions, CaptureSummary, capture
from capture.workload import read_workload
from pgtraffic.servers import Cluster, Profile
from replay.errors import ResultsFormatError
from replay.results import _CHUNK, _PREAMBLE, ChunkKind, read_results
from tests.conftest import require_version
from tests.replay_helpers import replay, simple, write_workload

pytestmark = pytest.mark.pg(">=16")

SESSIONS = 3
PER_SESSION = 40


@pytest.fixture(scope="module")
def csvlog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A csvlog written by a real server: SESSIONS psql sessions of PER_SESSION
    statements each, some spanning lines; copied out of the server's log folder."""
    cluster = Cluster.create(require_version(16), profile=Profile.CAPTURE)
    try:
        folder = tmp_path_factory.mktemp("csvlog")
        for s in range(SESSIONS):
            script = folder / f"s{s}.sql"
            script.write_text(
                "".join(
                    f"SELECT {s} AS session, {i} AS n,\n  'line two of {i}' AS t;\n"
                    if i % 5 == 0
                    else f"SELECT {s * 1000 + i};\n"
                    for i in range(PER_SESSION)
                )
            )
            cluster.run_tool("psql", "-X", "-q", "-f", script)
        (log,) = cluster.log_files()
        copy = folder / "postgresql.csv"
        shutil.copyfile(log, copy)
    finally:
        cluster.stop()
    return copy


def _capture(tmp_path: Path, logs: list[Path], **options: object) -> CaptureSummary:
    out = tmp_path / "w.pgtw"
    out.unlink(missing_ok=True)
    return capture([str(p) for p in logs], out, CaptureOptions(jobs=1, **options))  # type: ignore[arg-type]


def _statements(tmp_path: Path) -> list[tuple[str, int, str]]:
    return [(s.session, s.seq, s.sql) for s in read_workload(tmp_path / "w.pgtw").statements()]


def _record_starts(data: bytes) -> list[int]:
    """Byte offsets where csvlog records begin (lines starting with the log time)."""
    starts = [0]
    pos = data.find(b"\n")
    while 0 <= pos < len(data) - 1:
        if data[pos + 1 : pos + 3] == b"20":
            starts.append(pos + 1)
        pos = data.find(b"\n", pos + 1)
    return starts


# --- the same records twice ------------------------------------------------------


def test_the_same_file_twice_counts_once(csvlog: Path, tmp_path: Path) -> None:
    _capture(tmp_path, [csvlog])
    expected = _statements(tmp_path)
    assert len(expected) >= SESSIONS * PER_SESSION
    records = len(_record_starts(csvlog.read_bytes()))
    link = tmp_path / "link.csv"
    link.symlink_to(csvlog)
    other = Path(__file__).parent / "logs" / "pg13_24cols.csv"
    _capture(tmp_path, [csvlog, other])
    with_other = _statements(tmp_path)
    for logs in ([csvlog, csvlog], [csvlog, link], [csvlog, other, csvlog]):
        twice = _capture(tmp_path, logs, strict=True)
        assert _statements(tmp_path) == (with_other if other in logs else expected)
        assert twice.skipped == {DUPLICATE: records}
        assert twice.skipped_examples[DUPLICATE] == (
            f"{logs[-1]} (the same file as {csvlog}, given again)",
        )


@pytest.mark.parametrize("layout", ["overlap", "growing", "torn", "gzip"])
def test_overlapping_rotated_copies_do_not_count_twice(
    csvlog: Path, tmp_path: Path, layout: str
) -> None:
    data = csvlog.read_bytes()
    starts = _record_starts(data)
    _capture(tmp_path, [csvlog])
    expected = _statements(tmp_path)
    first_cut, second_cut = starts[len(starts) // 3], starts[2 * len(starts) // 3]
    older = data[:second_cut]
    newer = data[first_cut:]
    overlap = data[first_cut:second_cut]
    if layout == "growing":  # the later copy holds all of the earlier one
        newer, overlap = data, data[:second_cut]
    if layout == "torn":  # the earlier copy was taken while a record was being written
        older = data[: second_cut + 30]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(older)
    if layout == "gzip":
        b = tmp_path / "b.csv.gz"
        b.write_bytes(gzip.compress(newer))
    else:
        b.write_bytes(newer)
    summary = _capture(tmp_path, [a, b])
    assert _statements(tmp_path) == expected
    assert summary.skipped[DUPLICATE] == len(_record_starts(overlap))
    lines = overlap.count(b"\n")
    assert summary.skipped_examples[DUPLICATE] == (f"{b}:1-{lines} (the end of {a} again)",)
    if layout == "torn":
        assert summary.skipped["truncated record at end of file"] == 1
    # without the overlap nothing is skipped as a duplicate
    rest = data[second_cut:]
    b.write_bytes(gzip.compress(rest) if layout == "gzip" else rest)
    a.write_bytes(data[:second_cut])
    clean = _capture(tmp_path, [a, b])
    assert DUPLICATE not in clean.skipped
    assert _statements(tmp_path) == expected


# --- a garbage line with a stray quote ------------------------------------------------


def test_a_stray_quote_loses_nothing_after_it(csvlog: Path, tmp_path: Path) -> None:
    data = csvlog.read_bytes()
    _capture(tmp_path, [csvlog])
    expected = _statements(tmp_path)
    at = _record_starts(data)[len(_record_starts(data)) // 2]
    line = data[:at].count(b"\n") + 1
    bad = tmp_path / "bad.csv"
    bad.write_bytes(data[:at] + b'garbage "with an odd quote\n' + data[at:])
    summary = _capture(tmp_path, [bad])
    assert _statements(tmp_path) == expected
    assert summary.skipped == {"not a csvlog record": 1}
    assert summary.skipped_examples["not a csvlog record"] == (f"{bad}:{line}",)
    with pytest.raises(LogParseError) as info:
        _capture(tmp_path, [bad], strict=True)
    assert (info.value.line, info.value.reason) == (line, "not a csvlog record")


# --- workloads edited by hand ---------------------------------------------------------


def _lines(path: Path) -> list[dict[str, object]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _rewrite(path: Path, lines: list[dict[str, object]]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(
            "".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in lines)
        )


@pytest.fixture
def workload(csvlog: Path, tmp_path: Path) -> Path:
    _capture(tmp_path, [csvlog])
    return tmp_path / "w.pgtw"


def _inspect(pgtraffic_cmd: list[str], path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pgtraffic_cmd, "inspect", str(path), *args], capture_output=True, text=True, check=False
    )


def test_an_edited_statement_is_refused(workload: Path, pgtraffic_cmd: list[str]) -> None:
    lines = _lines(workload)
    header = lines[0]
    assert isinstance(header["preamble_digest"], str) and len(header["preamble_digest"]) == 32
    # the lines as written are read back unchanged
    assert _inspect(pgtraffic_cmd, workload).returncode == 0
    edited = next(
        o for o in lines if o.get("type") == "statement" and "SELECT 1006" in str(o["sql"])
    )
    edited["sql"] = str(edited["sql"]).replace("1006", "1007")
    _rewrite(workload, lines)
    wl = read_workload(workload)
    with pytest.raises(WorkloadFormatError, match="not the ones it was written with"):
        list(wl.statement_dicts())
    result = _inspect(pgtraffic_cmd, workload)
    assert result.returncode == 3
    assert "not the ones it was written with" in result.stderr
    assert "Traceback" not in result.stderr
    dry = subprocess.run(
        [*pgtraffic_cmd, "replay", str(workload), "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 3 and "written with" in dry.stderr


def test_a_workload_cut_at_a_line_boundary_is_refused(
    workload: Path, pgtraffic_cmd: list[str]
) -> None:
    lines = _lines(workload)
    total = sum(1 for o in lines if o.get("type") == "statement")
    _rewrite(workload, lines[:-5])
    result = _inspect(pgtraffic_cmd, workload)
    assert result.returncode == 3
    assert f"holds {total - 5} statements but its header says {total}" in result.stderr


def test_an_edited_class_or_session_is_refused(workload: Path) -> None:
    lines = _lines(workload)
    cls = next(o for o in lines if o.get("type") == "class")
    cls["normalized"] = "SELECT 42"
    _rewrite(workload, lines)
    with pytest.raises(WorkloadFormatError, match="class and session records"):
        read_workload(workload)
    _rewrite(workload, [o for o in lines if o is not cls])
    with pytest.raises(WorkloadFormatError, match="classes but its header says"):
        read_workload(workload)


def test_older_workloads_read_with_a_notice_and_inspect_counts_the_body(
    workload: Path, pgtraffic_cmd: list[str]
) -> None:
    lines = _lines(workload)
    del lines[0]["preamble_digest"]  # as written before the digest existed
    top = next(o for o in lines if o.get("type") == "class")
    held = int(str(top["count"]))
    top["count"] = 99_999  # a class count the statements do not bear out
    _rewrite(workload, lines)
    result = _inspect(pgtraffic_cmd, workload, "--json")
    assert result.returncode == 0, result.stderr
    assert "before workload files recorded a digest" in result.stderr
    stats = json.loads(result.stdout)
    assert stats["notices"]
    counts = {c["fingerprint"]: c["count"] for c in stats["top_by_count"]}
    assert counts[top["fingerprint"]] == held
    assert 99_999 not in counts.values()


# --- results files cut short or damaged ---------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A workload and the results of a real replay of it, with several RECORDS chunks."""
    folder = tmp_path_factory.mktemp("results")
    stmts = [
        simple(f"s{s}", i, i * 15_000 + s * 1_000, f"SELECT {s * 1000 + i}")
        for s in range(4)
        for i in range(100)
    ]
    wl = write_workload(folder / "w.pgtw", stmts)
    cluster = Cluster.create(require_version(16), profile=Profile.TARGET)
    try:
        replay(wl, cluster, folder / "run.pgtr")
    finally:
        cluster.stop()
    return folder / "w.pgtw", folder / "run.pgtr"


def _chunks(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, kind, length) of every chunk."""
    out, pos = [], _PREAMBLE.size
    while pos < len(data):
        kind, _, _, length, _ = _CHUNK.unpack_from(data, pos)
        out.append((pos, kind, length))
        pos += _CHUNK.size + length
    return out


def _cli(pgtraffic_cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pgtraffic_cmd, *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("where", ["payload", "header"])
def test_a_results_file_damaged_in_the_middle_is_refused(
    run: tuple[Path, Path], tmp_path: Path, pgtraffic_cmd: list[str], where: str
) -> None:
    _, good = run
    data = bytearray(good.read_bytes())
    full = read_results(good)
    records = [c for c in _chunks(bytes(data)) if c[1] == ChunkKind.RECORDS]
    assert len(records) >= 2, "the replay should have flushed more than once"
    offset, _, length = records[0]
    at = offset + _CHUNK.size + length // 2 - 16 if where == "payload" else offset
    data[at : at + 32] = bytes(b ^ 0x5A for b in data[at : at + 32])
    bad = tmp_path / "bad.pgtr"
    bad.write_bytes(bytes(data))
    with pytest.raises(ResultsFormatError, match="damaged") as info:
        read_results(bad)
    assert "not an interrupted replay" in str(info.value)
    assert info.value.hint is not None and "--accept-damaged" in info.value.hint
    out = tmp_path / "bad.csv"
    for args in (["results", "report", str(bad)], ["results", "export", str(bad), "-o", str(out)]):
        result = _cli(pgtraffic_cmd, *args)
        assert result.returncode == 3, result.stderr
        assert "damaged" in result.stderr and "torn" not in result.stderr
    assert not out.exists()
    compared = _cli(pgtraffic_cmd, "compare", str(good), str(bad))
    assert compared.returncode == 3, compared.stdout + compared.stderr
    accepted = read_results(bad, accept_damaged=True)
    assert accepted.incomplete and accepted.damage
    assert len(accepted) < len(full)
    exported = _cli(
        pgtraffic_cmd, "results", "export", str(bad), "-o", str(out), "--accept-damaged"
    )
    assert exported.returncode == 6, exported.stderr
    assert "INCOMPLETE" in exported.stderr and "damaged bytes at byte" in exported.stderr
    assert out.read_text().count("\n") == len(accepted) + 1
    report = _cli(pgtraffic_cmd, "results", "report", str(bad), "--accept-damaged", "--json")
    assert report.returncode == 0, report.stderr
    assert any("damaged" in why for why in json.loads(report.stdout)["incomplete"])


def test_a_results_file_cut_short_reads_as_incomplete(
    run: tuple[Path, Path], tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    _, good = run
    data = good.read_bytes()
    cut = tmp_path / "half.pgtr"
    cut.write_bytes(data[: len(data) // 2])
    half = read_results(cut)
    assert half.incomplete and not half.damage
    assert half.damaged_bytes > 0 and half.final is None
    assert any("cut short" in why for why in half.incompleteness())
    report = _cli(pgtraffic_cmd, "results", "report", str(cut))
    assert report.returncode == 0, report.stderr
    assert "torn write" not in report.stdout + report.stderr
    assert "cut short" in report.stderr
    out = tmp_path / "half.csv"
    exported = _cli(pgtraffic_cmd, "results", "export", str(cut), "-o", str(out))
    assert exported.returncode == 6 and "INCOMPLETE" in exported.stderr
    compared = _cli(pgtraffic_cmd, "compare", str(good), str(cut))
    assert compared.returncode != 0


def test_a_workload_of_another_run_is_refused_by_compare(
    run: tuple[Path, Path], tmp_path: Path, pgtraffic_cmd: list[str]
) -> None:
    workload, good = run
    other = write_workload(tmp_path / "other.pgtw", [simple("x", 0, 0, "SELECT 7")])
    header = read_results(good).header
    assert header["workload_id"] == read_workload(workload).header.workload_id
    result = _cli(pgtraffic_cmd, "compare", str(good), str(good), "--workload", str(other.path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "is not the workload" in result.stderr
