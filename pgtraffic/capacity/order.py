"""Which causal order a capacity step keeps (``capacity --sync ddl``, the default).

At the captured load almost every statement of a busy workload comes after the
previous commit in the log (one hot row updated by 8 clients at 300/s rarely
overlaps), so ``--sync commit`` and ``--sync objects`` replay it one commit at a
time, each waiting a round trip for the one before: measured on the hot-row
workload, they did not even sustain the captured rate, while ``--sync none`` and
this mode went on to about 1.2 times it, and pgbench itself (docs/capacity.md). A write that
conflicts with an earlier one needs no such wait: the target's own row locks
order the two, as they did at the source.

So a capacity step keeps only the order that the target cannot restore by
itself: each session's own order, the connections (a session connects after the
disconnections and the global commits the log showed before it) and the commits
that changed more than rows: DDL of any kind (CREATE/ALTER/DROP of tables and
indexes too), roles, databases, schemas, functions, GRANT, DO, unknown functions,
unparsable SQL (:data:`DATA_STATEMENTS` lists what counts as rows). A statement
that itself changes the schema still waits for every commit before it. This
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

import pglast
from pglast import ast

from capture.effects import Control, Effect, classify
from capture.records import Session, Statement
from capture.workload import Workload, WorkloadWriter, read_workload

DATA_STATEMENTS = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.CopyStmt,
    ast.ExplainStmt,
    ast.TransactionStmt,
    ast.VariableSetStmt,
    ast.VariableShowStmt,
    ast.DeclareCursorStmt,
    ast.FetchStmt,
    ast.ClosePortalStmt,
    ast.PrepareStmt,
    ast.DeallocateStmt,
    ast.DiscardStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.NotifyStmt,
    ast.LockStmt,
    ast.TruncateStmt,
    ast.VacuumStmt,
    ast.CheckPointStmt,
)
"""Statements that read or change rows (or the session), not the schema."""


@dataclass(frozen=True, slots=True)
class Ordered:
    """What decides a statement's place in capacity's order."""

    effect: Effect
    schema: bool
    """It changes the schema or beyond (DDL, roles, GRANT, DO, unparsable SQL...):
    later statements wait for its commit, and it waits for every commit before it."""


def _changes_schema(sql: str, effect: Effect) -> bool:
    if effect.is_global:
        return True
    try:
        raw = pglast.parse_sql(sql)
    except Exception:  # pglast raises ParseError, and a few others on odd input
        return True
    return any(item.stmt is not None and not isinstance(item.stmt, DATA_STATEMENTS) for item in raw)


class Effects:
    """What :class:`Ordered` says of a statement, worked out once per query class."""

    def __init__(self) -> None:
        self._known: dict[str, Ordered] = {}

    def __call__(self, stmt: Statement) -> Ordered:
        known = self._known.get(stmt.fingerprint)
        if known is None:
            effect = classify(stmt.sql)
            known = self._known[stmt.fingerprint] = Ordered(
                effect, _changes_schema(stmt.sql, effect)
            )
        return known


def global_commits(statements: Iterable[Statement], effects: Effects) -> list[int]:
    """The commit numbers whose transaction changed the schema or beyond, ascending.

    A session's transaction counts when any statement of it since its last commit
    or rollback changed the schema or may write globally (conservative: a commit
    counted wrongly only adds a wait)."""
    found: list[int] = []
    dirty: dict[str, bool] = {}
    for stmt in statements:
        known = effects(stmt)
        is_global = dirty.get(stmt.session, False) or known.schema or known.effect.writes_global
        if stmt.commit and is_global:
            found.append(stmt.commit)
        ends = stmt.commit or known.effect.control in (Control.COMMIT, Control.ROLLBACK)
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
        bound = stmt.after if effects(stmt).schema else global_bound(stmt.after, commits)
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
