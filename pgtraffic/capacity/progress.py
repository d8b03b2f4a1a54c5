"""Progress of a whole sweep: step k of n, and the time left (pure).

A step lasts about the workload's intended duration at its speed, times how much
longer than intended the steps so far took (connecting, the last statements, a
target that fell behind), plus a reset as long as the ones so far. With fixed
``--speeds``/``--scale`` lists the steps left are known; with ``--until-knee`` they
are known once a step has failed (the bisection left to do), and before that only
the next step is: the estimate is then a lower bound, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pgtraffic.capacity.model import Step, UntilKnee


@dataclass(frozen=True, slots=True)
class Load:
    """The offered load of one step: time compression and session scale-up."""

    speed: float
    scale: int = 1

    def describe(self) -> str:
        return f"speed {self.speed:g}" + (f" x{self.scale} sessions" if self.scale > 1 else "")


@dataclass(frozen=True, slots=True)
class Done:
    """How long one finished step took, against what was intended."""

    intended_s: float
    wall_s: float
    reset_s: float


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """What the sweep is doing: told before each step starts and after it ends."""

    step: int
    """1-based number of the step starting or just done."""
    total: int | None
    """Steps in the sweep; None while --until-knee is still doubling."""
    load: Load
    done: Step | None = None
    """The step's measurements once it is done; None when it is starting."""
    left_s: float | None = None
    """Estimated seconds until the sweep ends (None before anything is known)."""
    lower_bound: bool = False
    """``left_s`` counts only the steps known so far (--until-knee before the knee)."""

    def describe(self) -> str:
        of = f"/{self.total}" if self.total else ""
        text = f"step {self.step}{of}: {self.load.describe()}"
        if self.left_s is not None:
            text += f" ({'at least ' if self.lower_bound else ''}{_duration(self.left_s)} left)"
        return text


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_left(
    workload_s: float, history: Sequence[Done], remaining: Sequence[Load], *, running: float = 0.0
) -> float:
    """Seconds left: ``remaining`` steps at their speeds, scaled by the overrun so far.

    ``running`` is the intended seconds of a step under way (counted from now as whole).
    """
    intended = sum(d.intended_s for d in history)
    overrun = sum(d.wall_s for d in history) / intended if intended > 0 else 1.0
    reset = sum(d.reset_s for d in history) / len(history) if history else 0.0
    ahead = running + sum(workload_s / load.speed for load in remaining)
    return ahead * max(overrun, 1.0) + reset * len(remaining)


def bisection_left(until: UntilKnee, tried: Sequence[tuple[float, bool]]) -> int | None:
    """Steps --until-knee still has to run after ``tried``; None while it is doubling."""
    good = [s for s, ok in tried if ok]
    bad = [s for s, ok in tried if not ok]
    if not bad:
        return None
    below = [s for s in good if s < min(bad)]
    if not below:
        return 0
    gap = (min(bad) - max(below)) / max(below)
    steps = 0
    while gap > until.precision:
        gap /= 2
        steps += 1
    return min(steps, max(0, until.max_steps - len(tried)))


def bisection_loads(
    until: UntilKnee, tried: Sequence[tuple[float, bool]], scale: int
) -> list[Load]:
    """Loads to expect from the bisection left (each near the middle of the interval)."""
    left = bisection_left(until, tried)
    if not left:
        return []
    bad = min(s for s, ok in tried if not ok)
    good = max(s for s, ok in tried if ok and s < bad)
    middle = math.sqrt(good * bad)
    return [Load(middle, scale)] * left
