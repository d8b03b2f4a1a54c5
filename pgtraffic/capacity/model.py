"""The records of a capacity sweep, and the pure judgements made over them.

A sweep replays one workload at increasing offered load (time compression,
``--speed``); each replay is a *step*. A step is *sustained* when the target kept
up (achieved at least 95 % of the offered statements/s), met every SLO and raised
no error the capture did not have. The *knee* is the highest sustained step; what
broke first is what went wrong at the next step. Everything here is pure: steps
in, verdicts out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capture.errors import UsageError
from capture.fields import field_dict

KEEP_UP = 0.95
"""A step is sustained only when it achieved at least this share of its offered load."""


class Metric(enum.StrEnum):
    P50 = "p50"
    P95 = "p95"
    P99 = "p99"


_SLO = re.compile(
    r"^(?:(?P<cls>[0-9a-fA-F]{4,}):)?(?P<metric>p50|p95|p99)\s*<\s*(?P<ms>[\d.]+)\s*ms$"
)


@dataclass(frozen=True, slots=True)
class Slo:
    """A latency objective: ``p99 < 50 ms`` overall, or for one query class."""

    metric: Metric
    limit_ms: float
    fingerprint: str | None = None
    """A query-class fingerprint prefix; None for all statements together."""

    @classmethod
    def parse(cls, text: str) -> Slo:
        """``p99<50ms`` (overall) or ``FINGERPRINT:p95<20ms`` (one class)."""
        match = _SLO.match(text.strip())
        if match is None:
            raise UsageError(
                f"--slo {text!r} is not an objective",
                hint="write METRIC<LIMITms, e.g. --slo 'p99<50ms', or for one class "
                "--slo 'FINGERPRINT:p95<20ms' (fingerprints are in pgtraffic inspect)",
            )
        return cls(
            metric=Metric(match["metric"]),
            limit_ms=float(match["ms"]),
            fingerprint=match["cls"].lower() if match["cls"] else None,
        )

    def describe(self) -> str:
        where = f"class {self.fingerprint}" if self.fingerprint else "all statements"
        return f"{self.metric.value} < {self.limit_ms:g} ms ({where})"


@dataclass(frozen=True, slots=True)
class ClassStep:
    """One query class at one step."""

    fingerprint: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def value(self, metric: Metric) -> float:
        return {Metric.P50: self.p50_ms, Metric.P95: self.p95_ms, Metric.P99: self.p99_ms}[metric]


@dataclass(frozen=True, slots=True)
class StatementDelta:
    """One statement of ``pg_stat_statements`` over one step (after minus before)."""

    query: str
    calls: int
    total_exec_ms: float
    shared_blks_read: int

    @property
    def mean_exec_ms(self) -> float:
        return self.total_exec_ms / self.calls if self.calls else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**field_dict(self), "mean_exec_ms": self.mean_exec_ms}


@dataclass(frozen=True, slots=True)
class Step:
    """What one replay at one offered load did, and what the server did meanwhile."""

    index: int
    speed: float
    offered_statements_per_s: float
    achieved_statements_per_s: float
    statements: int
    run_time_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    lag_p99_ms: float
    replayer_lag_p99_ms: float
    errors: Mapping[str, int] = field(default_factory=dict)
    """Failed statements by SQLSTATE."""
    new_errors: Mapping[str, int] = field(default_factory=dict)
    """Failed now but succeeded in the capture, by SQLSTATE."""
    not_sent: int = 0
    connect_failures: Mapping[str, int] = field(default_factory=dict)
    """Connections refused or failed, by SQLSTATE (53300: max_connections reached)."""
    sync_wait_s: float = 0.0
    sync_timeouts: int = 0
    reset_s: float = 0.0
    """Time spent restoring the starting state before this step (not in run_time_s)."""
    waits: Mapping[str, float] = field(default_factory=dict)
    """Share of sampled active backends per wait event type ("CPU" when not waiting)."""
    database: Mapping[str, int] = field(default_factory=dict)
    """pg_stat_database deltas over the step (commits, rollbacks, deadlocks, ...)."""
    classes: tuple[ClassStep, ...] = ()
    scale: int = 1
    """Runs of every session (``--scale``): 1 is the workload as captured."""
    top_statements: tuple[StatementDelta, ...] = ()
    """pg_stat_statements over the step, most total execution time first (when installed)."""
    active_backends: float = 0.0
    """Client backends active on the target, on average over the samples of the step."""

    def value(self, metric: Metric) -> float:
        return {Metric.P50: self.p50_ms, Metric.P95: self.p95_ms, Metric.P99: self.p99_ms}[metric]

    @property
    def load_text(self) -> str:
        """The offered load in words: ``speed 2`` or ``speed 1 x4 sessions``."""
        return f"speed {self.speed:g}" + (f" x{self.scale} sessions" if self.scale > 1 else "")

    @property
    def kept_up(self) -> float:
        """Achieved over offered statements/s."""
        if self.offered_statements_per_s <= 0:
            return 1.0
        return self.achieved_statements_per_s / self.offered_statements_per_s

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if name == "classes":
                value = [field_dict(c) for c in value]
            elif name == "top_statements":
                value = [t.to_json() for t in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Step:
        fields = dict(obj)
        fields["classes"] = tuple(ClassStep(**c) for c in obj.get("classes", ()))
        fields["top_statements"] = tuple(
            StatementDelta(**{k: v for k, v in t.items() if k != "mean_exec_ms"})
            for t in obj.get("top_statements", ())
        )
        return cls(**{k: v for k, v in fields.items() if k in cls.__slots__})


class Problem(enum.StrEnum):
    FELL_BEHIND = "fell behind"
    SLO = "SLO missed"
    NEW_ERRORS = "new errors"
    NOT_SENT = "statements not sent"
    REFUSED = "connections refused"
    REPLAYER = "replayer limited"


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason a step was not sustained."""

    problem: Problem
    detail: str


REPLAYER_LAG_LIMIT_MS = 10.0
"""The replayer's own lag p99 above this means the replayer, not the server, was the limit."""


def judge_step(step: Step, slos: Sequence[Slo]) -> tuple[Finding, ...]:
    """Why ``step`` was not sustained (empty when it was).

    The replayer's own lag does not fail a step by itself (a step that kept up, met
    its SLOs and added no errors was sustained, however late pgtraffic sent some
    statements); when the step failed and the replayer lagged, the failure is marked
    as the replayer's, not the server's."""
    found: list[Finding] = []
    if step.kept_up < KEEP_UP:
        found.append(
            Finding(
                Problem.FELL_BEHIND,
                f"achieved {step.achieved_statements_per_s:,.0f} of "
                f"{step.offered_statements_per_s:,.0f} statements/s offered "
                f"({step.kept_up:.0%})",
            )
        )
    for slo in slos:
        found.extend(_slo_findings(step, slo))
    if step.new_errors:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(step.new_errors.items()))
        found.append(Finding(Problem.NEW_ERRORS, f"errors the capture did not have: {listed}"))
    if step.connect_failures:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(step.connect_failures.items()))
        why = (
            ": the target ran out of connections (max_connections)"
            if "53300" in step.connect_failures
            else ""
        )
        found.append(Finding(Problem.REFUSED, f"connections failed: {listed}{why}"))
    if step.not_sent:
        found.append(Finding(Problem.NOT_SENT, f"{step.not_sent} statements could not be sent"))
    if found and step.replayer_lag_p99_ms > REPLAYER_LAG_LIMIT_MS:
        found.insert(
            0,
            Finding(
                Problem.REPLAYER,
                f"the replayer's own lag p99 was {step.replayer_lag_p99_ms:.1f} ms: pgtraffic, "
                "not the server, may have been the limit here (add --workers)",
            ),
        )
    return tuple(found)


def _slo_findings(step: Step, slo: Slo) -> list[Finding]:
    if slo.fingerprint is None:
        value = step.value(slo.metric)
        if value >= slo.limit_ms:
            return [Finding(Problem.SLO, f"{slo.describe()}: was {value:.2f} ms")]
        return []
    out = []
    for cls in step.classes:
        if cls.fingerprint.startswith(slo.fingerprint) and cls.value(slo.metric) >= slo.limit_ms:
            out.append(
                Finding(Problem.SLO, f"{slo.describe()}: was {cls.value(slo.metric):.2f} ms")
            )
    return out


@dataclass(frozen=True, slots=True)
class Knee:
    """The highest sustained step and what broke at the next one."""

    step: int | None
    """Index of the highest sustained step; None when not even the first was."""
    achieved_statements_per_s: float | None
    speed: float | None
    reason: str
    broke: tuple[Finding, ...] = ()
    """What went wrong at the first step above the knee."""
    culprits: tuple[str, ...] = ()
    """What changed most between the knee and the next step (classes, wait events)."""
    replayer_limited: bool = False
    scale: int | None = None
    """Runs of every session at the knee step (``--scale``)."""

    def to_json(self) -> dict[str, Any]:
        return field_dict(
            self,
            broke=[{"problem": f.problem.value, "detail": f.detail} for f in self.broke],
            culprits=list(self.culprits),
        )


def knee_from_json(obj: Mapping[str, Any]) -> Knee:
    """A knee as :meth:`Knee.to_json` wrote it (for comparing saved sweeps)."""
    broke = []
    for f in obj.get("broke", ()):
        try:
            broke.append(Finding(Problem(f["problem"]), str(f["detail"])))
        except (KeyError, ValueError, TypeError):
            continue  # a problem this version does not know: its text is in the reason
    return Knee(
        step=obj.get("step"),
        achieved_statements_per_s=obj.get("achieved_statements_per_s"),
        speed=obj.get("speed"),
        reason=str(obj.get("reason", "")),
        broke=tuple(broke),
        culprits=tuple(str(c) for c in obj.get("culprits", ())),
        replayer_limited=bool(obj.get("replayer_limited", False)),
        scale=obj.get("scale"),
    )


def find_knee(steps: Sequence[Step], slos: Sequence[Slo]) -> Knee:
    """The knee of a sweep: see the module docstring."""
    ordered = sorted(steps, key=lambda s: s.offered_statements_per_s)
    verdicts = [(s, judge_step(s, slos)) for s in ordered]
    good = [s for s, problems in verdicts if not problems]
    bad = [(s, problems) for s, problems in verdicts if problems]
    if not ordered:
        return Knee(None, None, None, "no step ran")
    if not bad:
        top = ordered[-1]
        return Knee(
            top.index,
            top.achieved_statements_per_s,
            top.speed,
            f"every step was sustained, up to {top.offered_statements_per_s:,.0f} statements/s "
            "offered: the knee is beyond this sweep (try higher --speeds or --until-knee)",
            scale=top.scale,
        )
    first_bad, problems = bad[0]
    below = [s for s in good if s.offered_statements_per_s < first_bad.offered_statements_per_s]
    replayer = any(f.problem is Problem.REPLAYER for f in problems)
    if not below:
        return Knee(
            None,
            None,
            None,
            f"not even the lowest step ({first_bad.load_text}) was sustained: "
            + "; ".join(f.detail for f in problems),
            broke=problems,
            culprits=culprits(None, first_bad),
            replayer_limited=replayer,
        )
    knee = below[-1]
    reason = (
        f"sustained {knee.achieved_statements_per_s:,.0f} statements/s at {knee.load_text}; "
        f"at {first_bad.load_text}: " + "; ".join(f.detail for f in problems)
    )
    return Knee(
        knee.index,
        knee.achieved_statements_per_s,
        knee.speed,
        reason,
        broke=problems,
        culprits=culprits(knee, first_bad),
        replayer_limited=replayer,
        scale=knee.scale,
    )


def culprits(before: Step | None, after: Step, top: int = 3) -> tuple[str, ...]:
    """What grew most from ``before`` to ``after``: class latencies and wait events."""
    out: list[str] = []
    if before is not None:
        old = {c.fingerprint: c for c in before.classes}
        growth = sorted(
            (
                (c.p99_ms / old[c.fingerprint].p99_ms, c)
                for c in after.classes
                if c.fingerprint in old and old[c.fingerprint].p99_ms > 0
            ),
            key=lambda pair: -pair[0],
        )
        out += [
            f"class {c.fingerprint}: p99 {old[c.fingerprint].p99_ms:.2f} -> {c.p99_ms:.2f} ms "
            f"({ratio:.1f}x)"
            for ratio, c in growth[:top]
            if ratio >= 1.5
        ]
    waits = sorted(after.waits.items(), key=lambda kv: -kv[1])
    for name, share in waits[:top]:
        previous = before.waits.get(name, 0.0) if before is not None else 0.0
        if name != "CPU" and share >= 0.2 and share > previous + 0.1:
            out.append(f"wait event {name}: {previous:.0%} -> {share:.0%} of active backends")
    for state, n in sorted(after.new_errors.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"new errors {state}: {n}")
    for state, n in sorted(after.connect_failures.items(), key=lambda kv: -kv[1])[:top]:
        hint = " (max_connections reached)" if state == "53300" else ""
        out.append(f"connections refused {state}: {n}{hint}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class UntilKnee:
    """The steps of ``--until-knee``: double the speed until a step is not sustained, then
    bisect between the last sustained and the first failed speed to within ``precision``."""

    start: float = 1.0
    precision: float = 0.10
    max_steps: int = 12

    def next_speed(self, tried: Sequence[tuple[float, bool]]) -> float | None:
        """The next speed to try given ``(speed, sustained)`` so far; None when done."""
        if len(tried) >= self.max_steps:
            return None
        if not tried:
            return self.start
        good = [s for s, ok in tried if ok]
        bad = [s for s, ok in tried if not ok]
        if not bad:
            return max(good) * 2
        low_bad = min(bad)
        below = [s for s in good if s < low_bad]
        if not below:
            return None  # the first step already failed: nothing below to search
        high_good = max(below)
        if (low_bad - high_good) / high_good <= self.precision:
            return None
        return round((high_good + low_bad) / 2, 3)


def parse_speeds(text: str) -> tuple[float, ...]:
    """``1,2,4,8`` -> (1.0, 2.0, 4.0, 8.0), each positive, in increasing order."""
    try:
        speeds = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"--speeds {text!r} is not a list of numbers", hint="e.g. --speeds 1,2,4,8"
        ) from None
    if not speeds or any(s <= 0 for s in speeds):
        raise UsageError(f"--speeds {text!r}: every speed must be positive", hint="--speeds 1,2,4")
    return tuple(sorted(set(speeds)))


def parse_scales(text: str) -> tuple[int, ...]:
    """``1,2,4`` -> (1, 2, 4): session scale-up factors, each a whole number >= 1."""
    try:
        scales = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"--scale {text!r} is not a whole number or a list of them",
            hint="e.g. --scale 4 (every step), or --scale 1,2,4 (one step per factor)",
        ) from None
    if not scales or any(k < 1 for k in scales):
        raise UsageError(f"--scale {text!r}: every factor must be 1 or more", hint="--scale 1,2,4")
    return tuple(sorted(set(scales)))
