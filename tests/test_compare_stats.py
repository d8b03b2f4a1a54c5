"""Pure statistics of compare, on hand-made samples with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtraffic.compare import FailOn, Verdict, exit_code
from pgtraffic.compare.core import DifferentWorkloadsError, compare_runs
from pgtraffic.compare.model import RunData, Thresholds
from pgtraffic.compare.plans import plan_shape
from pgtraffic.compare.render_text import to_json, to_junit, to_markdown
from pgtraffic.compare.stats import (
    benjamini_hochberg,
    bootstrap_ratio_intervals,
    geometric_mean,
    significance,
)

CLASSES = 8
SESSIONS = 50


def make_run(
    n: int = 8000,
    *,
    seed: int,
    slow_class: int | None = None,
    factor: float = 1.0,
    failing_class: int | None = None,
    rows_class: int | None = None,
    workload_id: str = "w1",
    lag_us: int = 300,
) -> RunData:
    """A synthetic run: the same statements (classes, sessions) whatever the seed."""
    layout = np.random.default_rng(1234)
    fp = layout.integers(0, CLASSES, n)
    rng = np.random.default_rng(seed)
    base = layout.lognormal(np.log(800), 0.5, n)  # per-statement cost, shared by both runs
    service = base * rng.lognormal(0, 0.1, n)
    if slow_class is not None:
        service[fp == slow_class] *= factor
    state = np.zeros(n, dtype=np.int64)
    if failing_class is not None:
        state[fp == failing_class] = 1
    rows = np.ones(n, dtype=np.int64)
    if rows_class is not None:
        rows[fp == rows_class] = 2
    intended = np.arange(n, dtype=np.int64) * 1000
    return RunData(
        path=f"run-{seed}",
        label=f"run {seed}",
        workload_id=workload_id,
        server_version="16.2",
        max_speed=False,
        speed=1.0,
        duration_s=n / 1000,
        sessions=tuple(f"s{i}" for i in range(SESSIONS)),
        fingerprints=tuple(f"class{i}" for i in range(CLASSES)),
        sqlstates=("", "42883"),
        session=(np.arange(n) % SESSIONS).astype(np.int64),
        index=(np.arange(n) // SESSIONS).astype(np.int64),
        fingerprint=fp.astype(np.int64),
        intended_us=intended,
        start_us=intended + rng.integers(0, lag_us, n),
        service_us=service.astype(np.int64),
        rows=rows,
        sqlstate=state,
        original_sqlstate=np.zeros(n, dtype=np.int64),
    )


def test_a_a_reports_nothing() -> None:
    c = compare_runs(make_run(seed=1), make_run(seed=2))
    assert not c.by_verdict(Verdict.REGRESSED)
    assert not c.by_verdict(Verdict.IMPROVED)
    assert c.errors == ()
    assert c.rows == ()
    assert c.paired == 8000
    assert 0.9 < c.total_ratio < 1.1
    assert exit_code(c, list(FailOn)) == 0


def test_planted_regression_is_found_with_its_interval() -> None:
    c = compare_runs(make_run(seed=1), make_run(seed=2, slow_class=3, factor=1.6))
    regressed = c.by_verdict(Verdict.REGRESSED)
    assert [r.fingerprint for r in regressed] == ["class3"]
    r = regressed[0]
    assert r.test.method == "wilcoxon-paired"
    assert r.q_value < 1e-6
    assert r.ci_p50 is not None
    assert r.ci_p50.low < 1.6 < r.ci_p50.high
    assert c.classes[0].fingerprint == "class3", "worst first"
    assert exit_code(c, [FailOn.REGRESSION]) == 17
    assert exit_code(c, [FailOn.ERRORS]) == 0


def test_improvement_and_small_changes() -> None:
    c = compare_runs(make_run(seed=1), make_run(seed=2, slow_class=5, factor=0.5))
    assert [x.fingerprint for x in c.by_verdict(Verdict.IMPROVED)] == ["class5"]
    # A real but tiny change (3%) is significant yet below the effect threshold.
    c = compare_runs(make_run(seed=1), make_run(seed=2, slow_class=5, factor=1.03))
    cls = next(x for x in c.classes if x.fingerprint == "class5")
    assert cls.verdict is Verdict.UNCHANGED
    assert cls.q_value < 0.05


def test_absolute_threshold_guards_fast_queries() -> None:
    th = Thresholds(min_delta_us=10_000)  # 10 ms: a 60% change of 0.8 ms does not count
    c = compare_runs(make_run(seed=1), make_run(seed=2, slow_class=3, factor=1.6), thresholds=th)
    assert not c.by_verdict(Verdict.REGRESSED)


def test_new_errors_and_row_mismatches() -> None:
    c = compare_runs(make_run(seed=1), make_run(seed=2, failing_class=4, rows_class=6))
    assert len(c.errors) == 1
    err = c.errors[0]
    assert (err.change, err.baseline_sqlstate, err.candidate_sqlstate) == ("new", "", "42883")
    assert err.fingerprint == "class4"
    assert len(err.examples) == 3
    assert c.new_errors == err.count > 0
    assert c.candidate.error_rate == pytest.approx(err.count / 8000)
    assert c.baseline.error_rate == 0
    failing = next(x for x in c.classes if x.fingerprint == "class4")
    assert failing.verdict is Verdict.TOO_FEW
    assert failing.candidate_errors == err.count
    assert [m.fingerprint for m in c.rows] == ["class6"]
    assert c.rows[0].examples[0].detail == "1 rows -> 2 rows"
    assert exit_code(c, [FailOn.ERRORS, FailOn.ROWS]) == 16 + 2 + 4
    resolved = compare_runs(make_run(seed=2, failing_class=4), make_run(seed=1))
    assert [d.change for d in resolved.errors] == ["resolved"]
    assert resolved.new_errors == 0


def test_different_workloads_are_refused() -> None:
    with pytest.raises(DifferentWorkloadsError, match="different workloads"):
        compare_runs(make_run(seed=1), make_run(seed=2, workload_id="other"))


def test_lagging_run_is_called_unfaithful() -> None:
    c = compare_runs(make_run(seed=1), make_run(seed=2, lag_us=100_000))
    assert c.baseline.faithful
    assert not c.candidate.faithful
    assert "--speed" in c.candidate.fidelity_note


def test_reports_render() -> None:
    c = compare_runs(make_run(seed=1), make_run(seed=2, slow_class=3, factor=1.6, failing_class=4))
    md = to_markdown(c)
    assert "| regressed |" in md and "42883" in md
    junit = to_junit(c)
    assert 'failures="2"' in junit
    data = to_json(c)
    assert '"regressed": 1' in data
    assert "NaN" not in data


def test_significance_paired_vs_unpaired() -> None:
    rng = np.random.default_rng(0)
    cost = rng.lognormal(np.log(1000), 1.0, 200)  # wide statement-to-statement spread
    a = cost * rng.lognormal(0, 0.02, 200)
    b = cost * 1.05 * rng.lognormal(0, 0.02, 200)
    paired = significance(a, b, a, b)
    unpaired = significance(a, b)
    assert paired.method == "wilcoxon-paired"
    assert paired.p_value < 1e-10
    assert unpaired.p_value > 0.05, "pairing is what makes a 5% shift visible here"
    assert significance(a[:3], b[:3]).method == "none"


def test_benjamini_hochberg_known_values() -> None:
    q = benjamini_hochberg([0.01, 0.04, 0.03, math.nan, 0.5])
    assert q[0] == pytest.approx(0.04)
    assert q[1] == pytest.approx(0.04 * 4 / 3)
    assert q[2] == pytest.approx(0.04 * 4 / 3)  # raised to keep q monotone in p
    assert math.isnan(q[3])
    assert q[4] == pytest.approx(0.5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_benjamini_hochberg_properties(ps: list[float]) -> None:
    q = benjamini_hochberg(ps)
    for p, qv in zip(ps, q, strict=True):
        assert p - 1e-12 <= qv <= 1.0
    order = np.argsort(ps)
    ranked = [q[i] for i in order]
    assert all(x <= y + 1e-12 for x, y in itertools.pairwise(ranked))


def test_bootstrap_intervals_cover_the_true_ratio() -> None:
    """Over many samples, a 95% interval should hold the true ratio most of the time."""
    covered_median = covered_p95 = 0
    trials = 40
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        a = rng.lognormal(np.log(1000), 0.3, 600)
        b = rng.lognormal(np.log(1500), 0.3, 600)
        med, p95 = bootstrap_ratio_intervals(a, b, resamples=300, seed=seed)
        covered_median += med.low <= 1.5 <= med.high
        covered_p95 += p95.low <= 1.5 <= p95.high
        assert med.high - med.low < 0.4
    assert covered_median >= 0.8 * trials
    assert covered_p95 >= 0.75 * trials


def test_geometric_mean() -> None:
    assert geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
    assert math.isnan(geometric_mean([]))


def test_plan_shape_ignores_costs() -> None:
    plan = {
        "Node Type": "Nested Loop",
        "Join Type": "Inner",
        "Total Cost": 12.5,
        "Plans": [
            {"Node Type": "Seq Scan", "Relation Name": "a", "Plan Rows": 10},
            {
                "Node Type": "Index Scan",
                "Relation Name": "b",
                "Index Name": "b_pkey",
                "Scan Direction": "Forward",
            },
        ],
    }
    assert plan_shape(plan) == [
        "Nested Loop [Inner]",
        "  Seq Scan on a",
        "  Index Scan on b using b_pkey",
    ]


def test_ratio_chart_survives_an_interval_beside_the_estimate() -> None:
    """Bootstrap intervals come from resamples and may miss the full-sample ratio."""
    import dataclasses

    from pgtraffic.compare import charts
    from pgtraffic.compare.stats import Interval

    c = compare_runs(make_run(seed=1), make_run(seed=2, slow_class=3, factor=1.6))
    first = c.classes[0]
    assert first.ci_p50 is not None
    odd = dataclasses.replace(
        first, ci_p50=Interval(first.ratio_p50 * 1.01, first.ratio_p50 * 1.05)
    )
    svg = charts.ratios(dataclasses.replace(c, classes=(odd, *c.classes[1:])))
    assert svg is not None
    assert svg.startswith("<svg")
