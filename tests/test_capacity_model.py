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
    Step,
    UntilKnee,
    find_knee,
    judge_step,
    parse_speeds,
)


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
    lagging = step(0, 1, 1000, 1000, replayer_lag_p99_ms=40.0)
    assert [f.problem for f in judge_step(lagging, slos)] == [Problem.REPLAYER]


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
    knee = find_knee([step(0, 1, 10, 10), step(1, 2, 20, 20, replayer_lag_p99_ms=50)], [])
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
