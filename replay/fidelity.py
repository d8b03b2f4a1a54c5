"""Did a replay keep to its schedule? The one judgement the replay report and compare share.

A statement's lag (send time minus intended start) has two causes. It may wait
behind its own session's previous statement, still running because the target was
slower than the original server: the numbers then still describe the server, only
the captured pace was not reproduced. Or the replayer itself sent it late (a busy
event loop, too few ``--workers``): then the latencies describe the replayer as much
as the server. :func:`replayer_lag_us` separates the two; :func:`judge_fidelity` turns
them into a :class:`Fidelity` verdict. Pure functions over arrays, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from replay.sqlstates import NO_CONNECTION as NOT_SENT_SQLSTATE

# NOT_SENT_SQLSTATE: statements never sent (their session had no connection).

IntArray = npt.NDArray[Any]


class FidelityVerdict(enum.StrEnum):
    ON_SCHEDULE = "on schedule"
    MAX_SPEED = "maximum speed"
    TARGET_BEHIND = "target behind"
    """Statements waited behind their session's slow previous statement."""
    REPLAYER_BEHIND = "replayer behind"
    """The replayer itself sent statements late: its numbers are not the server's."""


@dataclass(frozen=True, slots=True)
class FidelityLimits:
    """When a run counts as behind schedule."""

    max_replayer_lag_p99_ms: float = 10.0
    """Replayer's own lag p99 above this: the run measured the replayer, not the server."""
    max_lag_p99_ms: float = 100.0
    """Lag p99 above this (with the replayer on time): the target did not keep the pace."""


@dataclass(frozen=True, slots=True)
class Fidelity:
    """The verdict on one run, with the lag figures it rests on (milliseconds)."""

    verdict: FidelityVerdict
    lag_p50_ms: float
    lag_p95_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    replayer_lag_p99_ms: float
    replayer_lag_max_ms: float
    limits: FidelityLimits

    @property
    def faithful(self) -> bool:
        """Whether the run's latencies describe the server (not the replayer)."""
        return self.verdict is not FidelityVerdict.REPLAYER_BEHIND

    @property
    def note(self) -> str:
        """One sentence for a report."""
        if self.verdict is FidelityVerdict.MAX_SPEED:
            return "replayed at maximum speed: latencies are measured under saturation, not timing"
        if self.verdict is FidelityVerdict.REPLAYER_BEHIND:
            return (
                f"the replayer itself was {self.replayer_lag_p99_ms:.0f} ms late at p99 (limit "
                f"{self.limits.max_replayer_lag_p99_ms:g} ms): it could not keep up, so timings "
                "describe the replayer as much as the server; replay again with a lower --speed "
                "or more --workers"
            )
        if self.verdict is FidelityVerdict.TARGET_BEHIND:
            return (
                f"lag p99 is {self.lag_p99_ms:.0f} ms (limit {self.limits.max_lag_p99_ms:g} ms), "
                "mostly statements waiting behind their session's previous, slow statement: "
                "the target did not keep up with the captured pace"
            )
        return (
            f"on schedule (lag p99 {self.lag_p99_ms:.1f} ms, "
            f"replayer's own {self.replayer_lag_p99_ms:.1f} ms)"
        )

    @property
    def warning(self) -> str | None:
        """The note when the run was behind schedule, else None."""
        behind = (FidelityVerdict.REPLAYER_BEHIND, FidelityVerdict.TARGET_BEHIND)
        return self.note if self.verdict in behind else None


def replayer_lag_us(recs: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Per statement: send time minus the moment it could have been sent at the earliest,
    the later of its intended start and the end of its session's previous statement.

    ``recs`` needs the fields ``session``, ``index``, ``intended_us``, ``start_us`` and
    ``service_us`` (a results file's records, or any structured array with them).
    """
    return _replayer_lag(
        recs["session"], recs["index"], recs["intended_us"], recs["start_us"], recs["service_us"]
    )


def _replayer_lag(
    session: IntArray, index: IntArray, intended: IntArray, start: IntArray, service: IntArray
) -> npt.NDArray[np.int64]:
    if session.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((index, session))
    sess = session[order]
    begin = start[order].astype(np.int64)
    end = begin + service[order].astype(np.int64)
    ready = intended[order].astype(np.int64).copy()
    same = sess[1:] == sess[:-1]
    prev_end = np.where(same, end[:-1], np.iinfo(np.int64).min)
    ready[1:] = np.maximum(ready[1:], prev_end)
    return begin - ready


def sent_mask(sqlstate: IntArray, vocabulary: Sequence[str | None]) -> npt.NDArray[np.bool_]:
    """Statements actually sent: all but those recorded as :data:`NOT_SENT_SQLSTATE`."""
    ids = [i for i, s in enumerate(vocabulary) if s == NOT_SENT_SQLSTATE]
    if not ids:
        return np.ones(sqlstate.shape, dtype=np.bool_)
    return ~np.isin(sqlstate, ids)


def _ms(values: npt.NDArray[np.int64], q: float) -> float:
    return float(np.percentile(values, q)) / 1000.0 if values.size else 0.0


def judge_fidelity(
    *,
    session: IntArray,
    index: IntArray,
    intended_us: IntArray,
    start_us: IntArray,
    service_us: IntArray,
    sent: npt.NDArray[np.bool_] | None = None,
    max_speed: bool,
    limits: FidelityLimits | None = None,
    sync_wait_us: IntArray | None = None,
) -> Fidelity:
    """Judge one run from its statement columns (``sent``: which to count; default all).
    ``sync_wait_us``: time spent waiting for other sessions' commits, not the replayer's."""
    lim = limits or FidelityLimits()
    keep = np.ones(session.shape, dtype=np.bool_) if sent is None else sent
    columns = (session[keep], index[keep], intended_us[keep], start_us[keep], service_us[keep])
    lag = (columns[3].astype(np.int64) - columns[2].astype(np.int64)).astype(np.int64)
    own = _replayer_lag(*columns)
    if sync_wait_us is not None:  # _replayer_lag's order: by session, then index
        own = own - sync_wait_us[keep][np.lexsort((columns[1], columns[0]))].astype(np.int64)
    p50, p95, p99 = (_ms(lag, q) for q in (50, 95, 99))
    own_p99 = _ms(own, 99)
    if max_speed:
        verdict = FidelityVerdict.MAX_SPEED
    elif own_p99 > lim.max_replayer_lag_p99_ms:
        verdict = FidelityVerdict.REPLAYER_BEHIND
    elif p99 > lim.max_lag_p99_ms:
        verdict = FidelityVerdict.TARGET_BEHIND
    else:
        verdict = FidelityVerdict.ON_SCHEDULE
    return Fidelity(
        verdict=verdict,
        lag_p50_ms=p50,
        lag_p95_ms=p95,
        lag_p99_ms=p99,
        lag_max_ms=float(lag.max()) / 1000.0 if lag.size else 0.0,
        replayer_lag_p99_ms=own_p99,
        replayer_lag_max_ms=float(own.max()) / 1000.0 if own.size else 0.0,
        limits=lim,
    )


def judge_records(
    recs: npt.NDArray[Any],
    strings: Sequence[str | None],
    *,
    max_speed: bool,
    limits: FidelityLimits | None = None,
) -> Fidelity:
    """:func:`judge_fidelity` over a results file's records and string table."""
    return judge_fidelity(
        session=recs["session"],
        index=recs["index"],
        intended_us=recs["intended_us"],
        start_us=recs["start_us"],
        service_us=recs["service_us"],
        sent=sent_mask(recs["sqlstate"], strings),
        max_speed=max_speed,
        limits=limits,
        sync_wait_us=recs["sync_wait_us"],
    )
