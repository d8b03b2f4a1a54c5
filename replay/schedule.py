"""When each statement should start: pure arithmetic over capture offsets.

A statement captured at ``offset_us`` has an *intended start* of
``(offset_us - idle_before(offset_us)) / speed`` microseconds after the replay
began, where ``idle_before`` is the total length of the skipped idle stretches
before it (``--jump-idle``; none otherwise). ``--max-speed`` has no intended
start: everything is due at once, and lag is measured against replay start.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from capture.errors import UsageError


@dataclass(frozen=True, slots=True)
class Schedule:
    """Maps capture offsets (µs) to intended replay times (µs after replay start)."""

    speed: float | None = 1.0
    """Replay speed factor; None means as fast as possible (``--max-speed``)."""
    gaps: tuple[tuple[int, int], ...] = ()
    """Skipped idle stretches ``(start_us, end_us)`` of capture time, sorted, disjoint."""
    origin_us: int = 0
    """The capture offset that replay time 0 stands for."""

    def __post_init__(self) -> None:
        if self.speed is not None and not self.speed > 0:
            raise UsageError(
                f"--speed must be a positive number, not {self.speed}",
                hint="use --speed 2 for twice as fast, --speed 0.5 for half, or --max-speed",
            )

    @property
    def max_speed(self) -> bool:
        return self.speed is None

    def skipped_before(self, offset_us: int) -> int:
        """Total skipped capture time before ``offset_us``."""
        total = 0
        for start, end in self.gaps:
            if start >= offset_us:
                break
            total += min(end, offset_us) - start
        return total

    def capture_time(self, offset_us: int) -> int:
        """Capture time that replay has to cover to reach ``offset_us`` (gaps removed)."""
        return max(0, offset_us - self.origin_us - self.skipped_before(offset_us))

    def intended_us(self, offset_us: int) -> int:
        """When a statement captured at ``offset_us`` is due (0 under --max-speed)."""
        if self.speed is None:
            return 0
        return round(self.capture_time(offset_us) / self.speed)

    def replay_duration_us(self, capture_end_us: int) -> int:
        """How long the replay of ``[origin, capture_end]`` should take at this speed."""
        return self.intended_us(capture_end_us)


def idle_gaps(
    intervals: Iterable[tuple[int, int]], *, min_gap_us: int = 1_000_000, keep_us: int = 100_000
) -> tuple[tuple[int, int], ...]:
    """Stretches longer than ``min_gap_us`` in which no interval is active.

    ``intervals`` are ``(start_us, end_us)`` activity spans (sessions). Each returned
    gap leaves ``keep_us`` of the idle time in place, so sessions that ended and
    began around it stay in order.
    """
    spans = sorted((s, max(s, e)) for s, e in intervals)
    gaps: list[tuple[int, int]] = []
    covered_until: int | None = None
    for start, end in spans:
        if covered_until is not None and start - covered_until > min_gap_us:
            gaps.append((covered_until + keep_us, start))
        covered_until = end if covered_until is None else max(covered_until, end)
    return tuple(gaps)


def peak_concurrency(intervals: Iterable[tuple[int, int]]) -> int:
    """Largest number of simultaneously active ``(start_us, end_us)`` intervals."""
    events: list[tuple[int, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((max(start, end), -1))
    events.sort()  # at equal times an end (-1) sorts before a start (+1)
    active = peak = 0
    for _, delta in events:
        active += delta
        peak = max(peak, active)
    return peak


def session_worker(session_id: str, workers: int) -> int:
    """Which of ``workers`` processes replays ``session_id`` (stable across processes)."""
    if workers <= 1:
        return 0
    return zlib.crc32(session_id.encode()) % workers
