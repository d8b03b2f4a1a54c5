"""stderr-format logs (any log_line_prefix), format detection and compressed inputs.

Real servers log to stderr and csvlog at once (log_destination = 'stderr,csvlog'),
real clients run (psql scripts with multi-line statements and errors, psycopg's
extended protocol with parameters, pgbench simple/extended/prepared); the stderr
capture must keep the every-statement-exactly-once invariant and match the csvlog
capture of the same run statement by statement. Hand-written files cover what no
server here writes (AWS RDS downloads, pgbouncer and syslog files to refuse).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from capture.errors import InputError
from capture.pipeline import CaptureOptions, capture
from capture.prefix import (
    COMMON_PREFIXES,
    PrefixError,
    compile_prefix,
    detect_prefix,
    head_lines,
)
from capture.records import Statement
from capture.sources import Compression, LogFormat, compression_of, detect
from capture.stderrlog import sqlstate_of_message
from capture.workload import Workload, read_workload
from tests.conftest import ClusterFactory
from tests.test_capture_real import check_invariants, logged_clients

LOGS = Path(__file__).parent / "logs"

# (major, log_line_prefix, logging style); styles: "statement" (log_statement=all),
# "duration" (log_min_duration_statement=0 alone), "both"
CASES = [
    (16, "%m [%p] ", "both"),
    (18, "%t:%r:%u@%d:[%p]:", "statement"),  # AWS RDS
    (15, "%m [%p]: [%l-1] xid=%x ", "duration"),
    (16, "%m %c %u@%d ", "statement"),
    (18, "%n %c [%a] ", "both"),  # no pid; given (no inference of a bare [%a])
    (15, "%m [%p] %q%u@%d %e ", "both"),
    (18, "%m [%p] %q%u@%d ", "duration"),
]
_STYLES = {
    "statement": {"log_statement": "'all'", "log_min_duration_statement": "-1"},
    "duration": {"log_statement": "'none'", "log_min_duration_statement": "0"},
    "both": {"log_statement": "'all'", "log_min_duration_statement": "0"},
}


def _settings(prefix: str, style: str) -> dict[str, str]:
    return {
        "log_destination": "'stderr,csvlog'",
        "log_line_prefix": "'" + prefix.replace("'", "''") + "'",
        **_STYLES[style],
    }


def _keyed(workload: Workload) -> dict[tuple[str, int], list[Statement]]:
    """Statements by (pid, how many sessions of that pid came before): session ids
    built from pids need not equal csvlog's."""
    seen: dict[str, int] = defaultdict(int)
    keys: dict[str, tuple[str, int]] = {}
    for sid in sorted(workload.sessions, key=lambda s: workload.sessions[s].connect_us or -1):
        pid = sid.rpartition(".")[2]
        keys[sid] = (pid, seen[pid])
        seen[pid] += 1
    out: dict[tuple[str, int], list[Statement]] = defaultdict(list)
    for stmt in workload.statements():
        out[keys[stmt.session]].append(stmt)
    return dict(out)


def _comparable(stmt: Statement, *, times: bool) -> tuple[Any, ...]:
    return (
        stmt.seq,
        stmt.kind,
        stmt.sql,
        stmt.name,
        stmt.params,
        stmt.params_truncated,
        stmt.sqlstate,
        stmt.duration_us,
        stmt.offset_us if times else None,
    )


def assert_same_workload(a: Workload, b: Workload, *, times: bool = True) -> None:
    """The same statements in the same sessions (times too, unless ``times`` is off)."""
    ka, kb = _keyed(a), _keyed(b)
    assert ka.keys() == kb.keys()
    for key, stmts in ka.items():
        assert [_comparable(s, times=times) for s in stmts] == [
            _comparable(s, times=times) for s in kb[key]
        ], key
    sessions_a = sorted(a.sessions.values(), key=lambda s: (s.connect_us or -1, s.id))
    sessions_b = sorted(b.sessions.values(), key=lambda s: (s.connect_us or -1, s.id))
    for sa, sb in zip(sessions_a, sessions_b, strict=True):
        assert (sa.user, sa.database, sa.application, sa.client, sa.statements) == (
            sb.user,
            sb.database,
            sb.application,
            sb.client,
            sb.statements,
        )
        if times:
            assert (sa.connect_us, sa.disconnect_us) == (sb.connect_us, sb.disconnect_us)


@pytest.mark.pg(">=15")
@pytest.mark.parametrize(("major", "prefix", "style"), CASES, ids=lambda v: str(v).strip())
def test_stderr_matches_csvlog(
    make_cluster: ClusterFactory, tmp_path: Path, major: int, prefix: str, style: str
) -> None:
    """Every statement exactly once, with SQLSTATEs, parameters and connection times;
    the same workload as the csvlog of the same run."""
    cluster = logged_clients(make_cluster, tmp_path, major, _settings(prefix, style))
    stderr_files = [str(p) for p in cluster.log_files("*.log")]
    csv_files = [str(p) for p in cluster.log_files("*.csv")]
    assert stderr_files and csv_files
    out, csv_out = tmp_path / "stderr.pgtw", tmp_path / "csv.pgtw"
    given = prefix if "%a" in prefix else None
    options = CaptureOptions(jobs=2, chunk_bytes=8192, log_line_prefix=given)
    summary = capture(stderr_files, out, options)
    capture(csv_files, csv_out, CaptureOptions(jobs=1))
    assert summary.skipped == {}
    how = "given" if given else "detected"
    note = "; %t: log times to the second" if "%t" in prefix else ""
    note += "; the AWS RDS/Aurora layout" if prefix == "%t:%r:%u@%d:[%p]:" else ""
    assert summary.formats == (f"stderr (log_line_prefix '{prefix}', {how}{note})",) * len(
        stderr_files
    )
    assert summary.server_version is not None and summary.server_version.startswith(str(major))
    workload, csv_workload = read_workload(out), read_workload(csv_out)
    check_invariants(workload, durations=style != "statement")
    exact = "%t" not in prefix
    assert_same_workload(workload, csv_workload, times=exact)
    if "%c" in prefix:
        assert workload.sessions.keys() == csv_workload.sessions.keys()
    connected = [s for s in workload.sessions.values() if s.connect_us is not None]
    assert connected and all(s.disconnect_us is not None for s in connected)
    if prefix == CASES[0][1]:
        _check_compressed(Path(stderr_files[0]), tmp_path, workload)


def _check_compressed(log: Path, tmp_path: Path, plain: Workload) -> None:
    """gzip, bzip2, xz and zstd files (whatever their names) and stdin: the same workload."""
    for tool in ("gzip", "bzip2", "xz", "zstd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed")
        packed = tmp_path / f"{tool}.log"  # no telling suffix: told by magic bytes
        with packed.open("wb") as fh:
            subprocess.run([tool, "-c", str(log)], stdout=fh, check=True)
        assert compression_of(packed.read_bytes()[:8]) is Compression(
            {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "zstd": "zstd"}[tool]
        )
        out = tmp_path / f"{tool}.pgtw"
        capture([str(packed)], out, CaptureOptions(jobs=2, chunk_bytes=8192))
        assert_same_workload(read_workload(out), plain)
    # stdin, through the CLI: zstd
    out = tmp_path / "stdin.pgtw"
    with (tmp_path / "zstd.log").open("rb") as fh:
        result = subprocess.run(
            [sys.executable, "-m", "pgtraffic.cli", "capture", "-", "-o", str(out), "-q"],
            stdin=fh,
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert_same_workload(read_workload(out), plain)


# --- hand-written files -------------------------------------------------------------


def test_rds_download(tmp_path: Path) -> None:
    """An AWS RDS log (``%t:%r:%u@%d:[%p]:``): sessions from pids and connection lines,
    a reused pid is a new session, multi-line statements, parameters, an error's
    statement and SQLSTATE from its message."""
    out = tmp_path / "w.pgtw"
    summary = capture([str(LOGS / "rds_stderr.log")], out, CaptureOptions(jobs=1))
    assert summary.formats == (
        "stderr (log_line_prefix '%t:%r:%u@%d:[%p]:', detected; %t: log times to the second;"
        " the AWS RDS/Aurora layout)",
    )
    assert summary.skipped == {}
    workload = read_workload(out)
    sessions = sorted(workload.sessions.values(), key=lambda s: s.connect_us or 0)
    assert [(s.user, s.database, s.application, s.client) for s in sessions] == [
        ("app", "shop", "web", "10.0.1.25:50412"),
        ("report", "shop", "psql", "10.0.1.26:40001"),
    ]
    assert [(s.connect_us, s.disconnect_us) for s in sessions] == [
        (0, 3_000_000),
        (4_000_000, 5_000_000),
    ]
    got = [(s.session, s.sql, s.params, s.sqlstate) for s in workload.statements()]
    first, second = (s.id for s in sessions)
    assert got == [
        (first, "SELECT id, name\n  FROM customers\n WHERE id = 7", None, None),
        (first, "UPDATE customers SET name = $1 WHERE id = $2", ("O'Brien\nJr.", "7"), None),
        (first, "INSERT INTO customers (name) VALUES ('O''Brien')", None, "23505"),
        (second, "SELECT count(*) FROM orders", None, None),
    ]


def test_comma_prefix_is_not_csvlog(tmp_path: Path) -> None:
    """A prefix with commas (``%m,%p,``) is a stderr log, its prefix inferred."""
    head = (LOGS / "comma_prefix.log").read_bytes()
    found = detect(head, "comma_prefix.log")
    assert found.format is LogFormat.STDERR
    assert found.prefix == "%m,%p,"
    out = tmp_path / "w.pgtw"
    capture([str(LOGS / "comma_prefix.log")], out, CaptureOptions(jobs=1))
    assert [s.sql for s in read_workload(out).statements()] == ["SELECT 1, 2", "SELECT 'a,b'"]


@pytest.mark.parametrize(
    ("name", "looks_like"),
    [("pgbouncer.log", "a pgbouncer log")],
)
def test_detector_refuses_other_logs(name: str, looks_like: str, tmp_path: Path) -> None:
    path = LOGS / name
    first = path.read_text().splitlines()[0]
    with pytest.raises(InputError) as info:
        capture([str(path)], tmp_path / "w.pgtw", CaptureOptions(jobs=1))
    assert looks_like in info.value.message
    assert f"{path}:1: {first}" in info.value.message  # file:line, the text verbatim


def test_detector_refuses_an_archive(tmp_path: Path) -> None:
    archive = tmp_path / "logs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(LOGS / "rds_stderr.log", arcname="postgresql.log")
    with pytest.raises(InputError, match="is an archive"):
        capture([str(archive)], tmp_path / "w.pgtw", CaptureOptions(jobs=1))


def test_csvlog_needs_real_csv_fields() -> None:
    head = (LOGS / "pg13_24cols.csv").read_bytes()
    assert detect(head, "x.csv").format is LogFormat.CSVLOG
    # a stderr line whose prefix has a comma right after the time is not csvlog
    line = b"2024-05-06 09:00:00.101 UTC,[12] LOG:  statement: SELECT 1\n" * 3
    assert detect(line, "x.log").format is LogFormat.STDERR


def test_given_prefix_that_lacks_what_replay_needs() -> None:
    head = b"bob@shop LOG:  statement: SELECT 1\n" * 3
    with pytest.raises(InputError) as info:
        detect(head, "x.log", prefix="%u@%d ")
    assert "log_line_prefix = '%m [%p] %u@%d '" in info.value.message
    with pytest.raises(PrefixError, match=r"no session id or process id \(%c or %p\)"):
        compile_prefix("%m %u ").check()


# --- the prefix module ----------------------------------------------------------------


def test_compile_escapes_padding_and_q() -> None:
    prefix = compile_prefix("%-10u|%5p|%e|%%|%q%d ")
    found = prefix.match("bob       |  123|22012|%|shop ERROR:  division by zero")
    assert found is not None
    assert (found["user"], found["pid"], found["sqlstate"], found["db"]) == (
        "bob",
        "123",
        "22012",
        "shop",
    )
    background = prefix.match("          |   77|00000|%|LOG:  checkpoint starting")
    assert background is not None and background["db"] is None


@pytest.mark.parametrize("text", COMMON_PREFIXES)
def test_each_common_prefix_is_detected(text: str) -> None:
    values = {
        "%m": "2024-05-06 09:00:00.123 UTC",
        "%t": "2024-05-06 09:00:00 UTC",
        "%p": "4242",
        "%l": "7",
        "%u": "bob",
        "%d": "shop",
        "%a": "psql",
        "%h": "10.0.0.1",
        "%r": "10.0.0.1(5000)",
        "%c": "6638a1b0.1092",
        "%e": "00000",
        "%q": "",
    }
    line = text
    for escape, value in values.items():
        line = line.replace(escape, value)
    lines = [line + "LOG:  statement: SELECT 1"] * 5
    found = detect_prefix(lines)
    assert found is not None
    assert found.prefix.text == text


def test_inferred_prefix() -> None:
    lines = [
        f"2024-05-06 09:00:0{i}.000 UTC pid={pid} user=bob db=shop LOG:  statement: SELECT {i}"
        for i, pid in enumerate((11, 12, 11, 12, 13))
    ]
    found = detect_prefix(lines)
    assert found is not None and found.inferred
    assert found.prefix.text == "%m pid=%p user=%u db=%d "
    numbered = [
        f"2024-05-06 09:00:00 UTC <{pid}:{n}> LOG:  statement: SELECT 1"
        for n, pid in ((1, 5), (1, 6), (2, 5), (3, 5), (2, 6))
    ]
    found = detect_prefix(numbered)
    assert found is not None and found.prefix.text == "%t <%p:%l> "
    assert head_lines("a\n\tb\nc\npartial") == ["a", "c"]


def test_sqlstates_from_messages() -> None:
    assert sqlstate_of_message('relation "nosuch" does not exist at character 15') == "42P01"
    assert sqlstate_of_message('column "x" of relation "t" does not exist') == "42703"
    assert sqlstate_of_message('syntax error at or near "SELEC" at character 1') == "42601"
    assert sqlstate_of_message("canceling statement due to statement timeout") == "57014"
    assert sqlstate_of_message("something nobody wrote down") == "XX000"


def test_pid_sessions_across_chunks(tmp_path: Path) -> None:
    """With %p only, a pid reused after its disconnection is a new session, and a
    session that spans many chunks stays one, in worker processes or not."""
    lines = []
    second = 0

    def log(pid: int, text: str) -> None:
        nonlocal second
        second += 1
        stamp = f"2024-05-06 09:{second // 60:02d}:{second % 60:02d}.000 UTC"
        lines.append(f"{stamp} [{pid}] LOG:  {text}")

    log(200, "connection received: host=[local]")
    log(200, "connection authorized: user=long database=shop application_name=a")
    for run in ("first", "second"):
        log(100, "connection received: host=[local]")
        log(100, f"connection authorized: user={run} database=shop application_name=b")
        for n in range(40):
            log(100, f"statement: SELECT '{run}', {n}")
            log(200, f"statement: SELECT 'long', '{run}', {n}")
        log(100, "disconnection: session time: 0:00:01.000 user=x database=shop host=[local]")
    path = tmp_path / "pids.log"
    path.write_text("\n".join(lines) + "\n")
    for jobs in (1, 2):
        out = tmp_path / f"w{jobs}.pgtw"
        capture([str(path)], out, CaptureOptions(jobs=jobs, chunk_bytes=1024))
        workload = read_workload(out)
        sessions = sorted(workload.sessions.values(), key=lambda s: s.connect_us or 0)
        assert [(s.user, s.statements) for s in sessions] == [
            ("long", 80),
            ("first", 40),
            ("second", 40),
        ]
        for session in sessions[1:]:
            got = [s.sql for s in workload.statements() if s.session == session.id]
            assert got == [f"SELECT '{session.user}', {n}" for n in range(40)]
