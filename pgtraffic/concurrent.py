"""Replays onto several servers at the same time: rehearse's ``--concurrent`` rounds.

Each replay runs in a process of its own (two replayers in one process would share
its interpreter lock, and wait for it in the middle of timing a statement). Both
prepare, reach their target and check it on their own; then they wait for each other
at a barrier and start their schedules together, so whatever the machine does during
a round (a neighbour's burst, the page cache, the kernel) falls on both sides at once.

Their progress comes back through a queue and is shown as one bar; an error on one
side stops the other at the barrier (or lets it finish, once both started) and is
raised here.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pgtraffic.errors import ReplayError
from replay.connection import TargetInfo
from replay.runner import (
    FinalSummary,
    LiveStatus,
    ReplayPlan,
    ReplaySettings,
    replay_workload,
    spawned,
)

__all__ = ["SideRun", "StartRecord", "replay_together"]

BARRIER_TIMEOUT_S = 600.0
"""How long a side that is ready waits for the other to be ready (preparing a workload
of millions of statements takes minutes)."""

STATUS_EVERY_S = 0.25
"""A side sends its progress at most this often."""


class Reporter(Protocol):
    """The part of :class:`pgtraffic.rehearsal.Reporter` a concurrent replay uses."""

    def note(self, text: str) -> None: ...

    def replay_progress(self, label: str, total: int) -> Callable[[LiveStatus], None] | None: ...


@dataclass(frozen=True, slots=True)
class SideRun:
    """One side of a concurrent replay: its label, target and results file."""

    label: str
    dsn: str
    results: Path


@dataclass(frozen=True, slots=True)
class StartRecord:
    """When a side passed the barrier (``time.time()``, seconds) and what it found."""

    label: str
    started: float
    description: str
    statements: int


def _side_entry(
    side: SideRun,
    index: int,
    workload: Path,
    settings: ReplaySettings,
    barrier: Any,
    messages: Any,
) -> None:
    """A side's process: replay, waiting for the other side(s) before the first send."""
    last = [0.0]

    def on_target(target: TargetInfo, plan: ReplayPlan) -> None:
        text = (
            f"{side.label}: PostgreSQL {target.server_version} at {target.host}:{target.port}, "
            f"{plan.replayable:,} statements"
        )
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        messages.put(("start", index, StartRecord(side.label, time.time(), text, plan.replayable)))

    def on_status(status: LiveStatus) -> None:
        now = time.monotonic()
        if now - last[0] < STATUS_EVERY_S and not status.done:
            return
        last[0] = now
        snap = {
            "statements": status.statements,
            "errors": status.errors,
            "replayed_capture_us": status.replayed_capture_us,
            "last_lag_us": status.last_lag_us,
            "open_connections": status.open_connections,
            "done": status.done,
        }
        with contextlib.suppress(Exception):
            messages.put_nowait(("status", index, snap))

    try:
        run = replay_workload(
            workload, side.results, side.dsn, settings, on_target=on_target, on_status=on_status
        )
    except threading.BrokenBarrierError:
        messages.put(("stopped", index, None))  # the other side failed before the start
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        messages.put(("error", index, _picklable(exc, side.label)))
    else:
        messages.put(("done", index, run.final))


def _picklable(exc: BaseException, label: str) -> BaseException:
    """``exc`` itself when it survives the trip to the parent, else a ReplayError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return ReplayError(f"the {label} replay failed: {type(exc).__name__}: {exc}")
    return exc


class _Parent:
    """The parent's side of a concurrent replay: reads the sides' messages."""

    def __init__(self, sides: Sequence[SideRun], reporter: Reporter, procs: list[Any]) -> None:
        self.sides = sides
        self.reporter = reporter
        self.procs = procs
        self.starts: dict[int, StartRecord] = {}
        self.finals: dict[int, FinalSummary] = {}
        self.errors: list[BaseException] = []
        self.stopped: set[int] = set()
        self.status = LiveStatus()
        self.progress: Callable[[LiveStatus], None] | None = None

    def finished(self) -> bool:
        return len(self.finals) + len(self.errors) + len(self.stopped) >= len(self.sides)

    def handle(self, kind: str, index: int, payload: Any) -> None:
        if kind == "start":
            self.starts[index] = payload
            if len(self.starts) == len(self.sides):
                self._all_started()
        elif kind == "status":
            self.status.update(index, payload)
            if self.progress is not None:
                self.progress(self.status)
        elif kind == "done":
            self.finals[index] = payload
        elif kind == "error":
            self.errors.append(payload)
        else:
            self.stopped.add(index)

    def _all_started(self) -> None:
        records = [self.starts[i] for i in range(len(self.sides))]
        for record in records:
            self.reporter.note(record.description)
        spread = max(r.started for r in records) - min(r.started for r in records)
        self.reporter.note(f"all {len(records)} replays started within {spread * 1000:.0f} ms")
        labels = " and ".join(s.label for s in self.sides)
        self.progress = self.reporter.replay_progress(labels, sum(r.statements for r in records))

    def run(self, messages: Any) -> None:
        while not self.finished():
            try:
                kind, index, payload = messages.get(timeout=0.5)
            except queue_mod.Empty:
                if all(not p.is_alive() for p in self.procs):
                    self._drain(messages)
                    break
                continue
            self.handle(kind, index, payload)

    def _drain(self, messages: Any) -> None:
        with contextlib.suppress(queue_mod.Empty):
            while True:
                self.handle(*messages.get(timeout=0.2))


def replay_together(
    workload: Path,
    sides: Sequence[SideRun],
    settings: ReplaySettings,
    reporter: Reporter,
) -> tuple[dict[str, FinalSummary], tuple[StartRecord, ...]]:
    """Replay ``workload`` onto every side at once; the final summaries by label, and
    when each side started.

    Raises the first side's error (after every side has stopped); a side that died
    without a word is a ReplayError.
    """
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    barrier = ctx.Barrier(len(sides))
    procs = [
        ctx.Process(
            target=_side_entry,
            args=(side, k, workload, settings, barrier, messages),
            name=f"pgtraffic-{side.label}",
        )
        for k, side in enumerate(sides)
    ]
    parent = _Parent(sides, reporter, procs)
    with spawned(procs, join_timeout_s=60):
        parent.run(messages)
    if parent.errors:
        raise parent.errors[0]
    missing = [s.label for k, s in enumerate(sides) if k not in parent.finals]
    if missing:
        raise ReplayError(
            f"the {' and '.join(missing)} replay process ended without a result",
            hint="run without --concurrent to see its error",
        )
    finals = {sides[k].label: final for k, final in parent.finals.items()}
    return finals, tuple(parent.starts[k] for k in sorted(parent.starts))
