"""Running a capacity sweep: reset, replay, sample, measure; step after step.

Each step is a full replay of the workload at one load: a speed (time compression)
and a session scale-up factor, from the same starting state
(:mod:`pgtraffic.capacity.reset`), while
:class:`~pgtraffic.capacity.sampler.ActivitySampler` watches the server and
pg_stat_statements is read before and after (:mod:`pgtraffic.capacity.statements`).
The step's workload is made once per scale factor in the output folder
(:mod:`pgtraffic.capacity.scale`, then :mod:`pgtraffic.capacity.order` for the
causal order a step keeps). Its results file is kept in the output folder;
:func:`step_from_results` turns it into a :class:`~pgtraffic.capacity.model.Step`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from capture.workload import read_workload
from pgtraffic.capacity.model import (
    ClassStep,
    Knee,
    Slo,
    Step,
    UntilKnee,
    find_knee,
    judge_step,
    knee_from_json,
)
from pgtraffic.capacity.order import keep_ddl_order
from pgtraffic.capacity.progress import (
    Done,
    Load,
    SweepProgress,
    bisection_left,
    bisection_loads,
    estimate_left,
)
from pgtraffic.capacity.reset import Reset
from pgtraffic.capacity.sampler import ActivitySampler, database_counters, deltas
from pgtraffic.capacity.scale import Scale, ScaleMode, scale_workload
from pgtraffic.capacity.statements import availability, snapshot, top_deltas
from pgtraffic.errors import UsageError
from replay.report import build_report
from replay.results import Results, read_results
from replay.runner import ReplaySettings, replay_workload
from replay.sqlstates import NO_CONNECTION
from replay.sync import SyncMode

SYNC_DDL = "ddl"
"""capacity's --sync value that keeps only the connections' and global commits' order."""

TOP_CLASSES = 8


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """Which loads to try: a list of speeds, doubling and bisection to the knee
    (``until_knee``), or a list of session scale-up factors at one speed (``scales``)."""

    speeds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    until_knee: UntilKnee | None = None
    scales: tuple[int, ...] = (1,)
    scale_mode: ScaleMode = ScaleMode.READS

    def __post_init__(self) -> None:
        if len(self.scales) > 1 and (self.until_knee is not None or len(self.speeds) > 1):
            raise UsageError(
                "a sweep varies either the speed or the --scale, not both",
                hint="--scale 1,2,4 --speeds 2 (steps by scale at speed 2), or --scale 4 "
                "--until-knee (4 runs of every session at each speed)",
            )

    def next_load(self, done: Sequence[tuple[Load, bool]]) -> Load | None:
        if len(self.scales) > 1:
            k = len(done)
            return Load(self.speeds[0], self.scales[k]) if k < len(self.scales) else None
        if self.until_knee is not None:
            speed = self.until_knee.next_speed([(load.speed, ok) for load, ok in done])
            return None if speed is None else Load(speed, self.scales[0])
        k = len(done)
        return Load(self.speeds[k], self.scales[0]) if k < len(self.speeds) else None

    @property
    def total(self) -> int | None:
        """How many steps at most (None: unknown in advance)."""
        if len(self.scales) > 1:
            return len(self.scales)
        return None if self.until_knee is not None else len(self.speeds)

    def remaining(self, done: Sequence[tuple[Load, bool]]) -> tuple[list[Load], bool]:
        """The loads still to run after ``done`` (not counting the next one if it is
        under way), and whether that list is complete (False: --until-knee doubling)."""
        if self.until_knee is None:
            loads = [Load(s, self.scales[0]) for s in self.speeds]
            if len(self.scales) > 1:
                loads = [Load(self.speeds[0], k) for k in self.scales]
            return loads[len(done) :], True
        tried = [(load.speed, ok) for load, ok in done]
        if bisection_left(self.until_knee, tried) is None:
            upcoming = self.next_load(done)
            return ([upcoming] if upcoming else []), False
        return bisection_loads(self.until_knee, tried, self.scales[0]), True


@dataclass(frozen=True, slots=True)
class Sweep:
    """A finished (or interrupted) sweep: its steps and the knee."""

    workload: str
    target: dict[str, Any]
    sync: str
    reset: str
    slos: tuple[str, ...]
    """The objectives, described (Slo.describe)."""
    steps: tuple[Step, ...]
    knee: Knee
    complete: bool = True
    """False when the sweep stopped early (Ctrl-C or a failed reset)."""
    scale: str = "no scale-up"
    sync_reason: str = ""
    """Why this --sync mode (capacity's default is chosen by measurement: docs/capacity.md)."""
    statements_note: str | None = None
    """Why the steps have no pg_stat_statements figures (None: they have them)."""
    name: str = ""
    """The run's name in reports: its output folder's name."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": 1,
            "name": self.name,
            "workload": self.workload,
            "target": self.target,
            "sync": self.sync,
            "sync_reason": self.sync_reason,
            "reset": self.reset,
            "scale": self.scale,
            "slos": list(self.slos),
            "complete": self.complete,
            "pg_stat_statements": self.statements_note or "installed",
            "steps": [s.to_json() for s in self.steps],
            "knee": self.knee.to_json(),
        }


FORMAT = "pgtraffic-capacity"


def load_sweep(path: Path) -> Sweep:
    """A saved sweep: DIR/capacity.json of an earlier ``pgtraffic capacity -o DIR``."""
    file = path / "capacity.json" if path.is_dir() else path
    hint = "give the -o DIR of a pgtraffic capacity run (it holds capacity.json)"
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{file}: no such file", hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{file}: not a readable capacity.json ({exc})", hint=hint) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsageError(f"{file} is not a pgtraffic capacity file", hint=hint)
    if obj.get("format_version") != 1:
        raise UsageError(
            f"{file} has capacity format version {obj.get('format_version')}; this pgtraffic "
            "reads version 1",
            hint="use the pgtraffic version that wrote it",
        )
    steps = tuple(Step.from_json(s) for s in obj.get("steps", ()))
    note = obj.get("pg_stat_statements")
    return Sweep(
        workload=str(obj.get("workload", "")),
        target=dict(obj.get("target") or {}),
        sync=str(obj.get("sync", "")),
        reset=str(obj.get("reset", "")),
        slos=tuple(str(s) for s in obj.get("slos", ())),
        steps=steps,
        knee=knee_from_json(obj.get("knee") or {}),
        complete=bool(obj.get("complete", True)),
        scale=str(obj.get("scale", "no scale-up")),
        sync_reason=str(obj.get("sync_reason", "")),
        statements_note=None if note in (None, "installed") else str(note),
        name=file.parent.name,
    )


ProgressCallback = Callable[[SweepProgress], None]
"""Told before each step starts and after it ends."""


@dataclass(frozen=True, slots=True)
class SweepSetup:
    """Everything a sweep needs besides the workload and the target."""

    plan: SweepPlan
    settings: ReplaySettings
    reset: Reset
    slos: Sequence[Slo] = ()
    sync_reason: str = ""
    ddl_order: bool = False
    """Keep only the connections' and the global commits' order (capacity's --sync ddl:
    :mod:`pgtraffic.capacity.order`); the steps replay with --sync objects."""


def run_sweep(
    workload_path: Path,
    dsn: str,
    out_dir: Path,
    *,
    plan: SweepPlan,
    settings: ReplaySettings,
    reset: Reset,
    slos: Sequence[Slo] = (),
    on_step: ProgressCallback | None = None,
    sync_reason: str = "",
    ddl_order: bool = False,
) -> Sweep:
    """Run the sweep's steps in order; see the module docstring."""
    if ddl_order:
        settings = dataclasses.replace(settings, sync=SyncMode.OBJECTS)
    setup = SweepSetup(plan, settings, reset, slos, sync_reason, ddl_order)
    runner = _SweepRun(workload_path, dsn, out_dir, setup, on_step)
    return runner.run()


class _SweepRun:
    """The state of one sweep while it runs (steps so far, scaled workloads made)."""

    def __init__(
        self,
        workload_path: Path,
        dsn: str,
        out_dir: Path,
        setup: SweepSetup,
        on_step: ProgressCallback | None,
    ) -> None:
        self.workload = read_workload(workload_path)
        self.dsn = dsn
        self.out_dir = out_dir
        self.setup = setup
        self.on_step = on_step
        self.steps: list[Step] = []
        self.done: list[tuple[Load, bool]] = []
        self.history: list[Done] = []
        self.target: dict[str, Any] = {}
        self.scaled: dict[int, Path] = {}
        self.workload_path = workload_path
        self.statements_note: str | None = None

    def saved(self, complete: bool) -> Sweep:
        """The sweep so far, written to DIR/capacity.json (also when it stops early)."""
        setup = self.setup
        sweep = Sweep(
            workload=str(self.workload.path),
            target=self.target,
            sync=SYNC_DDL if setup.ddl_order else setup.settings.sync.value,
            reset=setup.reset.mode.value,
            slos=tuple(s.describe() for s in setup.slos),
            steps=tuple(self.steps),
            knee=find_knee(self.steps, setup.slos),
            complete=complete,
            scale=_scale_text(setup.plan),
            sync_reason=setup.sync_reason,
            statements_note=self.statements_note,
            name=self.out_dir.name,
        )
        (self.out_dir / "capacity.json").write_text(json.dumps(sweep.to_json(), indent=1))
        return sweep

    def run(self) -> Sweep:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.statements_note = _statements_note(self.dsn)
        reset = self.setup.reset
        complete = False
        prepare_s = reset.prepare()
        try:
            while (load := self.setup.plan.next_load(self.done)) is not None:
                index = len(self.steps)
                self._tell(index + 1, load, None)
                reset_s = reset.restore() if index else prepare_s
                started = time.monotonic()
                step = self._one_step(index, load)
                step = dataclasses.replace(step, reset_s=reset_s)
                intended = self.workload.duration_us / 1e6 / load.speed
                self.history.append(Done(intended, time.monotonic() - started, reset_s))
                self.steps.append(step)
                self.done.append((load, not judge_step(step, self.setup.slos)))
                self._tell(index + 1, load, step)
            complete = True
        finally:
            if complete:
                reset.finish()
            sweep = self.saved(complete)
        return sweep

    def _tell(self, number: int, load: Load, step: Step | None) -> None:
        if self.on_step is None:
            return
        remaining, exact = self.setup.plan.remaining(self.done)
        running = 0.0
        if step is None:  # the first of the remaining loads is the one starting now
            remaining = remaining[1:]
            running = self.workload.duration_us / 1e6 / load.speed
        seconds = estimate_left(
            self.workload.duration_us / 1e6, self.history, remaining, running=running
        )
        self.on_step(
            SweepProgress(
                number, self.setup.plan.total, load, step, left_s=seconds, lower_bound=not exact
            )
        )

    def _workload_for(self, scale: int) -> Path:
        """The workload of a step at ``scale`` (scaled, and with only the global order
        kept under --sync ddl): made once per factor, in the output folder."""
        path = self.scaled.get(scale)
        if path is not None:
            return path
        path = self.workload_path
        mode = self.setup.plan.scale_mode
        name = f"workload-x{scale}-{mode.value}" if scale > 1 else "workload"
        if scale > 1:
            path = self.out_dir / f"{name}.pgtw"
            scale_workload(self.workload, path, Scale(scale, mode))
        if self.setup.settings.sync is not SyncMode.NONE:
            order = "ddl" if self.setup.ddl_order else self.setup.settings.sync.value
            ordered = self.out_dir / f"{name}-{order}-order.pgtw"
            keep_ddl_order(path, ordered, ddl_only=self.setup.ddl_order)
            if path != self.workload_path:
                path.unlink()  # the scaled file, now reordered into ``ordered``
            path = ordered
        self.scaled[scale] = path
        return path

    def _one_step(self, index: int, load: Load) -> Step:
        settings = self.setup.settings
        reset = self.setup.reset
        scale = f"-x{load.scale}" if load.scale > 1 else ""
        results_path = self.out_dir / f"step{index + 1}-speed{load.speed:g}{scale}.pgtr"
        workload_path = self._workload_for(load.scale)
        before = database_counters(self.dsn, reset.databases)
        statements = None if self.statements_note else snapshot(self.dsn, reset.databases)
        with ActivitySampler(self.dsn) as sampler:
            run = replay_workload(
                workload_path,
                results_path,
                self.dsn,
                dataclasses.replace(settings, speed=load.speed, max_speed=False),
            )
        after = database_counters(self.dsn, reset.databases)
        top = (
            ()
            if statements is None
            else top_deltas(statements, snapshot(self.dsn, reset.databases))
        )
        step = step_from_results(read_results(results_path), index, load.speed)
        self.target = run.target.to_json()
        return dataclasses.replace(
            step,
            scale=load.scale,
            waits=sampler.shares(),
            active_backends=sum(sampler.counts.values()) / sampler.samples
            if sampler.samples
            else 0.0,
            database=deltas(before, after),
            top_statements=top,
        )


def _scale_text(plan: SweepPlan) -> str:
    if len(plan.scales) > 1:
        return "steps by " + Scale(2, plan.scale_mode).describe().replace("x2 ", "", 1)
    return Scale(plan.scales[0], plan.scale_mode).describe()


def _statements_note(dsn: str) -> str | None:
    try:
        return availability(dsn)
    except psycopg.Error as exc:
        return f"pg_stat_statements not read: {exc}".strip()


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
        # starts against intended starts: a statement that starts late shows the target
        # (or the statement before it in its session) fell behind; the last one's own
        # service time is not part of the span either side
        actual_span = float(sent["start_us"].max() - recs["intended_us"].min()) / 1e6
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
