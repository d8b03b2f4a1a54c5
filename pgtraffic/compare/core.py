"""Compare two runs of the same workload: pure computation over RunData columns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from capture.errors import InputError
from pgtraffic.compare.model import (
    ClassComparison,
    Comparison,
    ErrorDivergence,
    Example,
    IntArray,
    RowMismatch,
    RunData,
    RunSummary,
    Thresholds,
    TimelinePoint,
    Verdict,
)
from pgtraffic.compare.stats import (
    FloatArray,
    Summary,
    TestResult,
    benjamini_hochberg,
    bootstrap_ratio_intervals,
    geometric_mean,
    ratio,
    significance,
)
from replay.fidelity import judge_fidelity, sent_mask

MAX_EXAMPLES = 3
BOOTSTRAP_CLASSES = 30
CHART_CLASSES = 6
CHART_SAMPLES = 2000


class DifferentWorkloadsError(InputError):
    """The two results files replayed different workloads."""


def _remap(values: IntArray, vocabulary: tuple[str, ...], common: dict[str, int]) -> IntArray:
    table = np.array([common.setdefault(v, len(common)) for v in vocabulary], dtype=np.int64)
    if values.size == 0:
        return values.astype(np.int64)
    return table[values]


def _pair(a: RunData, b: RunData) -> tuple[IntArray, IntArray]:
    """Indices (into a, into b) of statements present in both runs.

    A statement is identified by (session, index in session). When the key space is
    dense (the usual case: both runs replayed the same workload), a direct-address
    table pairs them in linear time; otherwise a sort-based intersection does.
    """
    sessions: dict[str, int] = {}
    sa = _remap(a.session, a.sessions, sessions)
    sb = _remap(b.session, b.sessions, sessions)
    if a.index.size == 0 or b.index.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    width = int(max(a.index.max(), b.index.max())) + 1
    space = len(sessions) * width
    ka = sa * width + a.index
    kb = sb * width + b.index
    if space <= 4 * (ka.size + kb.size) + 1024:
        where_a = np.full(space, -1, dtype=np.int64)
        where_a[ka] = np.arange(ka.size)
        found = where_a[kb]
        hit_b = np.flatnonzero(found >= 0)
        return found[hit_b], hit_b.astype(np.int64)
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=False, return_indices=True)
    return ia.astype(np.int64), ib.astype(np.int64)


def run_summary(run: RunData, thresholds: Thresholds) -> RunSummary:
    ok = run.sqlstate == 0
    fidelity = judge_fidelity(
        session=run.session,
        index=run.index,
        intended_us=run.intended_us,
        start_us=run.start_us,
        service_us=run.service_us,
        sent=sent_mask(run.sqlstate, run.sqlstates),
        max_speed=run.max_speed,
        limits=thresholds.fidelity,
        sync_wait_us=run.sync_wait_us,
    )
    return RunSummary(
        label=run.label,
        path=run.path,
        server_version=run.server_version,
        statements=len(run),
        errors=int((~ok).sum()),
        duration_s=run.duration_s,
        throughput=len(run) / run.duration_s if run.duration_s > 0 else math.nan,
        total_service_ms=float(run.service_us[ok].sum()) / 1000.0,
        # At --max-speed statements go as soon as they can: there is no schedule to lag.
        lag_p50_ms=math.nan if run.max_speed else fidelity.lag_p50_ms,
        lag_p95_ms=math.nan if run.max_speed else fidelity.lag_p95_ms,
        lag_p99_ms=math.nan if run.max_speed else fidelity.lag_p99_ms,
        lag_max_ms=math.nan if run.max_speed else fidelity.lag_max_ms,
        max_speed=run.max_speed,
        speed=run.speed,
        faithful=fidelity.faithful,
        fidelity_note=fidelity.note,
        fidelity=fidelity.verdict,
        completeness=run.completeness,
    )


def _groups(keys: IntArray) -> dict[int, IntArray]:
    """Positions of each distinct key (one sort, no Python loop over elements).

    Keys are small integers (class ids), so they are sorted as 16-bit values when they
    fit, which numpy does with a linear-time radix sort.
    """
    if keys.size == 0:
        return {}
    if int(keys.max()) < 1 << 16 and int(keys.min()) >= 0:
        order = np.argsort(keys.astype(np.uint16), kind="stable")
    else:
        order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate(([0], cuts))
    return {
        int(sorted_keys[s]): part for s, part in zip(starts, np.split(order, cuts), strict=True)
    }


def _verdict(
    base: Summary, cand: Summary, q: float, thresholds: Thresholds, tested: bool
) -> Verdict:
    if not tested:
        return Verdict.TOO_FEW
    r = ratio(cand.p50, base.p50)
    delta = cand.p50 - base.p50
    if math.isnan(q) or q >= thresholds.alpha or abs(delta) < thresholds.min_delta_us:
        return Verdict.UNCHANGED
    if r >= thresholds.min_ratio:
        return Verdict.REGRESSED
    if r <= 1 / thresholds.min_ratio:
        return Verdict.IMPROVED
    return Verdict.UNCHANGED


def check_same_workload(a: RunData, b: RunData) -> None:
    """DifferentWorkloadsError unless both runs replayed one workload."""
    if a.workload_id != b.workload_id:
        raise DifferentWorkloadsError(
            f"{a.path} and {b.path} replayed different workloads "
            f"({a.workload_id[:12]} vs {b.workload_id[:12]}); compare runs of one workload",
            hint="replay the same workload file on both servers, then compare those results",
        )


def compare_runs(
    a: RunData,
    b: RunData,
    *,
    thresholds: Thresholds | None = None,
    class_text: Mapping[str, str] | None = None,
) -> Comparison:
    """Compare baseline ``a`` with candidate ``b`` class by class."""
    th = thresholds or Thresholds()
    check_same_workload(a, b)
    texts = dict(class_text or {})
    fps: dict[str, int] = {}
    fa = _remap(a.fingerprint, a.fingerprints, fps)
    fb = _remap(b.fingerprint, b.fingerprints, fps)
    ia, ib = _pair(a, b)
    paired = _Paired(a, b, ia, ib, fa, sorted(fps, key=fps.__getitem__), texts)
    rows = _class_rows(paired, fb, th)
    classes = _class_comparisons(rows, paired, th)
    tested_ratios = [c.ratio_p50 for c in classes if c.verdict is not Verdict.TOO_FEW]
    base_summary = run_summary(a, th)
    cand_summary = run_summary(b, th)
    return Comparison(
        baseline=base_summary,
        candidate=cand_summary,
        thresholds=th,
        classes=tuple(classes),
        errors=_error_divergence(paired),
        rows=_row_mismatches(paired),
        paired=int(ia.size),
        total_ratio=ratio(cand_summary.total_service_ms, base_summary.total_service_ms),
        geomean_ratio=geometric_mean(tested_ratios),
        timeline=_timeline(a, b),
        samples=_chart_samples(classes, rows, fps),
    )


@dataclass(frozen=True, slots=True)
class _Paired:
    """The two runs, the statements present in both (``ia[k]`` in a is ``ib[k]`` in b),
    and the class vocabulary common to both."""

    a: RunData
    b: RunData
    ia: IntArray
    ib: IntArray
    fa: IntArray
    """Class id (into ``names``) of each statement of a."""
    names: list[str]
    texts: Mapping[str, str]

    def text(self, fid: int) -> tuple[str, str]:
        """The fingerprint of class ``fid`` and its text (the fingerprint when unknown)."""
        fp = self.names[fid]
        return fp, self.texts.get(fp, fp)


@dataclass(frozen=True, slots=True)
class _ClassRow:
    """One class's successful service times on each side, summarized and tested."""

    fid: int
    baseline: Summary
    candidate: Summary
    baseline_errors: int
    candidate_errors: int
    va: FloatArray
    vb: FloatArray
    test: TestResult


def _class_rows(p: _Paired, fb: IntArray, th: Thresholds) -> list[_ClassRow]:
    a, b, fa = p.a, p.b, p.fa
    ok_a = a.sqlstate == 0
    ok_b = b.sqlstate == 0
    svc_a = a.service_us.astype(np.float64)
    svc_b = b.service_us.astype(np.float64)
    pair_ok = ok_a[p.ia] & ok_b[p.ib]
    groups_a = _groups(fa)
    groups_b = _groups(fb)
    pair_groups = _groups(fa[p.ia][pair_ok])
    pa_ok, pb_ok = p.ia[pair_ok], p.ib[pair_ok]
    rows = []
    used = np.union1d(np.unique(fa), np.unique(fb)) if fa.size or fb.size else np.empty(0)
    for fid in (int(x) for x in used):
        pos_a = groups_a.get(fid, np.empty(0, dtype=np.int64))
        pos_b = groups_b.get(fid, np.empty(0, dtype=np.int64))
        va = svc_a[pos_a[ok_a[pos_a]]]
        vb = svc_b[pos_b[ok_b[pos_b]]]
        pp = pair_groups.get(fid)
        paired_a = svc_a[pa_ok[pp]] if pp is not None else None
        paired_b = svc_b[pb_ok[pp]] if pp is not None else None
        test = (
            significance(va, vb, paired_a, paired_b, min_samples=th.min_samples)
            if va.size >= th.min_samples and vb.size >= th.min_samples
            else significance(va[:0], vb[:0], min_samples=th.min_samples)
        )
        errors_a, errors_b = int(pos_a.size - va.size), int(pos_b.size - vb.size)
        rows.append(
            _ClassRow(fid, Summary.of(va), Summary.of(vb), errors_a, errors_b, va, vb, test)
        )
    return rows


def _class_comparisons(rows: list[_ClassRow], p: _Paired, th: Thresholds) -> list[ClassComparison]:
    """Each class's verdict, worst first (q-values across all classes)."""
    qs = benjamini_hochberg([r.test.p_value for r in rows])
    # Bootstrap intervals for the classes that matter most (by total time), bounded cost.
    weight = [max(r.baseline.total, r.candidate.total) for r in rows]
    top = set(sorted(range(len(rows)), key=lambda i: -weight[i])[:BOOTSTRAP_CLASSES])
    classes = []
    for i, row in enumerate(rows):
        sa, sb = row.baseline, row.candidate
        tested = row.test.method != "none"
        ci50 = ci95 = None
        if tested and i in top:
            ci50, ci95 = bootstrap_ratio_intervals(row.va, row.vb, seed=i)
        both = bool(sa.count and sb.count)
        fp, text = p.text(row.fid)
        classes.append(
            ClassComparison(
                fingerprint=fp,
                text=text,
                baseline=sa,
                candidate=sb,
                baseline_errors=row.baseline_errors,
                candidate_errors=row.candidate_errors,
                ratio_p50=ratio(sb.p50, sa.p50) if both else math.nan,
                ratio_p95=ratio(sb.p95, sa.p95) if both else math.nan,
                delta_p50_us=(sb.p50 - sa.p50) if both else math.nan,
                ci_p50=ci50,
                ci_p95=ci95,
                test=row.test,
                q_value=qs[i],
                verdict=_verdict(sa, sb, qs[i], th, tested),
            )
        )
    classes.sort(key=severity)
    return classes


def _chart_samples(
    classes: list[ClassComparison], rows: list[_ClassRow], fps: dict[str, int]
) -> dict[str, tuple[list[float], list[float]]]:
    """Subsampled latencies (ms) of each side for the classes with the most time."""
    rng = np.random.default_rng(1)
    by_fid = {row.fid: row for row in rows}
    biggest = sorted(classes, key=lambda c: -max(c.baseline.total, c.candidate.total))
    samples = {}
    for cls in biggest[:CHART_CLASSES]:
        row = by_fid[fps[cls.fingerprint]]
        samples[cls.fingerprint] = (_subsample(row.va, rng), _subsample(row.vb, rng))
    return samples


def _subsample(values: FloatArray, rng: np.random.Generator) -> list[float]:
    if values.size > CHART_SAMPLES:
        values = rng.choice(values, CHART_SAMPLES, replace=False)
    return [float(v) / 1000.0 for v in values]


_ORDER = {Verdict.REGRESSED: 0, Verdict.IMPROVED: 1, Verdict.UNCHANGED: 2, Verdict.TOO_FEW: 3}


def severity(c: ClassComparison) -> tuple[int, float]:
    """Worst first: regressions by added time, then improvements, then the rest by time."""
    added = (c.candidate.total - c.baseline.total) if c.baseline.count and c.candidate.count else 0
    return (_ORDER[c.verdict], -abs(added) - max(c.baseline.total, c.candidate.total) * 1e-9)


def _example(run: RunData, pos: int, detail: str) -> Example:
    """Statement ``pos`` of ``run`` as an example (its SQL is filled in from the workload)."""
    return Example(
        session=run.sessions[int(run.session[pos])],
        index=int(run.index[pos]),
        sql=None,
        detail=detail,
    )


def _error_divergence(p: _Paired) -> tuple[ErrorDivergence, ...]:
    a, b, ia, ib, fa = p.a, p.b, p.ia, p.ib, p.fa
    sa = np.array(a.sqlstates, dtype=object)
    sb = np.array(b.sqlstates, dtype=object)
    code_a = sa[a.sqlstate[ia]] if ia.size else np.empty(0, dtype=object)
    code_b = sb[b.sqlstate[ib]] if ib.size else np.empty(0, dtype=object)
    differ = np.flatnonzero(code_a != code_b)
    found: dict[tuple[int, str, str], list[int]] = {}
    for k in differ:
        key = (int(fa[ia[k]]), str(code_a[k]), str(code_b[k]))
        found.setdefault(key, []).append(int(k))
    out = []
    for (fid, ca, cb), ks in found.items():
        change = "new" if ca == "" else "resolved" if cb == "" else "changed"
        examples = tuple(
            _example(a, int(ia[k]), f"{ca or 'ok'} -> {cb or 'ok'}") for k in ks[:MAX_EXAMPLES]
        )
        fp, text = p.text(fid)
        out.append(
            ErrorDivergence(
                fp, text, len(ks), examples, change, baseline_sqlstate=ca, candidate_sqlstate=cb
            )
        )
    out.sort(key=lambda d: ({"new": 0, "changed": 1, "resolved": 2}[d.change], -d.count))
    return tuple(out)


def _row_mismatches(p: _Paired) -> tuple[RowMismatch, ...]:
    a, b, ia, ib, fa = p.a, p.b, p.ia, p.ib, p.fa
    both = (a.sqlstate[ia] == 0) & (b.sqlstate[ib] == 0) & (a.rows[ia] >= 0) & (b.rows[ib] >= 0)
    ra, rb = a.rows[ia], b.rows[ib]
    compared = _groups(fa[ia][both])
    bad = both & (ra != rb)
    out = []
    for fid, ks in _groups(fa[ia][bad]).items():
        positions = np.flatnonzero(bad)[ks]
        examples = tuple(
            _example(a, int(ia[k]), f"{int(ra[k])} rows -> {int(rb[k])} rows")
            for k in positions[:MAX_EXAMPLES]
        )
        out.append(RowMismatch(*p.text(fid), int(ks.size), examples, int(compared[fid].size)))
    out.sort(key=lambda m: -m.count)
    return tuple(out)


def _timeline(a: RunData, b: RunData, max_points: int = 300) -> tuple[TimelinePoint, ...]:
    """p95 service time and lag per time bucket of the schedule, for both runs."""

    def per_bucket(run: RunData, width: int) -> dict[int, tuple[float, float]]:
        ok = run.sqlstate == 0
        axis = run.start_us if run.max_speed else run.intended_us
        bucket = (axis // (width * 1_000_000)).astype(np.int64)
        out = {}
        for key, pos in _groups(bucket).items():
            okpos = pos[ok[pos]]
            svc = float(np.percentile(run.service_us[okpos], 95)) / 1000 if okpos.size else math.nan
            lag = (run.start_us[pos] - run.intended_us[pos]) / 1000.0
            out[key * width] = (svc, math.nan if run.max_speed else float(np.percentile(lag, 95)))
        return out

    def span_of(run: RunData) -> int:
        axis = run.start_us if run.max_speed else run.intended_us
        return int(axis.max()) if len(run) else 0

    span = max(span_of(a), span_of(b))
    width = max(1, math.ceil(span / 1_000_000 / max_points))
    ta, tb = per_bucket(a, width), per_bucket(b, width)
    nan2 = (math.nan, math.nan)
    return tuple(
        TimelinePoint(
            s, ta.get(s, nan2)[0], tb.get(s, nan2)[0], ta.get(s, nan2)[1], tb.get(s, nan2)[1]
        )
        for s in sorted(set(ta) | set(tb))
    )
