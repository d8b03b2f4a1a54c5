"""Which causal order a capacity step keeps (``capacity --sync ddl``, the default).

At the captured load almost every statement of a busy workload comes after the
previous commit in the log (one hot row updated by 8 clients at 300/s rarely
overlaps), so ``--sync commit`` and ``--sync objects`` replay it one commit at a
time, each waiting a round trip for the one before: measured on the hot-row
workload, they did not even sustain the captured rate, while ``--sync none`` and
pgbench itself went on to about 1.5 times it (docs/capacity.md). A write that
conflicts with an earlier one needs no such wait: the target's own row locks
order the two, as they did at the source.

So a capacity step keeps only the order that the target cannot restore by
itself: each session's own order, the connections (a session connects after the
disconnections and the global commits the log showed before it) and the *global*
commits, those whose effect reaches beyond rows: DDL, roles, databases, schemas,
functions, GRANT, DO, unknown functions, unparsable SQL (capture.effects). A
statement that is itself global still waits for every commit before it. This
module rewrites a workload's ``after_objects`` to that bound (pure over the
statements, two passes over the file), and the step is replayed with
``--sync objects``, which reads ``after_objects``: the replayer needs no change.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capture.effects import Control, Effect, classify
from capture.records import Session, Statement
from capture.workload import Workload, WorkloadWriter, read_workload


class Effects:
    """:func:`classify` once per query class."""

    def __init__(self) -> None:
        self._known: dict[str, Effect] = {}

    def __call__(self, stmt: Statement) -> Effect:
        effect = self._known.get(stmt.fingerprint)
        if effect is None:
            effect = self._known[stmt.fingerprint] = classify(stmt.sql)
        return effect


def global_commits(statements: Iterable[Statement], effects: Effects) -> list[int]:
    """The commit numbers whose transaction did something global, ascending.

    A session's transaction is global when any statement of it since its last
    commit or rollback may write globally (conservative: a commit counted global
    wrongly only adds a wait)."""
    found: list[int] = []
    dirty: dict[str, bool] = {}
    for stmt in statements:
        effect = effects(stmt)
        is_global = dirty.get(stmt.session, False) or effect.writes_global
        if stmt.commit and is_global:
            found.append(stmt.commit)
        ends = stmt.commit or effect.control in (Control.COMMIT, Control.ROLLBACK)
        dirty[stmt.session] = False if ends else is_global
    found.sort()
    return found


def global_bound(after: int, commits: list[int]) -> int:
    """The latest global commit at or before ``after`` (0: none)."""
    k = bisect.bisect_right(commits, after)
    return commits[k - 1] if k else 0


def idle_sessions_wait_for_nobody(sessions: Iterable[Session]) -> list[Session]:
    """Sessions that ran no statement give up their disconnection number.

    Such a session created nothing a later one could need; the replayer (as of this
    version) closes its connection only when it has dispatched the whole workload,
    so a later connection waiting for its disconnection stalled for most of a step
    (measured: 3 s of a 4 s hot-row step). A number no session holds is done from the
    start (replay/sync.py), so nothing waits for it; the connection is still opened
    and closed at its captured times."""
    return [
        dataclasses.replace(s, disconnect_order=0) if not s.statements and s.disconnect_order else s
        for s in sessions
    ]


def ddl_order(
    statements: Iterable[Statement], commits: list[int], effects: Effects
) -> Iterator[Statement]:
    """The statements with ``after_objects`` bounded by the global commits only."""
    for stmt in statements:
        bound = stmt.after if effects(stmt).is_global else global_bound(stmt.after, commits)
        yield (
            stmt if bound == stmt.after_objects else dataclasses.replace(stmt, after_objects=bound)
        )


@dataclass(frozen=True, slots=True)
class Reordered:
    """What :func:`keep_ddl_order` wrote."""

    path: Path
    global_commits: int
    statements_waiting: int
    """Statements that still wait for some commit."""


def keep_ddl_order(source: Workload | Path, out: Path, *, ddl_only: bool = True) -> Reordered:
    """Write ``source`` to ``out`` for a capacity step: with only the global order kept
    (``ddl_only``, see the module docstring), and in any case with
    :func:`idle_sessions_wait_for_nobody`."""
    workload = source if isinstance(source, Workload) else read_workload(source)
    effects = Effects()
    commits = global_commits(workload.statements(), effects) if ddl_only else []
    writer = WorkloadWriter(out)
    waiting = 0
    statements = workload.statements()
    try:
        for stmt in ddl_order(statements, commits, effects) if ddl_only else statements:
            waiting += stmt.after_objects > 0
            writer.write(stmt)
    except BaseException:
        writer.abort()
        raise
    header = workload.header
    writer.close(
        capture_start=workload.capture_start,
        capture_end=workload.capture_start.fromisoformat(header.capture_end),
        sessions=idle_sessions_wait_for_nobody(workload.sessions.values()),
        classes=workload.classes.values(),
        source_server_version=header.source_server_version,
        sources=header.sources,
        filters=header.filters,
        counts={**header.counts, "sync_global_commits": len(commits)},
        sync=header.sync,
    )
    return Reordered(out, len(commits), waiting)
