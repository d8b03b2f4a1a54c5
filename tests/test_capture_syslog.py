"""syslog: PostgreSQL logging through a real rsyslogd, read back by capture.

A private rsyslogd (its own configuration, work directory and files under the
test's tmp path) owns /dev/log for the test when no other daemon listens there
(the socket is removed afterwards and a stale one put back); otherwise the test
is skipped. PostgreSQL logs to syslog and csvlog at once; rsyslogd writes each
message of the test's syslog_ident twice, as RSYSLOG_TraditionalFileFormat (BSD)
and RSYSLOG_SyslogProtocol23Format (RFC 5424). Both files must keep the
every-statement-exactly-once invariant and give the csvlog's workload, long
statements (split by syslog_split_messages) included. Hand-written cases cover
how pieces are joined.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from capture.errors import InputError
from capture.pipeline import CaptureOptions, capture
from capture.sources import LogFormat, detect
from capture.syslog import SyslogOptions, join_pieces, to_stderr, unescape
from capture.workload import read_workload
from tests.conftest import ClusterFactory
from tests.test_capture_real import check_invariants, logged_clients
from tests.test_capture_stderr import assert_same_workload

LOGS = Path(__file__).parent / "logs"
DEV_LOG = Path("/dev/log")
LOCK = Path("/tmp/pgtraffic-test-devlog.lock")

LONG_STATEMENTS = [
    "SELECT " + ", ".join(f"'word{i} ü'" for i in range(260)),  # cut at spaces
    "SELECT '" + "y" * 2500 + "' AS long_word",  # cut inside a word
    "SELECT '" + "日本語" * 300 + "' AS wide",  # cut at a letter boundary
    "SELECT 1 AS a,\n\t"
    + " + ".join(str(i) for i in range(400))
    + " AS total\nFROM (VALUES (1)) v",
]


def _listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@contextlib.contextmanager
def _devlog_lock() -> Iterator[None]:
    with LOCK.open("w") as fh:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip("another test holds /dev/log for over 2 minutes")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_CONF = """\
global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="/dev/log" RateLimit.Interval="0")
if $programname == '{ident}' then {{
  action(type="omfile" file="{trad}" template="RSYSLOG_TraditionalFileFormat")
  action(type="omfile" file="{rfc}" template="RSYSLOG_SyslogProtocol23Format")
}}
stop
"""


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A private rsyslogd on /dev/log: (ident to log as, BSD file, RFC 5424 file)."""
    daemon = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not Path(daemon).exists():
        pytest.skip("rsyslogd is not installed")
    with _devlog_lock():
        if DEV_LOG.exists() and _listening(DEV_LOG):
            pytest.skip("/dev/log is served by another syslog daemon; not taking it over")
        stale = DEV_LOG.with_name("log.pgtraffic-stale")  # same file system: rename works
        if DEV_LOG.exists() or DEV_LOG.is_symlink():
            DEV_LOG.rename(stale)
        ident = f"pgt{uuid.uuid4().hex[:8]}"
        work = tmp_path / "rsyslog"
        work.mkdir()
        trad, rfc = tmp_path / "syslog-bsd.log", tmp_path / "syslog-rfc5424.log"
        conf = work / "rsyslog.conf"
        conf.write_text(_CONF.format(work=work, ident=ident, trad=trad, rfc=rfc))
        proc = subprocess.Popen(
            [daemon, "-n", "-f", str(conf), "-i", str(work / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while not _listening(DEV_LOG):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"rsyslogd did not start listening on /dev/log: {err}")
                time.sleep(0.05)
            yield ident, trad, rfc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
            with contextlib.suppress(FileNotFoundError):
                DEV_LOG.unlink()
            if stale.exists() or stale.is_symlink():
                stale.rename(DEV_LOG)


def _settled(*paths: Path, timeout: float = 20.0) -> None:
    """Wait until the files stop growing (rsyslogd wrote what it received)."""
    deadline = time.monotonic() + timeout
    sizes: list[int] = []
    while time.monotonic() < deadline:
        now = [p.stat().st_size if p.exists() else -1 for p in paths]
        if now == sizes and min(now) > 0:
            return
        sizes = now
        time.sleep(1.0)
    pytest.fail(f"syslog files still growing after {timeout} s: {sizes}")


# (major, log_line_prefix): the default prefix, and none (time and pid from the header)
CASES = [(16, "%m [%p] %q%u@%d "), (18, "")]


@pytest.mark.pg(">=15")
@pytest.mark.parametrize(("major", "prefix"), CASES, ids=lambda v: repr(v))
def test_rsyslog_matches_csvlog(
    make_cluster: ClusterFactory,
    tmp_path: Path,
    rsyslog: tuple[str, Path, Path],
    major: int,
    prefix: str,
) -> None:
    ident, trad, rfc = rsyslog
    settings = {
        "log_destination": "'syslog,csvlog'",
        "syslog_ident": f"'{ident}'",
        "log_line_prefix": f"'{prefix}'",
        "log_min_duration_statement": "0",
    }
    cluster = logged_clients(make_cluster, tmp_path, major, settings)
    with psycopg.connect(cluster.dsn(), application_name="long", autocommit=True) as conn:
        for sql in LONG_STATEMENTS:
            conn.execute(sql)
    time.sleep(0.5)
    _settled(trad, rfc)
    csv_out = tmp_path / "csv.pgtw"
    capture([str(p) for p in cluster.log_files("*.csv")], csv_out, CaptureOptions(jobs=1))
    csv_workload = read_workload(csv_out)
    text = trad.read_text()
    assert "-2] " in text and "#011" in text  # split messages, escaped tabs
    for path, layout in ((trad, "BSD, RFC 3164"), (rfc, "RFC 5424")):
        out = tmp_path / f"{path.stem}.pgtw"
        summary = capture([str(path)], out, CaptureOptions(jobs=2, chunk_bytes=8192))
        assert summary.formats == (
            f"syslog ({layout}, ident {ident}, log_line_prefix '{prefix}', detected)",
        )
        assert summary.skipped == {}
        workload = read_workload(out)
        check_invariants(workload, durations=True)
        long_sessions = [s.id for s in workload.sessions.values() if s.application == "long"]
        got = [s.sql for s in workload.statements() if s.session in long_sessions]
        assert got == LONG_STATEMENTS
        assert_same_workload(workload, csv_workload, times="%m" in prefix)


# --- hand-written -----------------------------------------------------------------


def test_join_pieces() -> None:
    """Cuts at 900 bytes (at a space, inside a word) continue the line; a newline cut
    begins the next line."""
    head = "x" * 895
    assert join_pieces([head, " longword rest"]) == head + " longword rest"
    assert join_pieces([head, " word rest"]) == head + "\n word rest"  # it fitted: a newline
    word = "w" * 900
    assert join_pieces([word, "rest"]) == word + "rest"
    assert join_pieces(["LOG:  statement: SELECT 1,", "\t2"]) == "LOG:  statement: SELECT 1,\n\t2"
    assert join_pieces(["LOG:  short", "DETAIL:  parameters: $1 = '1'"]).count("\n") == 1
    assert unescape("#011FROM t #35 x") == "\tFROM t #35 x"


def test_interleaved_pieces_and_other_programs() -> None:
    """Pieces of one message between another backend's lines and another program's
    line are put together; each message stays on the line of its first piece."""
    lines = [
        "Dec  1 10:00:00 db postgres[10]: [3-1] LOG:  statement: SELECT a,",
        "Dec  1 10:00:00 db postgres[11]: [7-1] LOG:  statement: SELECT 2",
        "Dec  1 10:00:00 db cron[99]: (root) CMD (true)",
        "Dec  1 10:00:01 db postgres[10]: [3-2] #011b FROM t",
    ]
    options = SyslogOptions("bsd", "postgres", "", 2026, 12)
    text, bad = to_stderr(lines, options)
    assert bad == []
    assert text.split("\n")[:4] == [
        "2026-12-01 10:00:00.000 UTC [10] LOG:  statement: SELECT a,",
        "\tb FROM t",
        "2026-12-01 10:00:00.000 UTC [11] LOG:  statement: SELECT 2",
        "",
    ]


def test_heroku_logplex(tmp_path: Path) -> None:
    path = LOGS / "heroku.log"
    found = detect(path.read_bytes(), str(path))
    assert found.format is LogFormat.SYSLOG
    assert found.label.startswith("Heroku Postgres (logplex, ident app, log_line_prefix")
    out = tmp_path / "w.pgtw"
    summary = capture([str(path)], out, CaptureOptions(jobs=1))
    assert summary.skipped == {}
    workload = read_workload(out)
    got = [(s.sql, s.params, s.sqlstate) for s in workload.statements()]
    assert got == [
        ("SELECT id FROM users\nWHERE email = $1", ("a@example.com",), None),
        ("SELECT * FROM nosuch", None, "42P01"),
    ]
    (session,) = workload.sessions.values()
    assert (session.user, session.database, session.application) == ("u1", "d1", "web.1")


def test_syslog_without_postgres_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "messages"
    path.write_text("Dec  1 10:00:00 host cron[99]: (root) CMD (true)\n" * 3)
    with pytest.raises(InputError, match="holds no PostgreSQL messages"):
        capture([str(path)], tmp_path / "w.pgtw", CaptureOptions(jobs=1))
