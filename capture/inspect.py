"""Statistics about a workload file, for ``pgtraffic inspect`` (pure over the records).

Every figure comes from the records the file holds (the class counts and logged
times included, counted over the statements), not from the header's counts; the
reader refuses a file whose records do not match its header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from capture.records import QueryClass, Session
from capture.workload import Workload


@dataclass(frozen=True, slots=True)
class RateBucket:
    """Statements started in ``[start_s, start_s + width_s)`` after capture start."""

    start_s: float
    width_s: float
    statements: int

    @property
    def per_second(self) -> float:
        return self.statements / self.width_s if self.width_s > 0 else float(self.statements)


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    capture_start: str
    capture_end: str
    duration_s: float
    statements: int
    sessions: int
    peak_concurrent_sessions: int
    failed_statements: int
    kinds: dict[str, int]
    rate: tuple[RateBucket, ...]
    top_by_count: tuple[QueryClass, ...]
    top_by_time: tuple[QueryClass, ...]
    classes: int
    source_server_version: str | None
    notices: tuple[str, ...] = ()
    """What could not be checked (a workload written before content digests)."""

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SHAPED}
        out["statements_per_second"] = [
            {**asdict(b), "per_second": round(b.per_second, 3)} for b in self.rate
        ]
        out["top_by_count"] = [_class_json(c) for c in self.top_by_count]
        out["top_by_time"] = [_class_json(c) for c in self.top_by_time]
        return out


_SHAPED = frozenset({"rate", "top_by_count", "top_by_time"})
"""Fields of :class:`WorkloadStats` whose JSON is not their value as it is."""


def _class_json(cls: QueryClass) -> dict[str, Any]:
    out = cls.to_json()
    out.pop("type")
    return out


def peak_concurrency(intervals: Iterable[tuple[int, int]]) -> int:
    """The largest number of [start, end] intervals open at one instant."""
    points: list[tuple[int, int]] = []
    for start, end in intervals:
        points.append((start, 1))
        points.append((max(start, end), -1))
    points.sort()  # at equal times, ends (-1) before starts (+1)
    peak = current = 0
    for _, delta in points:
        current += delta
        peak = max(peak, current)
    return peak


def session_intervals(
    sessions: Mapping[str, Session], spans: Mapping[str, tuple[int, int]], end_us: int
) -> list[tuple[int, int]]:
    """Each session's life: its connect/disconnect, else its first/last statement.

    A session without a logged connection is taken to start with its first
    statement; without a logged disconnection, to end with its last statement
    (or with the capture when it ran no statement).
    """
    out = []
    for sid, session in sessions.items():
        first, last = spans.get(sid, (None, None))
        start = session.connect_us if session.connect_us is not None else first
        stop = session.disconnect_us if session.disconnect_us is not None else last
        if start is None:
            start = 0
        if stop is None:
            stop = end_us
        out.append((start, stop))
    return out


class RateCounter:
    """Statements per second over a capture, in equal slices of at least one second."""

    def __init__(self, duration_us: int, buckets: int = 20) -> None:
        duration_us = max(duration_us, 1)
        self.width_us = max(1_000_000, -(-duration_us // buckets))
        self.counts = [0] * max(1, -(-duration_us // self.width_us))

    def add(self, offset_us: int) -> None:
        index = min(len(self.counts) - 1, max(0, offset_us // self.width_us))
        self.counts[index] += 1

    def buckets(self) -> list[RateBucket]:
        width = self.width_us / 1e6
        return [
            RateBucket(start_s=i * width, width_s=width, statements=n)
            for i, n in enumerate(self.counts)
        ]


def rate_buckets(
    offsets_us: Iterable[int], duration_us: int, buckets: int = 20
) -> list[RateBucket]:
    """Statements per second over the capture, in ``buckets`` equal slices (>= 1 s each)."""
    counter = RateCounter(duration_us, buckets)
    for offset in offsets_us:
        counter.add(offset)
    return counter.buckets()


def workload_stats(workload: Workload, *, top: int = 10, buckets: int = 20) -> WorkloadStats:
    """Read the statements once and summarize the workload."""
    spans: dict[str, tuple[int, int]] = {}
    rate = RateCounter(workload.duration_us, buckets)
    statements = 0
    last_offset = 0
    kinds: dict[str, int] = {}
    per_class: dict[str, list[Any]] = {}
    """fingerprint: [count, total duration, first SQL]"""
    failed = 0
    for obj in workload.statement_dicts():
        offset = obj["offset_us"]
        rate.add(offset)
        statements += 1
        last_offset = offset
        sid = obj["session"]
        span = spans.get(sid)
        spans[sid] = (offset, offset) if span is None else (span[0], offset)
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        entry = per_class.setdefault(obj["fingerprint"], [0, 0, obj.get("sql", "")])
        entry[0] += 1
        entry[1] += int(obj.get("duration_us") or 0)
        if obj.get("sqlstate"):
            failed += 1
    duration_us = max(workload.duration_us, last_offset)
    intervals = session_intervals(workload.sessions, spans, duration_us)
    classes = _held_classes(workload.classes, per_class)
    by_count = sorted(classes, key=lambda c: (-c.count, c.fingerprint))[:top]
    by_time = sorted(
        (c for c in classes if c.total_duration_us > 0),
        key=lambda c: (-c.total_duration_us, c.fingerprint),
    )[:top]
    return WorkloadStats(
        capture_start=workload.header.capture_start,
        capture_end=workload.header.capture_end,
        duration_s=duration_us / 1e6,
        statements=statements,
        sessions=len(workload.sessions),
        peak_concurrent_sessions=peak_concurrency(intervals),
        failed_statements=failed,
        kinds=kinds,
        rate=tuple(rate.buckets()),
        top_by_count=tuple(by_count),
        top_by_time=tuple(by_time),
        classes=len(classes),
        source_server_version=workload.header.source_server_version,
        notices=workload.notices,
    )


def _held_classes(
    listed: Mapping[str, QueryClass], per_class: Mapping[str, list[Any]]
) -> list[QueryClass]:
    """The query classes of the statements held, with the counts and times held: a
    listed class keeps its normalized text, an unlisted one shows its first SQL."""
    out = []
    for fingerprint, (count, total, sql) in per_class.items():
        known = listed.get(fingerprint)
        if known is None:
            known = QueryClass(fingerprint, str(sql), parsed=False, count=0)
        out.append(replace(known, count=count, total_duration_us=total))
    return out
