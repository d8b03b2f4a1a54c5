"""Running a capacity sweep: reset, replay, sample, measure; step after step.

Each step is a full replay of the workload at one speed (time compression), from
the same starting state (:mod:`pgtraffic.capacity.reset`), while
:class:`~pgtraffic.capacity.sampler.ActivitySampler` watches the server. Its results
file is kept in the output folder; :func:`step_from_results` turns it into a
:class:`~pgtraffic.capacity.model.Step`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capture.workload import read_workload
from pgtraffic.capacity.model import (
    ClassStep,
    Knee,
    Slo,
    Step,
    UntilKnee,
    find_knee,
    judge_step,
)
from pgtraffic.capacity.reset import Reset
from pgtraffic.capacity.sampler import ActivitySampler, database_counters, deltas
from replay.report import build_report
from replay.results import Results, read_results
from replay.runner import ReplaySettings, replay_workload
from replay.sqlstates import NO_CONNECTION

TOP_CLASSES = 8


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """Which speeds to try: a fixed list, or doubling and bisection to the knee."""

    speeds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    until_knee: UntilKnee | None = None

    def next_speed(self, done: Sequence[tuple[float, bool]]) -> float | None:
        if self.until_knee is not None:
            return self.until_knee.next_speed(done)
        return self.speeds[len(done)] if len(done) < len(self.speeds) else None

    @property
    def total(self) -> int | None:
        """How many steps at most (None: unknown in advance)."""
        return None if self.until_knee is not None else len(self.speeds)


@dataclass(frozen=True, slots=True)
class Sweep:
    """A finished (or interrupted) sweep: its steps and the knee."""

    workload: str
    target: dict[str, Any]
    sync: str
    reset: str
    slos: tuple[Slo, ...]
    steps: tuple[Step, ...]
    knee: Knee
    complete: bool = True
    """False when the sweep stopped early (Ctrl-C or a failed reset)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "pgtraffic-capacity",
            "format_version": 1,
            "workload": self.workload,
            "target": self.target,
            "sync": self.sync,
            "reset": self.reset,
            "slos": [s.describe() for s in self.slos],
            "complete": self.complete,
            "steps": [s.to_json() for s in self.steps],
            "knee": self.knee.to_json(),
        }


StepCallback = Callable[[int, int | None, float, Step | None], None]
"""Called as (step number, total or None, speed, the step when it is done)."""


def run_sweep(
    workload_path: Path,
    dsn: str,
    out_dir: Path,
    *,
    plan: SweepPlan,
    settings: ReplaySettings,
    reset: Reset,
    slos: Sequence[Slo] = (),
    on_step: StepCallback | None = None,
) -> Sweep:
    """Run the sweep's steps in order; see the module docstring."""
    workload = read_workload(workload_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    done: list[tuple[float, bool]] = []
    target: dict[str, Any] = {}
    complete = False

    def saved() -> Sweep:
        """The sweep so far, written to DIR/capacity.json (also when it stops early)."""
        sweep = Sweep(
            workload=str(workload.path),
            target=target,
            sync=settings.sync.value,
            reset=reset.mode.value,
            slos=tuple(slos),
            steps=tuple(steps),
            knee=find_knee(steps, slos),
            complete=complete,
        )
        (out_dir / "capacity.json").write_text(json.dumps(sweep.to_json(), indent=1))
        return sweep

    prepare_s = reset.prepare()
    try:
        while (speed := plan.next_speed(done)) is not None:
            index = len(steps)
            if on_step is not None:
                on_step(index + 1, plan.total, speed, None)
            reset_s = reset.restore() if index else prepare_s
            step, target = _one_step(workload_path, dsn, out_dir, index, speed, settings, reset)
            step = dataclasses.replace(step, reset_s=reset_s)
            steps.append(step)
            done.append((speed, not judge_step(step, slos)))
            if on_step is not None:
                on_step(index + 1, plan.total, speed, step)
        complete = True
    finally:
        if complete:
            reset.finish()
        sweep = saved()
    return sweep


def _one_step(
    workload_path: Path,
    dsn: str,
    out_dir: Path,
    index: int,
    speed: float,
    settings: ReplaySettings,
    reset: Reset,
) -> tuple[Step, dict[str, Any]]:
    results_path = out_dir / f"step{index + 1}-speed{speed:g}.pgtr"
    before = database_counters(dsn, reset.databases)
    with ActivitySampler(dsn) as sampler:
        run = replay_workload(
            workload_path,
            results_path,
            dsn,
            dataclasses.replace(settings, speed=speed, max_speed=False),
        )
    after = database_counters(dsn, reset.databases)
    step = step_from_results(read_results(results_path), index, speed)
    step = dataclasses.replace(step, waits=sampler.shares(), database=deltas(before, after))
    return step, run.target.to_json()


def step_from_results(results: Results, index: int, speed: float) -> Step:
    """The measurements of one step from its results file (pure, over the records)."""
    report = build_report(results)
    recs = results.records
    not_sent_id = results.string_id(NO_CONNECTION)
    sent = recs if not_sent_id is None else recs[recs["sqlstate"] != not_sent_id]
    n = len(recs)
    offered = achieved = 0.0
    if len(sent):
        intended_span = float(recs["intended_us"].max() - recs["intended_us"].min()) / 1e6
        ends = sent["start_us"] + sent["service_us"]
        actual_span = float(ends.max() - recs["intended_us"].min()) / 1e6
        offered = n / intended_span if intended_span > 0 else 0.0
        achieved = len(sent) / actual_span if actual_span > 0 else 0.0
    sync_wait = recs["sync_wait_us"] if "sync_wait_us" in (recs.dtype.names or ()) else None
    return Step(
        index=index,
        speed=speed,
        offered_statements_per_s=offered,
        achieved_statements_per_s=achieved,
        statements=n,
        run_time_s=report.run_time_s or 0.0,
        p50_ms=report.latency_p50_ms or 0.0,
        p95_ms=report.latency_p95_ms or 0.0,
        p99_ms=report.latency_p99_ms or 0.0,
        lag_p99_ms=report.lag_p99_ms or 0.0,
        replayer_lag_p99_ms=report.replayer_lag_p99_ms or 0.0,
        errors=dict(report.errors),
        new_errors=dict(report.divergence.new_errors),
        not_sent=n - len(sent),
        connect_failures=dict(report.connect_failures),
        sync_wait_s=float(sync_wait.sum()) / 1e6 if sync_wait is not None else 0.0,
        sync_timeouts=sum(_timeouts(s) for s in results.summaries),
        classes=_classes(results, sent),
    )


def _timeouts(summary: dict[str, Any]) -> int:
    """Sync waits that timed out in one worker (counted per class there)."""
    value = summary.get("sync_timeouts") or 0
    return sum(int(v) for v in value.values()) if isinstance(value, dict) else int(value)


def _classes(results: Results, sent: np.ndarray[Any, Any]) -> tuple[ClassStep, ...]:
    if not len(sent):
        return ()
    ids, counts = np.unique(sent["fingerprint"], return_counts=True)
    order = np.argsort(-counts)[:TOP_CLASSES]
    out = []
    for k in order:
        service = sent["service_us"][sent["fingerprint"] == ids[k]].astype(np.float64) / 1000
        p50, p95, p99 = np.percentile(service, [50, 95, 99])
        out.append(
            ClassStep(
                fingerprint=str(results.strings[int(ids[k])] or ""),
                count=int(counts[k]),
                p50_ms=float(p50),
                p95_ms=float(p95),
                p99_ms=float(p99),
            )
        )
    return tuple(out)
