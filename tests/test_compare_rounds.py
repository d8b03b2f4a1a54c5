"""The statistics of compare across rounds, on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pgtraffic.compare.model import RunData
from pgtraffic.compare.multi import round_locations
from pgtraffic.compare.rounds import (
    balanced_order,
    class_effect,
    estimate_drift,
    judge_rounds,
    location,
    significant,
)
from pgtraffic.compare.targets import target_differences

ALPHA = 0.05
CLASSES = 18
ROUNDS = 3


def _synthetic_set(
    rng: np.random.Generator,
    *,
    drift: float = 0.0,
    planted: dict[int, float] | None = None,
    rounds: int = ROUNDS,
) -> dict[str, tuple[list[float], list[float]]]:
    """Round locations (log scale) of CLASSES classes: per-class round noise of
    1-5%, a per-round machine factor shared by every class (2%), ``drift`` on the
    candidate side, and ``planted`` effects (class index -> ratio)."""
    planted = planted or {}
    noise = rng.uniform(0.01, 0.05, CLASSES)
    means = rng.uniform(math.log(50), math.log(90_000), CLASSES)
    machine = rng.normal(0.0, 0.02, (2, rounds))
    out: dict[str, tuple[list[float], list[float]]] = {}
    for c in range(CLASSES):
        a = means[c] + machine[0] + rng.normal(0.0, noise[c], rounds)
        shift = math.log(drift + 1) + math.log(planted.get(c, 1.0))
        b = means[c] + shift + machine[1] + rng.normal(0.0, noise[c], rounds)
        out[f"class{c}"] = (a.tolist(), b.tolist())
    return out


def _flagged(locations: dict[str, tuple[list[float], list[float]]]) -> set[str]:
    judged = judge_rounds(locations, alpha=ALPHA)
    return {
        key
        for key, effect in judged.effects.items()
        if significant(effect, judged.q_values[key], ALPHA)
    }


@pytest.mark.parametrize("drift", [0.0, 0.03, -0.05])
def test_a_a_false_positive_rate_is_at_most_alpha_with_drift(drift: float) -> None:
    rng = np.random.default_rng(7)
    sets = 400
    any_flag = sum(1 for _ in range(sets) if _flagged(_synthetic_set(rng, drift=drift)))
    # Under the complete null, BH's false-discovery rate is its family-wise rate: the
    # share of A/A sets with any flag stays at alpha (binomial margin for 400 sets)
    assert any_flag / sets <= ALPHA + 0.03


@pytest.mark.parametrize(("effect", "power"), [(1.2, 0.85), (0.8, 0.85), (1.5, 0.97), (0.5, 0.97)])
def test_power_for_planted_effects(effect: float, power: float) -> None:
    rng = np.random.default_rng(11)
    sets = 200
    caught = sum(
        1
        for _ in range(sets)
        if "class3" in _flagged(_synthetic_set(rng, drift=0.03, planted={3: effect}))
    )
    assert caught / sets >= power


def test_drift_is_reported_once_and_factored_out() -> None:
    rng = np.random.default_rng(3)
    locations = _synthetic_set(rng, drift=0.08, planted={5: 2.0})
    judged = judge_rounds(locations, alpha=ALPHA)
    assert judged.drift is not None
    assert judged.drift.ratio == pytest.approx(1.08, abs=0.03)
    assert judged.drift.share >= 0.8
    flagged = _flagged(locations)
    # the planted class stands out; an 8% machine-wide shift is not 17 verdicts
    assert flagged == {"class5"}
    assert judged.effects["class5"].ratio == pytest.approx(2.0 / 1.08, rel=0.1)


def test_no_drift_without_a_shared_shift() -> None:
    assert estimate_drift([0.1, -0.1, 0.05, -0.05, 0.02, -0.03]) is None
    assert estimate_drift([0.05, 0.04, 0.06]) is None  # too few classes to tell
    drift = estimate_drift([0.05, 0.04, 0.06, 0.05, 0.03, -0.01])
    assert drift is not None and drift.ratio == pytest.approx(math.exp(0.045), rel=1e-9)


def test_floor_is_the_smallest_significant_change() -> None:
    a = [0.00, 0.02, -0.02]
    b = [0.10, 0.12, 0.08]
    effect = class_effect(a, b, alpha=ALPHA)
    assert effect.floor is not None
    # an effect exactly at the floor has p = alpha
    at_floor = math.log1p(effect.floor)
    shifted = class_effect(a, [x - 0.10 + at_floor for x in b], alpha=ALPHA)
    assert shifted.p_value == pytest.approx(ALPHA, rel=1e-6)
    assert effect.p_value < ALPHA
    assert effect.ratio == pytest.approx(math.exp(0.10))
    assert effect.interval.low < effect.ratio < effect.interval.high


def test_one_round_a_side_measures_no_floor() -> None:
    effect = class_effect([1.0], [1.2])
    assert effect.floor is None
    assert math.isnan(effect.p_value)
    assert not significant(effect, math.nan, ALPHA)


def test_an_effect_that_flips_between_rounds_is_not_a_verdict() -> None:
    effect = class_effect([0.0, 0.0, 0.0], [0.3, 0.3, -0.05])
    assert not effect.consistent
    assert not significant(effect, 0.001, ALPHA)


def test_location_is_a_trimmed_mean_of_logs() -> None:
    values = np.array([100.0] * 18 + [1e9, 0.0])  # one outlier each way, trimmed
    assert location(values) == pytest.approx(math.log(100.0))
    assert math.isnan(location(np.array([], dtype=np.float64)))


def test_balanced_order_alternates_which_side_goes_first() -> None:
    assert balanced_order(3) == ["A", "B", "B", "A", "A", "B"]
    order = balanced_order(4)
    assert order.count("A") == order.count("B") == 4


def test_moderation_keeps_a_noisy_class_noisy() -> None:
    rng = np.random.default_rng(5)
    quiet = {
        f"q{c}": (rng.normal(0, 0.01, 3).tolist(), rng.normal(0, 0.01, 3).tolist())
        for c in range(17)
    }
    # one class 20 times noisier than the rest, no effect: moderation must not make
    # its spread look like the others' (it would then be flagged on noise)
    quiet["noisy"] = ([0.0, 0.2, -0.2], [0.25, 0.45, 0.05])
    judged = judge_rounds(quiet, alpha=ALPHA)
    assert judged.prior is not None
    assert judged.effects["noisy"].floor is not None and judged.effects["noisy"].floor > 0.2
    assert not significant(judged.effects["noisy"], judged.q_values["noisy"], ALPHA)


def _run(
    service_us: list[int], sqlstate: list[int], *, fingerprints: tuple[str, ...] = ("fa", "fb")
) -> RunData:
    n = len(service_us)
    ints = np.arange(n, dtype=np.int64)
    return RunData(
        path="r.pgtr",
        label="r",
        workload_id="w",
        server_version="16",
        max_speed=False,
        speed=1.0,
        duration_s=1.0,
        sessions=("s1",),
        fingerprints=fingerprints,
        sqlstates=("", "42P01"),
        session=np.zeros(n, dtype=np.int64),
        index=ints,
        fingerprint=ints % 2,
        intended_us=ints,
        start_us=ints,
        service_us=np.array(service_us, dtype=np.int64),
        rows=np.zeros(n, dtype=np.int64),
        sqlstate=np.array(sqlstate, dtype=np.int64),
        original_sqlstate=np.zeros(n, dtype=np.int64),
    )


def test_round_locations_use_the_statements_that_succeeded_everywhere() -> None:
    ok = [0] * 6
    base = [_run([100, 1000, 100, 1000, 100, 1000], ok)]
    # statement 2 (class fa) failed in the candidate round: left out of every round,
    # so its fast time does not lower the baseline's location of fa
    cand = [_run([200, 1000, 5, 1000, 200, 1000], [0, 0, 1, 0, 0, 0])]
    base[0].service_us[2] = 5
    got = round_locations(base, cand)
    assert set(got) == {"fa", "fb"}
    (a_fa,), (b_fa,) = got["fa"]
    assert math.exp(b_fa - a_fa) == pytest.approx(2.0)
    (a_fb,), (b_fb,) = got["fb"]
    assert a_fb == pytest.approx(b_fb)


def test_target_differences_list_settings_and_missing_statistics() -> None:
    base = {
        "target": {"settings": {"server_version": "16.4", "work_mem": "4096kB", "jit": "off"}},
        "unanalyzed_tables": [],
    }
    cand = {
        "target": {"settings": {"server_version": "18.1", "work_mem": "65536kB", "jit": "off"}},
        "unanalyzed_tables": ["public.builds"],
    }
    diffs = target_differences(base, cand)
    assert [(d.name, d.baseline, d.candidate) for d in diffs.settings] == [
        ("work_mem", "4096kB", "65536kB")
    ]
    assert diffs.candidate_unanalyzed == ("public.builds",)
    lines = diffs.lines()
    assert lines[0] == "work_mem: 4096kB -> 65536kB"
    assert "without planner statistics on the candidate (public.builds)" in lines[1]
    assert not target_differences(base, base)
    assert not target_differences({}, {})


def test_a_busy_machine_shifting_whole_rounds_is_taken_out_of_every_class() -> None:
    """Each round's machine state moves every class of that round alike (here by 15%
    per round, far above the classes' own 1-5%): taken out, the floors are the
    classes' own and a 20% change in one class still stands out."""
    rng = np.random.default_rng(21)
    caught = 0
    false_share = 0.0
    sets = 150
    for _ in range(sets):
        noise = rng.uniform(0.01, 0.05, CLASSES)
        machine = rng.normal(0.0, 0.15, (2, ROUNDS))
        locations = {}
        for c in range(CLASSES):
            a = machine[0] + rng.normal(0.0, noise[c], ROUNDS)
            b = machine[1] + rng.normal(0.0, noise[c], ROUNDS) + (math.log(1.2) if c == 3 else 0)
            locations[f"class{c}"] = (a.tolist(), b.tolist())
        flagged = _flagged(locations)
        caught += "class3" in flagged
        false_share += len(flagged - {"class3"}) / max(1, len(flagged))
    assert caught / sets >= 0.85
    # Benjamini-Hochberg bounds the share of false verdicts among the verdicts
    assert false_share / sets <= ALPHA + 0.03
    judged = judge_rounds(locations, alpha=ALPHA)
    floors = [e.floor for e in judged.effects.values() if e.floor is not None]
    assert max(floors) < 0.15  # without taking the rounds' shifts out: above 20%
