"""Load results files into RunData, and look up SQL text in the workload (I/O edge)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from capture.records import Statement
from capture.workload import Workload, check_workload_id, read_workload
from pgtraffic.compare.model import Comparison, Completeness, Example, RunData
from replay.results import Results, read_results
from replay.sqlstates import NO_CONNECTION


def load_run(path: Path | str) -> RunData:
    """Read a results file (``.pgtr``) into the columns compare works on."""
    results = read_results(path)
    header: dict[str, Any] = results.header
    target = header.get("target") or {}
    rec = results.records
    strings = tuple("" if s is None else s for s in results.strings)
    start = rec["start_us"]
    service = rec["service_us"]
    duration_s = float((start + service).max() - start.min()) / 1000000.0 if len(rec) else 0.0
    version = target.get("server_version")
    host, port = target.get("host", "?"), target.get("port")
    label = f"PostgreSQL {version or '?'} at {host}{f':{port}' if port else ''}"
    return RunData(
        path=str(path),
        label=label,
        workload_id=str(header.get("workload_id", "")),
        server_version=version,
        max_speed=bool(header.get("max_speed", False)),
        speed=float(header.get("speed") or 0.0),
        duration_s=duration_s,
        sessions=strings,
        fingerprints=strings,
        sqlstates=strings,
        session=rec["session"],
        index=rec["index"],
        fingerprint=rec["fingerprint"],
        intended_us=rec["intended_us"],
        start_us=start,
        service_us=service,
        rows=rec["rows"],
        sqlstate=rec["sqlstate"],
        original_sqlstate=rec["original_sqlstate"],
        workload_path=header.get("workload_path"),
        header=header,
        sync_wait_us=rec["sync_wait_us"],
        completeness=completeness(results),
    )


def completeness(results: Results) -> Completeness:
    """What of the workload a results file covers: the replay report's own counts
    (``completed``, connect failures, statements not sent, sync timeouts)."""
    final = results.final
    not_sent = results.string_id(NO_CONNECTION)
    unsent = 0 if not_sent is None else int((results.records["sqlstate"] == not_sent).sum())

    def total(key: str) -> int:
        return sum(sum((s.get(key) or {}).values()) for s in results.summaries)

    return Completeness(
        finished=bool(final and final.get("completed")),
        killed=final is None,
        connect_failures=total("connect_failures"),
        unsent=unsent,
        sync_timeouts=total("sync_timeouts"),
        statements=len(results),
    )


def run_identity(run: RunData) -> tuple[object, ...]:
    """What names one replay: its workload, target and start time (a copy of a results
    file has the same identity as the original)."""
    header = run.header
    return (run.workload_id, header.get("start_time"), repr(header.get("target")))


def same_target(a: RunData, b: RunData) -> str | None:
    """``host:port/database`` when both runs name the same target, else None."""

    def where(run: RunData) -> tuple[object, object, object]:
        target = run.header.get("target")
        t = target if isinstance(target, dict) else {}
        return (t.get("host"), t.get("port"), t.get("database"))

    wa, wb = where(a), where(b)
    if wa != wb or wa[0] is None:
        return None
    return f"{wa[0]}:{wa[1]}/{wa[2]}"


def find_workload(run: RunData, explicit: Path | None) -> Workload | None:
    """The workload a run replayed: ``explicit``, else the path its header names."""
    candidates = [explicit] if explicit is not None else []
    if run.workload_path:
        candidates.append(Path(run.workload_path))
    for path in candidates:
        if path is not None and path.is_file():
            workload = read_workload(path)
            check_workload_id(workload, run.workload_id, str(run.path))
            return workload
    return None


def representative_statements(
    workload: Workload, fingerprints: Iterable[str]
) -> dict[str, Statement]:
    """The first replayable statement of each wanted class (one pass over the file)."""
    wanted = set(fingerprints)
    found: dict[str, Statement] = {}
    for stmt in workload.statements():
        if stmt.fingerprint in wanted and stmt.fingerprint not in found and stmt.kind.replayable:
            found[stmt.fingerprint] = stmt
            if len(found) == len(wanted):
                break
    return found


def attach_sql(comparison: Comparison, workload: Workload) -> Comparison:
    """Fill in the SQL text of the examples shown for divergences (one pass)."""
    keys = {(ex.session, ex.index) for d in comparison.errors for ex in d.examples}
    keys |= {(ex.session, ex.index) for m in comparison.rows for ex in m.examples}
    if not keys:
        return comparison
    sql: dict[tuple[str, int], str] = {}
    for stmt in workload.statements():
        key = (stmt.session, stmt.seq)
        if key in keys:
            text = stmt.sql
            if stmt.params:
                text += "  -- params: " + ", ".join("NULL" if p is None else p for p in stmt.params)
            sql[key] = text
            if len(sql) == len(keys):
                break

    def fill(ex: Example) -> Example:
        return dataclasses.replace(ex, sql=sql.get((ex.session, ex.index)))

    return dataclasses.replace(
        comparison,
        errors=tuple(
            dataclasses.replace(d, examples=tuple(map(fill, d.examples))) for d in comparison.errors
        ),
        rows=tuple(
            dataclasses.replace(m, examples=tuple(map(fill, m.examples))) for m in comparison.rows
        ),
    )
