"""Charts for the HTML report, drawn with matplotlib as inline SVG strings."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from pgtraffic.compare.model import Comparison
from pgtraffic.compare.render_text import short

BASE_COLOR = "#1f77b4"
CAND_COLOR = "#d62728"


def svg_of(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def distributions(c: Comparison) -> str | None:
    """Empirical CDFs of service time, baseline vs candidate, for the top classes."""
    if not c.samples:
        return None
    texts = {cls.fingerprint: cls for cls in c.classes}
    n = len(c.samples)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.8 * rows), squeeze=False)
    for ax, (fp, (base, cand)) in zip(axes.flat, c.samples.items(), strict=False):
        for values, color, label in (
            (base, BASE_COLOR, "baseline"),
            (cand, CAND_COLOR, "candidate"),
        ):
            if values:
                xs = np.sort(np.asarray(values))
                ax.step(
                    xs, np.arange(1, xs.size + 1) / xs.size, where="post", color=color, label=label
                )
        ax.set_xscale("log")
        cls = texts.get(fp)
        title = short(cls.text, 55) if cls else fp
        verdict = f" [{cls.verdict.value}]" if cls else ""
        ax.set_title(title + verdict, fontsize=8)
        ax.set_xlabel("service time (ms, log)", fontsize=8)
        ax.set_ylabel("fraction", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return svg_of(fig)


def timeline(c: Comparison) -> str | None:
    """p95 service time and p95 lag per second of the schedule, both runs."""
    if not c.timeline:
        return None
    xs = [p.second for p in c.timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    top.plot(xs, [p.baseline_p95_ms for p in c.timeline], color=BASE_COLOR, label="baseline")
    top.plot(xs, [p.candidate_p95_ms for p in c.timeline], color=CAND_COLOR, label="candidate")
    top.set_ylabel("p95 service (ms)")
    top.legend(fontsize=8)
    top.grid(True, alpha=0.3)
    bottom.plot(xs, [p.baseline_lag_p95_ms for p in c.timeline], color=BASE_COLOR)
    bottom.plot(xs, [p.candidate_lag_p95_ms for p in c.timeline], color=CAND_COLOR)
    fast = [
        side
        for side, run in (("baseline", c.baseline), ("candidate", c.candidate))
        if run.max_speed
    ]
    bottom.set_ylabel("p95 lag (ms)")
    if fast:
        # --max-speed has no schedule: its lag is not drawn (it would be meaningless).
        bottom.set_title(f"lag n/a for the {' and '.join(fast)} run (--max-speed)", fontsize=9)
    bottom.set_xlabel("seconds into the replay schedule")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    return svg_of(fig)


def ratios(c: Comparison, limit: int = 20) -> str | None:
    """Median ratio with its 95% interval for the classes with the most time."""
    classes = [cls for cls in c.classes if cls.ci_p50 is not None][:limit]
    if not classes:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(classes) + 1))
    ys = np.arange(len(classes))
    mids = [cls.ratio_p50 for cls in classes]
    # The interval comes from resamples and may not straddle the full-sample ratio:
    # an error bar cannot be negative, so such a side is drawn as zero.
    lows = [max(0.0, cls.ratio_p50 - cls.ci_p50.low) for cls in classes if cls.ci_p50]
    highs = [max(0.0, cls.ci_p50.high - cls.ratio_p50) for cls in classes if cls.ci_p50]
    colors = [
        CAND_COLOR
        if cls.verdict.value == "regressed"
        else "#2ca02c"
        if cls.verdict.value == "improved"
        else "#7f7f7f"
        for cls in classes
    ]
    ax.errorbar(mids, ys, xerr=[lows, highs], fmt="none", ecolor="#999999", capsize=3)
    ax.scatter(mids, ys, c=colors, zorder=3)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [short(cls.text, 60) for cls in classes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("candidate / baseline median service time (log scale, 95% CI)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return svg_of(fig)
