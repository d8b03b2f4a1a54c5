"""Session scale-up (``capacity --scale K``): each session runs K times, on K connections.

A pure transformation of a workload, so the replayer needs no change: the scaled
workload is an ordinary workload file (written to the sweep's folder) in which every
session has K - 1 copies besides itself. A copy

- has a derived session id (``<id>+c<k>``) and so its own connection;
- starts ``k / K`` of the session's typical gap later (the median time between two
  of its statements, at most :data:`MAX_GAP_US`; :data:`DEFAULT_GAP_US` for a session
  with fewer than two statements), so the K runs of a session interleave instead of
  arriving together;
- carries, with :attr:`ScaleMode.READS` (the default), only the statements whose
  query class cannot write (:func:`capture.effects.classify`: SELECT without
  ``FOR UPDATE``, SHOW, SET, BEGIN/COMMIT, ...), like Oracle Database Replay's
  query-only scale-up; with :attr:`ScaleMode.WRITES`, every statement: the copies
  then repeat the original's writes on the same rows (an INSERT of the same key fails
  with 23505, an UPDATE of the same row queues on its row lock): a heavier write load
  on the same data, not more users with data of their own;
- keeps the commit clock consistent: it never owns a commit or a disconnection
  number (those stay on the original, so nobody waits for a copy), and waits on the
  same commits and disconnections as its original (``after``, ``after_objects``,
  ``connect_after``, ``after_disconnects`` unchanged).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import heapq
import itertools
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from capture.effects import classify
from capture.records import QueryClass, Session, Statement
from capture.workload import Workload, WorkloadWriter, read_workload

MAX_GAP_US = 1_000_000
"""A copy is shifted by at most this much (sessions with long think times)."""
DEFAULT_GAP_US = 10_000
"""The gap used for a session with fewer than two statements (or all at once)."""
COPY_MARK = "+c"


class ScaleMode(enum.StrEnum):
    """What the copies of a session carry."""

    READS = "reads"
    """Only statements that cannot write (query-only scale-up)."""
    WRITES = "writes"
    """Every statement: the copies repeat the original's writes."""


@dataclass(frozen=True, slots=True)
class Scale:
    """``factor`` runs of every session (1: the workload unchanged)."""

    factor: int = 1
    mode: ScaleMode = ScaleMode.READS

    def describe(self) -> str:
        if self.factor == 1:
            return "no scale-up"
        what = "read-only statements" if self.mode is ScaleMode.READS else "every statement"
        return f"x{self.factor} sessions (copies carry {what})"


def copy_id(session: str, k: int) -> str:
    """The session id of the k-th copy (k >= 1) of ``session``."""
    return f"{session}{COPY_MARK}{k}"


def typical_gap_us(offsets: Iterable[int]) -> int:
    """The median gap between a session's consecutive statement starts, bounded."""
    ordered = sorted(offsets)
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b > a]
    if not gaps:
        return DEFAULT_GAP_US
    return min(int(statistics.median(gaps)), MAX_GAP_US)


def shift_us(gap_us: int, k: int, factor: int) -> int:
    """How much later copy ``k`` of ``factor`` runs starts than the original."""
    return gap_us * k // factor


def copy_statement(stmt: Statement, k: int, seq: int, shift: int) -> Statement:
    """The k-th copy of ``stmt``: its own session, later, owning no commit."""
    return dataclasses.replace(
        stmt, session=copy_id(stmt.session, k), seq=seq, offset_us=stmt.offset_us + shift, commit=0
    )


def copy_session(session: Session, k: int, shift: int, statements: int) -> Session:
    """The k-th copy of ``session``: waits as the original does, owns no disconnection."""

    def later(us: int | None) -> int | None:
        return None if us is None else us + shift

    return dataclasses.replace(
        session,
        id=copy_id(session.id, k),
        connect_us=later(session.connect_us),
        disconnect_us=later(session.disconnect_us),
        statements=statements,
        disconnect_order=0,
    )


class CopyFilter:
    """Whether a statement goes into copies; asks :func:`classify` once per class."""

    def __init__(self, mode: ScaleMode) -> None:
        self.mode = mode
        self._writes: dict[str, bool] = {}
        self.skipped = 0
        """Statements left out of copies (they may write, or cannot be replayed)."""

    def __call__(self, stmt: Statement) -> bool:
        keep = stmt.kind.replayable and (self.mode is ScaleMode.WRITES or not self._may_write(stmt))
        if not keep:
            self.skipped += 1
        return keep

    def _may_write(self, stmt: Statement) -> bool:
        known = self._writes.get(stmt.fingerprint)
        if known is None:
            known = self._writes[stmt.fingerprint] = classify(stmt.sql).may_write
        return known


def scaled_statements(
    statements: Iterable[Statement],
    gaps: Mapping[str, int],
    factor: int,
    keep: Callable[[Statement], bool],
) -> Iterator[Statement]:
    """The originals and their copies, in offset order (pure, streaming).

    A copy is never earlier than its original and at most ``max(gaps)`` later, so a
    heap holds only the statements of that window.
    """
    heap: list[tuple[int, int, Statement]] = []
    seqs: Counter[tuple[str, int]] = Counter()
    order = 0
    for stmt in statements:
        while heap and heap[0][0] <= stmt.offset_us:
            yield heapq.heappop(heap)[2]
        heapq.heappush(heap, (stmt.offset_us, order, stmt))
        order += 1
        if factor < 2 or not keep(stmt):
            continue
        gap = gaps.get(stmt.session, DEFAULT_GAP_US)
        for k in range(1, factor):
            seq = seqs[(stmt.session, k)]
            seqs[(stmt.session, k)] += 1
            copy = copy_statement(stmt, k, seq, shift_us(gap, k, factor))
            heapq.heappush(heap, (copy.offset_us, order, copy))
            order += 1
    while heap:
        yield heapq.heappop(heap)[2]


@dataclass(frozen=True, slots=True)
class ScaledWorkload:
    """What :func:`scale_workload` wrote."""

    path: Path
    sessions: int
    copies: int
    """Copy sessions added."""
    copied_statements: int
    skipped_statements: int
    """Statements of the original left out of its copies (writes under READS)."""


def scale_workload(source: Workload | Path, out: Path, scale: Scale) -> ScaledWorkload:
    """Write ``source`` scaled up by ``scale`` to ``out`` (two passes over the file)."""
    workload = source if isinstance(source, Workload) else read_workload(source)
    offsets: dict[str, list[int]] = {}
    for obj in workload.statement_dicts():
        offsets.setdefault(str(obj["session"]), []).append(int(obj["offset_us"]))
    gaps = {sid: typical_gap_us(v) for sid, v in offsets.items()}
    keep = CopyFilter(scale.mode)
    writer = WorkloadWriter(out)
    per_copy: Counter[str] = Counter()
    per_class: Counter[str] = Counter()
    try:
        for stmt in scaled_statements(workload.statements(), gaps, scale.factor, keep):
            writer.write(stmt)
            per_class[stmt.fingerprint] += 1
            if stmt.session not in workload.sessions:
                per_copy[stmt.session] += 1
    except BaseException:
        writer.abort()
        raise
    sessions = list(workload.sessions.values())
    for session in workload.sessions.values():
        gap = gaps.get(session.id, DEFAULT_GAP_US)
        for k in range(1, scale.factor):
            n = per_copy.get(copy_id(session.id, k), 0)
            if n:
                sessions.append(copy_session(session, k, shift_us(gap, k, scale.factor), n))
    # the statements moved and multiplied: the spans capture wrote no longer hold
    # (and the header's kind counts are the original's), so replay scans the file
    sessions = [dataclasses.replace(s, first_us=None, last_us=None) for s in sessions]
    copied = sum(per_copy.values())
    header = workload.header
    writer.close(
        capture_start=workload.capture_start,
        capture_end=dt.datetime.fromisoformat(header.capture_end)
        + dt.timedelta(microseconds=max(gaps.values(), default=0)),
        sessions=sessions,
        classes=[_recount(c, per_class[c.fingerprint]) for c in workload.classes.values()],
        source_server_version=header.source_server_version,
        sources=header.sources,
        filters=header.filters,
        counts={
            **{k: v for k, v in header.counts.items() if k not in ("statements", "sessions")},
            "scale_factor": scale.factor,
            "scale_copied_statements": copied,
            "scale_skipped_statements": keep.skipped,
        },
        sync=header.sync,
    )
    return ScaledWorkload(
        path=out,
        sessions=len(sessions),
        copies=len(sessions) - len(workload.sessions),
        copied_statements=copied,
        skipped_statements=keep.skipped,
    )


def _recount(cls: QueryClass, count: int) -> QueryClass:
    if not cls.count or count == cls.count:
        return cls
    per = cls.total_duration_us // cls.count
    return dataclasses.replace(cls, count=count, total_duration_us=per * count)
