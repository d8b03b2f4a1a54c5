"""Pure parts of capture: message classification, parameters, chunking, encoding."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.chunking import ChunkText
from capture.csvlog import CsvChunker
from capture.csvlog import parse_chunk as parse_csv
from capture.decode import RecordDecoder
from capture.errors import WorkloadFormatError
from capture.events import EventKind, LogEvent
from capture.inspect import peak_concurrency, rate_buckets
from capture.messages import classify, parse_parameters, placeholder_count
from capture.normalize import Fingerprinter, fingerprint
from capture.records import Statement, StatementKind
from capture.sessions import OpenStatement, StatementTracker
from capture.timestamps import TimestampParser
from capture.workload import Workload, WorkloadWriter, read_workload


def test_classify_statement_forms() -> None:
    assert classify("statement: SELECT 1") == (EventKind.STATEMENT, "SELECT 1", None, None, None)
    c = classify("execute S_1/C_2: SELECT $1")
    assert c is not None and (c.kind, c.name, c.sql) == (EventKind.EXECUTE, "S_1", "SELECT $1")
    c = classify("execute <unnamed>: SELECT 1")
    assert c is not None and c.name == ""
    assert classify("execute fetch from S_1/C_2: SELECT 1") is None
    c = classify("duration: 1.5 ms")
    assert c is not None and (c.kind, c.duration_us) == (EventKind.DURATION, 1500)
    c = classify("duration: 12.345 ms  statement: SELECT 2")
    assert c is not None and (c.kind, c.sql, c.duration_us) == (
        EventKind.DURATION_STATEMENT,
        "SELECT 2",
        12345,
    )
    c = classify("duration: 0.010 ms  bind P_1: SELECT $1")
    assert c is not None and (c.kind, c.name) == (EventKind.BIND, "P_1")
    c = classify("duration: 3 ms  execute <unnamed>: SELECT 1")
    assert c is not None and c.kind is EventKind.DURATION_EXECUTE
    c = classify("connection authorized: user=a database=b application_name=my app")
    assert c is not None and c.application == "my app"
    assert classify("checkpoint starting: time") is None


def test_parameters() -> None:
    assert parse_parameters("parameters: $1 = 'a', $2 = NULL, $3 = 'it''s\nx, $4 = ''y'''") == (
        ("a", None, "it's\nx, $4 = 'y'"),
        False,
    )
    assert parse_parameters("Parameters: $1 = '5'") == (("5",), False)
    assert parse_parameters("Parameters: $1 = 'abcdefghij...'") == (("abcdefghij...",), True)
    assert parse_parameters("prepare: PREPARE p AS SELECT 1") is None
    assert parse_parameters("parameters: $2 = 'skipped one'") is None


@given(st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=6))
def test_parameters_roundtrip(values: list[str | None]) -> None:
    detail = "parameters: " + ", ".join(
        f"${i} = " + ("NULL" if v is None else "'" + v.replace("'", "''") + "'")
        for i, v in enumerate(values, 1)
    )
    parsed = parse_parameters(detail)
    assert parsed is not None
    assert parsed[0] == tuple(values)


def test_timestamps() -> None:
    parse = TimestampParser()
    assert parse("1970-01-01 00:00:01.250 UTC") == 1_250_000
    assert parse("1970-01-01 01:00:01.250 +01") == 1_250_000
    assert parse("1970-01-01 00:00:01 UTC") == 1_000_000


def test_fallback_fingerprint_for_unparsable_sql() -> None:
    fp, parsed = fingerprint("SELEC broken")
    assert not parsed and fp.startswith("u") and len(fp) == 17
    assert fingerprint("selec   BROKEN") == (fp, False)
    assert fingerprint("SELECT 1")[1] is True


def _csv_record(i: int, message: str, detail: str) -> list[str]:
    return [
        f"2024-05-06 09:00:{i % 60:02d}.000 UTC", "u", "d", "1", "[local]", "s.1", str(i),
        "idle", "2024-05-06 09:00:00 UTC", "3/1", "0", "LOG", "00000", message, detail,
        "", "", "", "", "", "", "", "app", "client backend", "", "0",
    ]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    sqls=st.lists(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r")).map(
            lambda s: "SELECT '" + s.replace("'", "''") + "'"
        ),
        min_size=1,
        max_size=8,
    ),
    params=st.lists(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"))
    ),
    chunk=st.integers(min_value=1, max_value=300),
)
def test_csv_quoting_and_multiline_fields_survive_chunking(
    sqls: list[str], params: list[str], chunk: int
) -> None:
    """Whatever quotes and newlines the fields hold, any chunking gives back every record."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    detail = "parameters: " + ", ".join(
        f"${i} = '" + p.replace("'", "''") + "'" for i, p in enumerate(params, 1)
    )
    for i, sql in enumerate(sqls):
        writer.writerow(_csv_record(i, f"execute P_{i}: {sql}", detail if params else ""))
    data = out.getvalue().encode()
    chunker = CsvChunker(target=chunk)
    pieces = []
    for start in range(0, len(data), 97):
        pieces.extend(chunker.feed(data[start : start + 97]))
    rest = chunker.finish()
    if rest is not None:
        assert rest[2] is False  # not truncated
        pieces.append(rest[:2])
    assert all(piece.endswith(b"\n") for piece, _ in pieces)
    assert b"".join(p for p, _ in pieces) == data
    decoder = RecordDecoder()
    for piece, line in pieces:
        parse_csv(decoder, ChunkText(piece.decode(), "t.csv", line))
    result = decoder.take()
    assert result.problems == []
    events = [LogEvent(*raw) for raw in result.events]
    assert [e.sql for e in events] == sqls
    assert [e.name for e in events] == [f"P_{i}" for i in range(len(sqls))]
    assert all(e.params == tuple(params) for e in events)
    # line numbers point at the first line of each record
    lines = data.decode().split("\n")
    for event in events:
        assert lines[event.line - 1].startswith("2024-05-06 09:00:")


def test_huge_field_beyond_default_csv_limit() -> None:
    sql = "SELECT '" + "x" * 300_000 + "'"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(_csv_record(1, "statement: " + sql, ""))
    decoder = RecordDecoder()
    parse_csv(decoder, ChunkText(out.getvalue(), "t.csv", 1))
    (raw,) = decoder.take().events
    assert LogEvent(*raw).sql == sql


@given(
    sql=st.text(),
    params=st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text()), max_size=3)),
    name=st.one_of(st.none(), st.text(max_size=5)),
    duration=st.one_of(st.none(), st.integers(0, 10**9)),
    sqlstate=st.one_of(st.none(), st.just("22012")),
    truncated=st.booleans(),
    clock=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_fast_encoding_matches_the_record(
    sql: str,
    params: list[str | None] | None,
    name: str | None,
    duration: int | None,
    sqlstate: str | None,
    truncated: bool,
    clock: tuple[int, int, int],
) -> None:
    kind = StatementKind.EXECUTE if params is not None else StatementKind.SIMPLE
    stmt = OpenStatement(
        "abc.1", 3, 0, kind, sql, "0123456789abcdef", True,
        params=tuple(params) if params is not None else None, name=name,
        params_truncated=truncated, duration_us=duration, sqlstate=sqlstate,
    )  # fmt: skip
    clock = (clock[0], clock[1], min(clock[1], clock[2]))  # after_objects <= after
    stmt.commit, stmt.after, stmt.after_objects = clock
    record = Statement(
        session="abc.1", seq=3, offset_us=42, kind=kind, sql=sql, fingerprint="0123456789abcdef",
        params=tuple(params) if params is not None else None, name=name, duration_us=duration,
        sqlstate=sqlstate, params_truncated=truncated, commit=clock[0], after=clock[1],
        after_objects=clock[2],
    )  # fmt: skip
    line = stmt.encode(42)
    assert line == json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))
    assert Statement.from_json(json.loads(line)) == record


def test_peak_concurrency_and_rates() -> None:
    assert peak_concurrency([(0, 10), (5, 15), (10, 20), (30, 40)]) == 2
    assert peak_concurrency([]) == 0
    buckets = rate_buckets([0, 500_000, 1_500_000, 2_999_999], 3_000_000, buckets=3)
    assert [b.statements for b in buckets] == [2, 1, 1]
    assert buckets[0].per_second == 2.0


def test_placeholder_count_skips_literals_comments_and_dollar_quotes() -> None:
    """Missing parameter values are counted from real placeholders only."""
    assert placeholder_count("SELECT '$1'") == 0
    assert placeholder_count("SELECT $1, $12 /* $40 */") == 12
    assert placeholder_count("SELECT $$ $4 $$, 'é', $2") == 2
    assert placeholder_count("SELECT 1") == 0
    # text the scanner cannot read: every $n counts, rather than none
    assert placeholder_count("SELECT 'unterminated $5") == 5


def test_csv_chunker_resynchronizes_after_a_stray_quote() -> None:
    """A garbage line with one quote makes every later newline look quoted; after
    max_pending bytes the chunker cuts at a record start again, and every record
    after the garbage is still decoded."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for i in range(3000):
        writer.writerow(_csv_record(i, f"statement: SELECT {i}", ""))
    records = out.getvalue()
    cut = records[:20_000].rfind("\n") + 1
    data = (records[:cut] + 'garbage "line\n' + records[cut:]).encode()
    chunker = CsvChunker(target=4096, max_pending=50_000)
    pieces = []
    for start in range(0, len(data), 1000):
        pieces.extend(chunker.feed(data[start : start + 1000]))
    assert len(chunker._buf) - chunker._start < 60_000  # bounded, not the whole log
    rest = chunker.finish()
    if rest is not None:
        pieces.append(rest[:2])
    assert b"".join(p for p, _ in pieces) == data
    assert len(pieces) > 10
    assert max(len(p) for p, _ in pieces) <= 50_000 + 1000 + 4096
    decoder = RecordDecoder()
    for piece, line in pieces:
        parse_csv(decoder, ChunkText(piece.decode(), "t.csv", line))
    result = decoder.take()
    assert [e[4] for e in result.events] == [f"SELECT {i}" for i in range(3000)]
    garbage_line = data[: data.index(b"garbage")].count(b"\n") + 1
    assert [(p.line, p.reason) for p in result.problems] == [(garbage_line, "not a csvlog record")]


def test_bulk_and_per_row_csv_decoding_agree() -> None:
    """A chunk of one-line records (decoded in one loop) gives the same events,
    sessions, problems and counts as the record-by-record path."""
    rows = [_csv_record(i, f"statement: SELECT {i % 7}", "") for i in range(200)]
    rows[3][23] = "autovacuum worker"  # not a client backend
    rows[5][11] = "ERROR"
    rows[5][19] = "SELECT 5"
    rows[8][5] = ""  # no session id
    rows[9][0] = "2024-05-06 09:00:09.000 Mars/Olympus"  # unreadable log time
    rows[10][13] = "duration: 1.5 ms"
    rows[11][13] = "connection authorized: user=u database=d application_name=x"
    rows[12][22] = ""  # an application name filled in later
    rows[13][5] = "s.2"
    rows[14] = rows[14][:23]  # PostgreSQL 12: no backend_type
    rows[15] = rows[15][:25]  # not a csvlog record
    rows[16][0] = "garbage"
    rows[17][13] = "statement: SELECT \"x\", 'é\\'"
    rows[18][13] = "statement: SELECT 'a\rb'"  # quoted, one line
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(rows[:18])
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(rows[18])
    writer.writerows(rows[19:100])
    out.write("\n")  # a blank line
    writer.writerows(rows[100:])
    text = out.getvalue()
    results = []
    for per_row in (False, True):
        decoder = RecordDecoder()
        # check_encoding makes parse_chunk take the record-by-record path
        parse_csv(decoder, ChunkText(text, "t.csv", 7, check_encoding=per_row))
        results.append(decoder.take())
    bulk, single = results
    assert "\r" in text and text.count("\n") == 201
    assert bulk.events == single.events
    assert len(bulk.events) == 200 - 5
    assert bulk.sessions == single.sessions
    assert bulk.problems == single.problems
    assert [p.line for p in bulk.problems] == [16, 22, 23]
    assert (bulk.records, bulk.lines, bulk.first_ts_us, bulk.last_ts_us) == (
        single.records,
        single.lines,
        single.first_ts_us,
        single.last_ts_us,
    )


def test_fingerprinter_caches_agree_with_pglast() -> None:
    """Repeated shapes (served from the trusted-shape cache), digits in names (never
    keyed by shape) and cache clears all give pglast's own fingerprint."""
    fingerprinter = Fingerprinter(limit=7)
    sqls = []
    for i in range(60):
        sqls += [
            f"UPDATE accounts SET balance = balance + {i * 37 - 500} WHERE aid = {i};",
            f"SELECT a FROM t{i % 3} WHERE a = {i % 10}",
            f"SELECT * FROM accounts WHERE aid = '{i}' AND x = {i}.5",
            "BEGIN;",
        ]
    for sql in sqls:
        assert fingerprinter(sql) == fingerprint(sql), sql


def _tracked_workload(path: Path) -> tuple[StatementTracker, Workload]:
    """A workload built as capture builds it: tracker, then writer."""
    tracker = StatementTracker()
    events = [
        (1, "a", 1000, 1, "CREATE TABLE t (a int)", *fingerprint("CREATE TABLE t (a int)"), None),
        (10, "a", 2000, 2),
        (1, "b", 3000, 3, "SELECT * FROM t", *fingerprint("SELECT * FROM t"), None),
    ]
    tracker.feed_all(events)
    writer = WorkloadWriter(path)
    for stmt in tracker.drain():
        writer.write_encoded(stmt.start_us - 1000, stmt.encode(stmt.start_us - 1000))
    now = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
    writer.close(
        capture_start=now,
        capture_end=now,
        sessions=tracker.session_records(1000),
        classes=[],
        sync=tracker.sync_header(),
    )
    return tracker, read_workload(path)


def test_workload_version_2_carries_the_commit_clock(tmp_path: Path) -> None:
    _, workload = _tracked_workload(tmp_path / "w.pgtw")
    assert workload.header.format_version == 2 and workload.has_sync
    assert workload.header.sync == {"commits": 1, "disconnects": 1, "rows": 1}
    assert [(s.sql, s.commit, s.after, s.after_objects) for s in workload.statements()] == [
        ("CREATE TABLE t (a int)", 1, 0, 0),
        ("SELECT * FROM t", 0, 1, 1),
    ]
    assert workload.sessions["a"].disconnect_order == 1
    assert workload.sessions["b"].after_disconnects == 0


def test_version_1_workloads_are_still_read(tmp_path: Path) -> None:
    """A file written before causal order was recorded: no sync members at all."""
    path = tmp_path / "v1.pgtw"
    _tracked_workload(path)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh]
    lines[0]["format_version"] = 1
    del lines[0]["sync"]
    del lines[0]["preamble_digest"]  # version 1 writers recorded no content digest
    for obj in lines[1:]:
        for key in ("commit", "after", "after_objects", "disconnect_order"):
            obj.pop(key, None)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("".join(json.dumps(obj) + "\n" for obj in lines))
    workload = read_workload(path)
    assert not workload.has_sync and workload.header.sync == {}
    assert all(s.commit == s.after == 0 for s in workload.statements())
    lines[0]["format_version"] = 3
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(json.dumps(lines[0]) + "\n")
    with pytest.raises(WorkloadFormatError, match="version 3"):
        read_workload(path)
