"""The application-side stream (docs/app-stream.md): JSON Lines of query events.

A real psycopg client runs the Python writer exactly as docs/app-stream.md shows it
against a real server; its stream is captured and replayed onto a server of another
version, and every statement must end as it did. Hand-written streams cover what a
writer may get wrong (malformed lines, a newer schema version) and the readers'
guarantees (sessions derived across chunks, parallel parsing, compression).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from capture.appstream import SCHEMA, SCHEMA_VERSION, parse_time
from capture.errors import InputError, LogParseError
from capture.pipeline import CaptureOptions, CaptureSummary, capture
from capture.sources import LogFormat, detect
from capture.workload import Workload, read_workload
from pgtraffic.servers import Cluster, Profile
from replay.sync import SyncMode
from tests.conftest import ClusterFactory
from tests.replay_helpers import outcomes, replay, replayable_keys

DOCS = Path(__file__).parent.parent / "docs"
MARK = f"{SCHEMA}/{SCHEMA_VERSION}"


def documented_writer() -> dict[str, Any]:
    """The Python writer of docs/app-stream.md, run from the page itself."""
    text = (DOCS / "app-stream.md").read_text()
    found = re.search(r"```python\n(# app_stream_psycopg\.py.*?)```", text, re.DOTALL)
    assert found is not None, "docs/app-stream.md shows the psycopg writer"
    namespace: dict[str, Any] = {"__name__": "app_stream_psycopg"}
    exec(compile(found.group(1), str(DOCS / "app-stream.md"), "exec"), namespace)
    return namespace


def _worker(writer: dict[str, Any], dsn: str, number: int, lock: threading.Lock) -> None:
    stream = writer["stream"]
    conn = writer["StreamConnection"].open(stream, dsn, application_name=f"worker{number}")
    for i in range(20):
        key = number * 1000 + i
        conn.execute("INSERT INTO items VALUES ($1, $2, $3)", [key, i, None if i % 3 else "x"])
        conn.commit()
        with lock:  # one claim at a time: the first worker wins, the others fail
            try:
                conn.execute("INSERT INTO claims VALUES ($1, $2)", [i, number])
                conn.commit()
            except psycopg.errors.UniqueViolation:
                conn.rollback()
        if i % 5 == 0:  # a failed block: 22012, then 25P02 until the ROLLBACK
            failing = [("SELECT n / ($1::int - 1) FROM items WHERE id = $2", [1, key])]
            for sql, params in [*failing, ("SELECT 1", None)]:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(sql, params)
            conn.rollback()
        conn.execute("UPDATE items SET n = n + 1 WHERE id = $1", [key])
        conn.commit()
    conn.autocommit = True
    conn.execute("SELECT count(*) FROM claims WHERE owner = $1", [number])
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM no_such_table")
    conn.close()


def run_clients(cluster: Cluster, path: Path, workers: int = 3) -> list[dict[str, Any]]:
    """Concurrent psycopg clients writing the stream; its events, as written."""
    writer = documented_writer()
    writer["stream"] = stream = writer["AppStream"](str(path))
    dsn = cluster.dsn()
    setup = writer["StreamConnection"].open(stream, dsn)
    setup.execute("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, note text)")
    setup.execute("CREATE TABLE claims (k int PRIMARY KEY, owner int NOT NULL)")
    setup.commit()
    setup.close()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(number: int) -> None:
        try:
            _worker(writer, dsn, number, lock)
        except BaseException as exc:  # a thread's exception would not fail the test
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stream.close()
    assert failures == []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_psycopg_stream_replays_with_every_outcome(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    source = make_cluster(16, Profile.TARGET)
    events = run_clients(source, tmp_path / "app.jsonl")
    queries = [e for e in events if e["type"] == "query"]
    out = tmp_path / "w.pgtw"
    summary = capture([str(tmp_path / "app.jsonl")], out, CaptureOptions(jobs=1))
    assert summary.formats == ("application stream (pgtraffic-app/1)",)
    assert summary.skipped == {}
    workload = read_workload(out)
    statements = list(workload.statements())
    assert len(statements) == len(queries) == summary.statements  # each exactly once
    failed = sorted({s.sqlstate for s in statements if s.sqlstate})
    assert failed == ["22012", "23505", "25P02", "42P01"]
    assert sum(1 for s in statements if s.sqlstate == "23505") == 2 * 20  # two losers a claim
    assert any(s.params == ("0", "0", "x") for s in statements)
    assert any(s.params is not None and None in s.params for s in statements)
    applications = {s.application for s in workload.sessions.values()}
    assert applications - {None, ""} == {"worker0", "worker1", "worker2"}
    assert len(workload.sessions) == 4
    for session in workload.sessions.values():
        assert session.connect_us is not None and session.disconnect_us is not None
        assert session.connect_us < session.disconnect_us
    assert workload.header.sync["commits"] > 100

    target = make_cluster(18, Profile.TARGET)
    results = replay(workload, target, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, max_speed=True)
    seen = outcomes(results)
    keys = replayable_keys(workload)
    assert set(seen) == keys, "every statement replayed once"
    misses = [(k, v) for k, v in sorted(seen.items()) if v[0] != v[1]]
    assert misses == []  # outcome agreement 100 %


def _line(**event: Any) -> str:
    return json.dumps({"stream": MARK, **event})


def _query(session: str, second: float, sql: str, **more: Any) -> str:
    minute, sec = divmod(second, 60)
    time = f"2026-12-01T10:{int(minute):02d}:{sec:09.6f}+00:00"
    return _line(type="query", time=time, session=session, sql=sql, duration_ms=2.0, **more)


def _good_stream() -> list[str]:
    lines = [
        _query("s1", 1, "SELECT 1", user="app", database="shop", application="web"),
        _query("s2", 1.5, "INSERT INTO t VALUES ($1, $2)", params=[1, True], user="app"),
        _query("s1", 2, "SELECT * FROM nosuch", sqlstate="42P01"),
        _query("s2", 2.5, "SELECT $1::jsonb", params=[{"a": [1, None]}], statement_name="q1"),
    ]
    for n in range(40):  # enough lines for many small chunks
        lines.append(_query(f"s{n % 2 + 1}", 3 + n, f"SELECT {n}", rows=1))
    return lines


def _capture(path: Path, **options: Any) -> tuple[CaptureSummary, Workload]:
    out = path.with_suffix(".pgtw")
    summary = capture([str(path)], out, CaptureOptions(**{"jobs": 1, **options}))
    return summary, read_workload(out)


def test_a_hand_written_stream(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    path.write_text("\n".join(_good_stream()) + "\n")
    summary, workload = _capture(path)
    assert summary.skipped == {}
    got = [(s.session, s.sql, s.params, s.name, s.sqlstate) for s in workload.statements()][:4]
    assert got == [
        ("s1", "SELECT 1", None, None, None),
        ("s2", "INSERT INTO t VALUES ($1, $2)", ("1", "true"), "", None),
        ("s1", "SELECT * FROM nosuch", None, None, "42P01"),
        ("s2", "SELECT $1::jsonb", ('{"a":[1,null]}',), "q1", None),
    ]
    first = next(iter(workload.statements()))
    assert first.duration_us == 2000
    s1 = workload.sessions["s1"]
    assert (s1.user, s1.database, s1.application) == ("app", "shop", "web")


def test_sessions_without_connect_events_are_derived_across_chunks(tmp_path: Path) -> None:
    """Connection at the first event, disconnection at the end of the last, whatever
    chunks and processes the lines were read in."""
    path = tmp_path / "app.jsonl"
    path.write_text("\n".join(_good_stream()) + "\n")
    runs = [_capture(path, chunk_bytes=300), _capture(path, chunk_bytes=300, jobs=2)]
    for summary, workload in runs:
        assert summary.skipped == {}
        s1, s2 = workload.sessions["s1"], workload.sessions["s2"]
        start = parse_time("2026-12-01T10:00:01+00:00")
        origin = start - (s1.connect_us or 0)
        assert origin + (s2.connect_us or 0) == start + 500_000
        assert origin + (s1.disconnect_us or 0) == parse_time("2026-12-01T10:00:41+00:00") + 2000
        assert origin + (s2.disconnect_us or 0) == parse_time("2026-12-01T10:00:42+00:00") + 2000
    (_, one), (_, two) = runs
    assert list(one.statements()) == list(two.statements())
    assert one.sessions == two.sessions


def test_connect_and_disconnect_events_give_the_times(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    lines = [
        _line(type="connect", time="2026-12-01T11:00:00.5+01:00", session="c", client="h:1"),
        _query("c", 1, "SELECT 1"),
        _line(type="disconnect", time="2026-12-01T10:00:09Z", session="c"),
    ]
    path.write_text("\n".join(lines) + "\n")
    _, workload = _capture(path)
    session = workload.sessions["c"]
    assert session.client == "h:1"
    assert (session.connect_us, session.disconnect_us) == (0, 8_500_000)


def test_malformed_lines_are_counted_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    bad = [
        "garbage",
        _line(type="query", time="2026-12-01 10:00:02", session="s1", sql="x", duration_ms=1),
        _line(type="query", time="2026-12-01T10:00:02Z", session="s1", duration_ms=1),
        _line(type="query", time="2026-12-01T10:00:02Z", session="s1", sql="x", duration_ms=-1),
        _line(
            type="query",
            time="2026-12-01T10:00:02Z",
            session="s1",
            sql="x",
            duration_ms=1,
            sqlstate="oops",
        ),
        json.dumps({"type": "query", "time": "2026-12-01T10:00:02Z", "session": "s1"}),
        _line(type="notice", time="2026-12-01T10:00:02Z", session="s1", text="hi"),
        json.dumps({"stream": f"{SCHEMA}/{SCHEMA_VERSION + 1}", "type": "query"}),
    ]
    good = _good_stream()
    data = "\n".join(good[:2] + bad + good[2:]).encode() + b"\n" + b'{"stream": "\xff"}\n'
    data += _query("s1", 50, "SELECT 'cut'").encode()[:40]  # a last line cut short
    path.write_bytes(data)
    summary, _ = _capture(path)
    assert summary.skipped == {
        "not an app-stream event": 2,
        "invalid app-stream event": 4,
        "unknown app-stream event type": 1,
        "newer app-stream schema version": 1,
        "not UTF-8": 1,
        "truncated record at end of file": 1,
    }
    name = str(path)
    assert summary.skipped_examples["not an app-stream event"] == (f"{name}:3", f"{name}:8")
    assert summary.skipped_examples["newer app-stream schema version"] == (f"{name}:10",)
    assert summary.statements == len(good)
    with pytest.raises(LogParseError) as info:
        _capture(path, strict=True)
    assert f"{name}:3" in str(info.value)


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    newer = f"{SCHEMA}/{SCHEMA_VERSION + 1}"
    path.write_text("\n" + json.dumps({"stream": newer, "type": "query"}) + "\n")
    with pytest.raises(InputError) as info:
        _capture(path)
    message = str(info.value)
    assert f"{path}:2: written with app-stream schema version {SCHEMA_VERSION + 1}" in message
    assert f"reads versions up to {SCHEMA_VERSION}" in message
    assert "upgrade pgtraffic" in (info.value.hint or "")
    with pytest.raises(InputError, match="schema version"):
        _capture(path, format=LogFormat.APPSTREAM)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_streams_are_told_by_magic_bytes(tmp_path: Path, codec: str) -> None:
    plain = ("\n".join(_good_stream()) + "\n").encode()
    packed = gzip.compress(plain) if codec == "gzip" else zstandard.compress(plain)
    path = tmp_path / "events"  # no suffix: the first bytes tell
    path.write_bytes(packed)
    summary, workload = _capture(path)
    assert summary.formats == ("application stream (pgtraffic-app/1)",)
    assert summary.statements == len(_good_stream())
    (tmp_path / "plain.jsonl").write_bytes(plain)
    _, expected = _capture(tmp_path / "plain.jsonl")
    assert list(workload.statements()) == list(expected.statements())


def test_detection_and_forced_format(tmp_path: Path) -> None:
    head = ("\n".join(_good_stream()) + "\n").encode()
    assert detect(head, "app.jsonl").format is LogFormat.APPSTREAM
    jsonlog = b'{"timestamp": "2026-12-01 10:00:00.000 UTC", "message": "x"}\n'
    assert detect(jsonlog, "pg.json").format is LogFormat.JSONLOG
    found = detect(jsonlog, "pg.json", fmt=LogFormat.APPSTREAM)
    assert found.format is LogFormat.APPSTREAM  # forced: its lines are then refused
    path = tmp_path / "pg.json"
    path.write_bytes(jsonlog + head)
    summary, _ = _capture(path, format=LogFormat.APPSTREAM)
    assert summary.skipped == {"not an app-stream event": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:00:00Z", 1796119200_000000),
        ("2026-12-01T11:00:00.25+01:00", 1796119200_250000),
        ("2026-12-01 09:30:00.123456789-00:30", 1796119200_123456),
        ("2026-12-01t10:00:00.5z", 1796119200_500000),
    ],
)
def test_rfc3339_times(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["2026-12-01T10:00:00", "2026-12-01", "10:00:00Z", 1796119200])
def test_times_without_an_offset_are_refused(text: Any) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)


def test_the_json_schema_matches_the_reader() -> None:
    schema = json.loads((DOCS / "app-stream.schema.json").read_text())
    properties = schema["properties"]
    assert properties["stream"]["const"] == MARK
    assert set(properties["type"]["enum"]) == {"query", "connect", "disconnect"}
    pattern = re.compile(properties["time"]["pattern"])
    for good in ("2026-12-01T10:00:00Z", "2026-12-01 09:30:00.123456789-00:30"):
        assert pattern.match(good)
        parse_time(good)
    assert not pattern.match("2026-12-01T10:00:00")
    assert schema["required"] == ["stream", "type", "time", "session"]
    assert schema["then"]["required"] == ["sql", "duration_ms"]


def test_a_stream_without_query_events_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    lines = [
        _line(type="connect", time="2026-12-01T10:00:00Z", session="s1"),
        _line(type="query", time="2026-12-01T10:00:01", session="s1", sql="x", duration_ms=1),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        _capture(path)
    assert "no query events in this application stream" in str(info.value)
    assert "1 invalid app-stream event" in str(info.value)
    assert "docs/app-stream.md" in (info.value.hint or "")
    assert "postgresql.conf" not in (info.value.hint or "")


def test_the_summary_counts_the_durations(tmp_path: Path, pgtraffic_cmd: list[str]) -> None:
    """Every event carries its duration, and the summary says so."""
    path = tmp_path / "app.jsonl"
    path.write_text("\n".join(_good_stream()) + "\n")
    summary, _ = _capture(path)
    assert summary.statements_with_duration == summary.statements - 1  # one failed
    done = subprocess.run(
        [*pgtraffic_cmd, "capture", str(path), "-o", str(tmp_path / "cli.pgtw")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert re.search(rf"durations logged\s+│\s+{summary.statements - 1}\b", done.stdout)
