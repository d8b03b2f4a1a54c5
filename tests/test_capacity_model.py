"""The pure judgements of a capacity sweep: SLOs, sustained steps, the knee, bisection."""

from __future__ import annotations

from dataclasses import replace

import pytest

from capture.errors import UsageError
from pgtraffic.capacity.model import (
    ClassStep,
    Metric,
    Problem,
    Slo,
    StatementDelta,
    Step,
    UntilKnee,
    find_knee,
    judge_step,
    knee_from_json,
    parse_scales,
    parse_speeds,
)
from pgtraffic.capacity.progress import Done, Load, SweepProgress, bisection_left, estimate_left
from pgtraffic.capacity.statements import Counters, top_deltas
from pgtraffic.capacity.sweep import SweepPlan


def step(
    index: int, speed: float, offered: float, achieved: float, p99: float = 5.0, **kw: object
) -> Step:
    base = Step(
        index=index,
        speed=speed,
        offered_statements_per_s=offered,
        achieved_statements_per_s=achieved,
        statements=1000,
        run_time_s=10.0,
        p50_ms=p99 / 5,
        p95_ms=p99 / 2,
        p99_ms=p99,
        lag_p99_ms=1.0,
        replayer_lag_p99_ms=0.5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_slo_parsing() -> None:
    assert Slo.parse("p99<50ms") == Slo(Metric.P99, 50.0)
    assert Slo.parse(" p95 < 2.5 ms ") == Slo(Metric.P95, 2.5)
    assert Slo.parse("ABCDEF12:p50<1ms") == Slo(Metric.P50, 1.0, "abcdef12")
    for bad in ("p99>50ms", "p98<1ms", "p99<fast", "abc:p99<1ms"):
        with pytest.raises(UsageError, match="not an objective"):
            Slo.parse(bad)


def test_a_step_is_sustained_only_when_it_keeps_up_meets_slos_and_adds_no_errors() -> None:
    slos = [Slo(Metric.P99, 10.0)]
    assert judge_step(step(0, 1, 1000, 990), slos) == ()
    assert [f.problem for f in judge_step(step(0, 1, 1000, 900), slos)] == [Problem.FELL_BEHIND]
    assert [f.problem for f in judge_step(step(0, 1, 1000, 1000, p99=12), slos)] == [Problem.SLO]
    failing = step(0, 1, 1000, 1000, new_errors={"53300": 4})
    assert [f.problem for f in judge_step(failing, slos)] == [Problem.NEW_ERRORS]
    # the replayer's lag alone fails nothing; it marks a failed step as the replayer's
    assert judge_step(step(0, 1, 1000, 1000, replayer_lag_p99_ms=40.0), slos) == ()
    lagging = step(0, 1, 1000, 900, replayer_lag_p99_ms=40.0)
    assert [f.problem for f in judge_step(lagging, slos)] == [Problem.REPLAYER, Problem.FELL_BEHIND]


def test_per_class_slo_looks_only_at_that_class() -> None:
    classes = (ClassStep("aaaa1111", 10, 1, 2, 30), ClassStep("bbbb2222", 10, 1, 2, 3))
    s = step(0, 1, 100, 100, classes=classes)
    assert judge_step(s, [Slo(Metric.P99, 10.0, "bbbb")]) == ()
    assert judge_step(s, [Slo(Metric.P99, 10.0, "aaaa")])[0].problem is Problem.SLO


def test_knee_is_the_last_sustained_step_and_names_what_broke() -> None:
    slow = (ClassStep("c1", 10, 1, 2, 3),)
    steps = [
        step(0, 1, 1000, 1000, classes=slow, waits={"CPU": 0.9, "Lock": 0.05}),
        step(1, 2, 2000, 1990, classes=slow, waits={"CPU": 0.8, "Lock": 0.1}),
        step(
            2,
            4,
            4000,
            2500,
            classes=(ClassStep("c1", 10, 1, 2, 30),),
            waits={"CPU": 0.3, "Lock": 0.7},
        ),
    ]
    knee = find_knee(steps, [])
    assert knee.step == 1
    assert knee.speed == 2
    assert knee.achieved_statements_per_s == 1990
    assert [f.problem for f in knee.broke] == [Problem.FELL_BEHIND]
    assert any("class c1" in c and "10.0x" in c for c in knee.culprits)
    assert any("Lock" in c for c in knee.culprits)
    assert not knee.replayer_limited


def test_knee_when_every_step_held_or_none_did() -> None:
    held = find_knee([step(0, 1, 10, 10), step(1, 2, 20, 20)], [])
    assert held.step == 1
    assert "beyond this sweep" in held.reason
    none = find_knee([step(0, 1, 10, 5)], [])
    assert none.step is None
    assert "not even the lowest" in none.reason


def test_replayer_limit_is_not_called_server_capacity() -> None:
    knee = find_knee([step(0, 1, 10, 10), step(1, 2, 20, 15, replayer_lag_p99_ms=50)], [])
    assert knee.replayer_limited
    assert "replayer" in knee.broke[0].detail


def test_until_knee_doubles_then_bisects_to_ten_percent() -> None:
    plan = UntilKnee(start=1.0)
    capacity = 5.3  # speeds up to this are sustained
    tried: list[tuple[float, bool]] = []
    while (speed := plan.next_speed(tried)) is not None:
        tried.append((speed, speed <= capacity))
    speeds = [s for s, _ in tried]
    assert speeds[:4] == [1.0, 2.0, 4.0, 8.0]
    good = max(s for s, ok in tried if ok)
    bad = min(s for s, ok in tried if not ok)
    assert good <= capacity < bad
    assert (bad - good) / good <= 0.10
    assert len(tried) <= 12


def test_until_knee_stops_when_the_first_step_fails() -> None:
    assert UntilKnee().next_speed([(1.0, False)]) is None


def test_step_round_trips_through_json() -> None:
    s = step(3, 2.5, 100, 90, classes=(ClassStep("f", 1, 1.0, 2.0, 3.0),), errors={"40P01": 1})
    assert Step.from_json(s.to_json()) == s


def test_parse_speeds() -> None:
    assert parse_speeds("4,1,2,2") == (1.0, 2.0, 4.0)
    with pytest.raises(UsageError):
        parse_speeds("1,x")
    with pytest.raises(UsageError):
        parse_speeds("0,1")


def test_bisection_left_bounds_the_steps_until_knee_still_runs() -> None:
    until = UntilKnee(start=1.0)
    for capacity in (1.3, 2.9, 5.3, 11.0, 40.0):
        tried: list[tuple[float, bool]] = []
        predictions: list[tuple[int, int | None]] = []
        while (speed := until.next_speed(tried)) is not None:
            tried.append((speed, speed <= capacity))
            predictions.append((len(tried), bisection_left(until, tried)))
        for done, left in predictions:
            if left is not None:  # known once a step failed; exact up to one step
                assert len(tried) - done <= left <= len(tried) - done + 1, (capacity, tried)
        assert predictions[0][1] is None  # the first step was sustained: still doubling


def test_time_left_counts_the_remaining_steps_at_their_speeds_and_the_resets() -> None:
    history = [Done(intended_s=60.0, wall_s=66.0, reset_s=2.0)]  # 10 % overrun
    left = estimate_left(60.0, history, [Load(2.0), Load(4.0)])
    assert left == pytest.approx((30 + 15) * 1.1 + 2 * 2.0)
    assert estimate_left(60.0, [], [Load(1.0)], running=30.0) == pytest.approx(90.0)
    progress = SweepProgress(2, 4, Load(2.0, 3), left_s=150.0)
    assert progress.describe() == "step 2/4: speed 2 x3 sessions (2 min left)"
    doubling = SweepProgress(3, None, Load(4.0), left_s=20.0, lower_bound=True)
    assert doubling.describe() == "step 3: speed 4 (at least 20 s left)"


def test_a_scale_sweep_steps_by_factor_at_one_speed() -> None:
    plan = SweepPlan(speeds=(2.0,), scales=parse_scales("4,1,2"))
    done: list[tuple[Load, bool]] = []
    while (load := plan.next_load(done)) is not None:
        done.append((load, True))
    assert [ld for ld, _ in done] == [Load(2.0, 1), Load(2.0, 2), Load(2.0, 4)]
    assert plan.total == 3
    assert plan.remaining(done[:1]) == ([Load(2.0, 2), Load(2.0, 4)], True)
    with pytest.raises(UsageError, match="either the speed or the --scale"):
        SweepPlan(speeds=(1.0, 2.0), scales=(1, 2))
    for bad in ("0", "1,x", ""):
        with pytest.raises(UsageError):
            parse_scales(bad)


def test_knee_of_a_scale_sweep_says_connections_ran_out() -> None:
    steps = [
        step(0, 1, 100, 100, scale=1),
        step(1, 1, 200, 199, scale=2),
        step(2, 1, 400, 300, scale=4, connect_failures={"53300": 7}),
    ]
    knee = find_knee(steps, [])
    assert knee.step == 1 and knee.scale == 2
    assert "at speed 1 x4 sessions" in knee.reason
    assert "ran out of connections (max_connections)" in knee.reason
    assert knee_from_json(knee.to_json()) == knee


def test_statement_deltas_keep_what_ran_during_the_step() -> None:
    before = {(1, 5, 11): Counters("UPDATE hot", 100, 50.0, 3), (1, 5, 12): Counters("x", 7, 1, 0)}
    after = {
        (1, 5, 11): Counters("UPDATE hot", 400, 250.0, 5),
        (1, 5, 12): Counters("x", 7, 1.0, 0),  # did not run in the step
        (1, 5, 13): Counters("SELECT 1", 10, 0.5, 0),  # new
    }
    top = top_deltas(before, after)
    assert top == (
        StatementDelta("UPDATE hot", 300, 200.0, 2),
        StatementDelta("SELECT 1", 10, 0.5, 0),
    )
    assert top[0].mean_exec_ms == pytest.approx(200 / 300)
    s = step(0, 1, 10, 10, top_statements=top, scale=3)
    assert Step.from_json(s.to_json()) == s
