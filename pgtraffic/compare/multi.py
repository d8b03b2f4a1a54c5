"""Round locations of every class from several results files per side.

The statements of one workload are the same in every replay, so each class's
location per round is taken over the *same* statements: those that succeeded in
every round on both sides (a statement that failed once would otherwise move its
class's location in that round only). See :mod:`pgtraffic.compare.rounds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pgtraffic.compare.model import IntArray, RunData
from pgtraffic.compare.rounds import location


def _keys(run: RunData, sessions: dict[str, int], width: int) -> IntArray:
    table = np.array([sessions.setdefault(s, len(sessions)) for s in run.sessions], np.int64)
    ids = table[run.session] if run.session.size else run.session.astype(np.int64)
    return ids * width + run.index.astype(np.int64)


def _common_ok(runs: Sequence[RunData]) -> list[IntArray]:
    """Per run, the positions of the statements that succeeded in every run, in one
    common order (by statement key)."""
    width = max((int(r.index.max()) + 1 for r in runs if r.index.size), default=1)
    sessions: dict[str, int] = {}
    keyed = [(_keys(r, sessions, width), r.sqlstate == 0) for r in runs]
    common: IntArray | None = None
    for keys, ok in keyed:
        good = np.unique(keys[ok])
        common = good if common is None else np.intersect1d(common, good, assume_unique=True)
    assert common is not None
    positions: list[IntArray] = []
    for keys, _ok in keyed:
        order = np.argsort(keys, kind="stable")
        found = np.searchsorted(keys[order], common)
        positions.append(order[found])
    return positions


def round_locations(
    baseline: Sequence[RunData], candidate: Sequence[RunData]
) -> dict[str, tuple[list[float], list[float]]]:
    """Per class fingerprint: its location in each baseline round and each
    candidate round, over the statements that succeeded in all of them."""
    runs = [*baseline, *candidate]
    if not runs:
        return {}
    positions = _common_ok(runs)
    first = runs[0]
    pos0 = positions[0]
    classes = first.fingerprint[pos0]
    out: dict[str, tuple[list[float], list[float]]] = {}
    for cid in np.unique(classes):
        members = classes == cid
        locs = [
            location(run.service_us[pos[members]].astype(np.float64))
            for run, pos in zip(runs, positions, strict=True)
        ]
        key = first.fingerprints[int(cid)]
        out[key] = (locs[: len(baseline)], locs[len(baseline) :])
    return out
