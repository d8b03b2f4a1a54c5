"""Hand-written edge-case logs (tests/logs/): bad input is reported with file:line."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from capture.errors import InputError, LogParseError
from capture.pipeline import CaptureOptions, capture
from capture.sources import LogFormat
from capture.workload import read_workload

LOGS = Path(__file__).parent / "logs"


def run(
    tmp_path: Path, *names: str, out_name: str = "w.pgtw", **options: object
) -> tuple[object, list[str]]:
    out = tmp_path / out_name
    summary = capture([str(LOGS / n) for n in names], out, CaptureOptions(jobs=1, **options))  # type: ignore[arg-type]
    return summary, [s.sql for s in read_workload(out).statements()]


@pytest.mark.parametrize(
    ("name", "reason", "line", "kept"),
    [
        ("garbage_line.csv", "not a csvlog record", 3, ["SELECT 1", "SELECT 2"]),
        ("truncated_tail.csv", "truncated record at end of file", 3, ["SELECT 1"]),
        ("latin1_bytes.csv", "not UTF-8", 3, ["SELECT 1", "SELECT 3"]),
    ],
)
def test_bad_record_skipped_counted_or_strict(
    tmp_path: Path, name: str, reason: str, line: int, kept: list[str]
) -> None:
    summary, sqls = run(tmp_path, name)
    assert sqls == kept
    assert summary.skipped == {reason: 1}  # type: ignore[attr-defined]
    assert summary.skipped_examples[reason] == (f"{LOGS / name}:{line}",)  # type: ignore[attr-defined]
    with pytest.raises(LogParseError) as info:
        run(tmp_path, name, out_name="strict.pgtw", strict=True)
    assert info.value.line == line
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{LOGS / name}:{line}: ")
    assert not (tmp_path / "strict.pgtw").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "w.pgtw"]  # no temp files left


def test_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        run(tmp_path, "not_a_log.txt")
    assert "not a PostgreSQL csvlog or jsonlog" in str(info.value)
    assert info.value.hint is not None and "log_destination" in info.value.hint


def test_no_statements_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        run(tmp_path, "no_statements.csv")
    assert "no statements" in str(info.value)
    assert info.value.hint is not None and "log_statement = 'all'" in info.value.hint


def test_non_english_messages(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        run(tmp_path, "german.csv")
    assert "not in English" in str(info.value)
    assert info.value.hint is not None and "lc_messages" in info.value.hint


@pytest.mark.parametrize("name", ["pg12_23cols.csv", "pg13_24cols.csv"])
def test_older_layouts_and_missing_connect_line(tmp_path: Path, name: str) -> None:
    out = tmp_path / "w.pgtw"
    capture([str(LOGS / name)], out, CaptureOptions(jobs=1))
    workload = read_workload(out)
    (session,) = workload.sessions.values()
    assert (session.user, session.database, session.connect_us) == ("old", "legacy", None)
    assert session.application == "batch"
    (stmt,) = workload.statements()
    assert stmt.offset_us == 0
    if name.startswith("pg12"):
        assert stmt.sql == "SELECT \"q\" FROM t WHERE x = 'a,b'"


def test_gzip_stdin_and_several_files(tmp_path: Path, pgtraffic_cmd: list[str]) -> None:
    gz = tmp_path / "garbage.csv.gz"
    gz.write_bytes(gzip.compress((LOGS / "garbage_line.csv").read_bytes()))
    out = tmp_path / "w.pgtw"
    summary = capture([str(gz), str(LOGS / "pg13_24cols.csv")], out, CaptureOptions(jobs=1))
    assert summary.statements == 3
    assert summary.skipped == {"not a csvlog record": 1}
    result = subprocess.run(
        [*pgtraffic_cmd, "capture", "-", "-o", str(out), "-q", "--force"],
        cwd=LOGS.parent.parent,
        input=gz.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [s.sql for s in read_workload(out).statements()] == ["SELECT 1", "SELECT 2"]


def test_format_override(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        run(tmp_path, "pg13_24cols.csv", format=LogFormat.JSONLOG)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["capture", str(LOGS / "truncated_tail.csv"), "--strict"], 3, "truncated_tail.csv:3:"),
        (["capture", str(LOGS / "missing.csv")], 3, "no such file"),
        (["capture", str(LOGS / "no_statements.csv")], 3, "log_statement"),
        (["capture", str(LOGS / "garbage_line.csv"), "--since", "yesterday"], 2, "--since"),
        (["capture", str(LOGS / "garbage_line.csv")], 0, "not a csvlog record"),
    ],
)
def test_cli_exit_codes(
    tmp_path: Path, pgtraffic_cmd: list[str], args: list[str], code: int, message: str
) -> None:
    result = subprocess.run(
        [*pgtraffic_cmd, *args, "-o", str(tmp_path / "w.pgtw")],
        cwd=LOGS.parent.parent,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == code, result.stderr
    assert message in result.stdout + result.stderr


def test_filters(tmp_path: Path) -> None:
    import datetime as dt

    from capture.filters import Filters

    def kept(filters: Filters) -> list[str]:
        return run(tmp_path, "garbage_line.csv", filters=filters)[1]

    assert kept(Filters(databases=("shop",))) == ["SELECT 1", "SELECT 2"]
    assert kept(Filters(exclude_applications=("web",))) == []
    assert kept(Filters(users=("someone",))) == []
    assert kept(Filters(exclude_sql=(r"2$",))) == ["SELECT 1"]
    since = dt.datetime(2024, 5, 6, 9, 0, 2, tzinfo=dt.UTC)
    assert kept(Filters(since=since)) == ["SELECT 2"]
    assert kept(Filters(until=since)) == ["SELECT 1"]


def test_jsonlog_edge_cases(tmp_path: Path) -> None:
    """PG18 Parameters: with quotes, newline and NULL; a cancel; garbage; a cut last line."""
    summary, _ = run(tmp_path, "pg18_edge.json")
    assert summary.skipped == {  # type: ignore[attr-defined]
        "not a jsonlog record": 1,
        "truncated record at end of file": 1,
    }
    assert summary.skipped_examples["truncated record at end of file"] == (  # type: ignore[attr-defined]
        f"{LOGS / 'pg18_edge.json'}:6",
    )
    workload = read_workload(tmp_path / "w.pgtw")
    first, second = workload.statements()
    assert (first.kind.value, first.name, first.params) == ("execute", "S_1", ("a\nb'c", None))
    assert (second.sql, second.sqlstate) == ("SELECT pg_sleep(10)", "57014")
    (session,) = workload.sessions.values()
    assert (session.application, session.client) == ("api", "10.1.1.1:5555")
    assert session.connect_us == 0


def test_inspect_cli(tmp_path: Path, pgtraffic_cmd: list[str]) -> None:
    import json

    run(tmp_path, "garbage_line.csv")
    result = subprocess.run(
        [*pgtraffic_cmd, "inspect", str(tmp_path / "w.pgtw"), "--json"],
        cwd=LOGS.parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(result.stdout)
    assert stats["statements"] == 2
    assert stats["sessions"] == 1
    assert stats["peak_concurrent_sessions"] == 1
    assert stats["kinds"] == {"simple": 2}
    assert sum(b["statements"] for b in stats["statements_per_second"]) == 2
    assert [c["count"] for c in stats["top_by_count"]] == [2]  # SELECT 1 and SELECT 2: one class
    text = subprocess.run(
        [*pgtraffic_cmd, "inspect", str(tmp_path / "w.pgtw")],
        cwd=LOGS.parent.parent,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "peak concurrent sessions" in text
    assert "top classes by count" in text


def test_a_jsonlog_and_its_hard_link_count_once(tmp_path: Path) -> None:
    """Duplicate inputs are told by the file, whatever its format (#12)."""
    from capture.overlaps import DUPLICATE

    once, sqls = run(tmp_path, "pg18_edge.json")
    log, link = tmp_path / "log.json", tmp_path / "link.json"
    shutil.copyfile(LOGS / "pg18_edge.json", log)
    os.link(log, link)
    out = tmp_path / "twice.pgtw"
    twice = capture([str(log), str(link)], out, CaptureOptions(jobs=1))
    assert [s.sql for s in read_workload(out).statements()] == sqls
    assert twice.statements == once.statements  # type: ignore[attr-defined]
    records = (LOGS / "pg18_edge.json").read_bytes().count(b"\n{") + 1
    assert twice.skipped[DUPLICATE] == records
