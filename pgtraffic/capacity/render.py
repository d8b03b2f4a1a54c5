"""A capacity sweep (or several side by side: 16 vs 18, before vs after) as one HTML page.

Charts, drawn with matplotlib as inline SVG (nothing fetched, no JavaScript):
achieved against offered statements/s, p99 against offered overall and per class,
and the wait events of active backends step by step.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from capture.fields import field_dict
from pgtraffic.capacity.sweep import Sweep
from pgtraffic.compare.charts import svg_of

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _label(sweep: Sweep) -> str:
    version = sweep.target.get("server_version") or sweep.target.get("version") or ""
    host = sweep.target.get("host") or ""
    where = f"{host} {version}".strip()
    if sweep.name:
        return f"{sweep.name} ({where})" if where else sweep.name
    return where or sweep.workload


@dataclass(frozen=True, slots=True)
class KneeRow:
    """One run's knee in a comparison, and its ratio to the first run's."""

    label: str
    knee_statements_per_s: float | None
    load: str
    ratio: float | None
    """This knee over the first run's (None when either has no knee)."""
    reason: str

    def describe(self) -> str:
        if self.knee_statements_per_s is None:
            return f"{self.label}: no knee ({self.reason})"
        ratio = f", {self.ratio:.2f}x the first run's" if self.ratio is not None else ""
        return (
            f"{self.label}: knee {self.knee_statements_per_s:,.0f} statements/s at "
            f"{self.load}{ratio}"
        )

    def to_json(self) -> dict[str, Any]:
        return field_dict(self)


def knee_ratios(sweeps: Sequence[Sweep]) -> list[KneeRow]:
    """The knees of ``sweeps`` side by side, each against the first (pure)."""
    rows = []
    first = sweeps[0].knee.achieved_statements_per_s if sweeps else None
    for sweep in sweeps:
        knee = sweep.knee
        at = [s for s in sweep.steps if s.index == knee.step]
        value = knee.achieved_statements_per_s
        rows.append(
            KneeRow(
                label=_label(sweep),
                knee_statements_per_s=value,
                load=at[0].load_text if at else "-",
                ratio=value / first if value is not None and first else None,
                reason=knee.reason,
            )
        )
    return rows


def _knees_table(sweeps: Sequence[Sweep]) -> str:
    head = "<tr><th>run</th><th>knee statements/s</th><th>at</th><th>ratio</th><th>why</th></tr>"
    rows = []
    for row in knee_ratios(sweeps):
        value = "-" if row.knee_statements_per_s is None else f"{row.knee_statements_per_s:,.0f}"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}&times;"
        rows.append(
            f"<tr><td>{html.escape(row.label)}</td><td>{value}</td><td>{html.escape(row.load)}"
            f"</td><td>{ratio}</td><td style='text-align:left'>{html.escape(row.reason)}</td></tr>"
        )
    return f"<h2>Knees side by side</h2><table>{head}{''.join(rows)}</table>"


def _statements_table(sweep: Sweep) -> str:
    if sweep.statements_note:
        return f"<p class='warn'>{html.escape(sweep.statements_note)}</p>"
    rows = []
    for s in sweep.steps:
        for t in s.top_statements[:5]:
            rows.append(
                f"<tr><td>{s.index + 1}</td><td>{t.calls:,}</td><td>{t.total_exec_ms:,.1f}</td>"
                f"<td>{t.mean_exec_ms:.3f}</td><td>{t.shared_blks_read:,}</td>"
                f"<td style='text-align:left'><code>{html.escape(t.query[:200])}</code></td></tr>"
            )
    if not rows:
        return ""
    head = (
        "<tr><th>step</th><th>calls</th><th>total ms</th><th>mean ms</th>"
        "<th>blocks read</th><th>statement</th></tr>"
    )
    return (
        f"<h3>Top statements per step (pg_stat_statements)</h3><table>{head}{''.join(rows)}</table>"
    )


def throughput_chart(sweeps: Sequence[Sweep]) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    top = 0.0
    for color, sweep in zip(COLORS, sweeps, strict=False):
        offered = [s.offered_statements_per_s for s in sweep.steps]
        top = max([top, *offered])
        left.plot(
            offered,
            [s.achieved_statements_per_s for s in sweep.steps],
            "o-",
            color=color,
            label=_label(sweep),
        )
        right.plot(offered, [s.p99_ms for s in sweep.steps], "o-", color=color)
        if sweep.knee.achieved_statements_per_s is not None:
            left.axhline(sweep.knee.achieved_statements_per_s, color=color, ls=":", lw=1)
    left.plot([0, top], [0, top], color="#999", lw=1, ls="--", label="achieved = offered")
    left.set_xlabel("offered statements/s")
    left.set_ylabel("achieved statements/s")
    left.legend(fontsize=8)
    right.set_xlabel("offered statements/s")
    right.set_ylabel("p99 service time (ms)")
    right.set_yscale("log")
    return svg_of(fig)


def class_chart(sweep: Sweep) -> str | None:
    if not sweep.steps or not sweep.steps[0].classes:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.6))
    fingerprints = [c.fingerprint for c in sweep.steps[0].classes]
    for fp in fingerprints:
        points = [
            (s.offered_statements_per_s, c.p99_ms)
            for s in sweep.steps
            for c in s.classes
            if c.fingerprint == fp
        ]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=fp[:12])
    ax.set_xlabel("offered statements/s")
    ax.set_ylabel("p99 by class (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    return svg_of(fig)


def waits_chart(sweep: Sweep) -> str | None:
    kinds = sorted({k for s in sweep.steps for k in s.waits})
    if not kinds:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.2))
    labels = [f"x{s.speed:g}" for s in sweep.steps]
    bottom = [0.0] * len(sweep.steps)
    for kind in kinds:
        shares = [s.waits.get(kind, 0.0) for s in sweep.steps]
        ax.bar(labels, shares, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
    ax.set_ylabel("share of active backends")
    ax.legend(fontsize=7, ncol=4)
    return svg_of(fig)


def _table(sweep: Sweep) -> str:
    head = (
        "<tr><th>step</th><th>speed</th><th>scale</th><th>offered/s</th><th>achieved/s</th>"
        "<th>p99 ms</th><th>errors</th><th>sync wait s</th><th>active backends</th>"
        "<th>reset s</th></tr>"
    )
    rows = []
    for s in sweep.steps:
        knee = " class='knee'" if sweep.knee.step == s.index else ""
        errors = ", ".join(f"{k}&times;{v}" for k, v in s.errors.items()) or "-"
        rows.append(
            f"<tr{knee}><td>{s.index + 1}</td><td>{s.speed:g}</td><td>&times;{s.scale}</td>"
            f"<td>{s.offered_statements_per_s:,.0f}</td><td>{s.achieved_statements_per_s:,.0f}</td>"
            f"<td>{s.p99_ms:.2f}</td><td>{errors}</td><td>{s.sync_wait_s:.2f}</td>"
            f"<td>{s.active_backends:.1f}</td>"
            f"<td>{s.reset_s:.1f}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def to_html(sweeps: Sequence[Sweep]) -> str:
    """One self-contained page for one sweep, or several compared side by side."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>pgtraffic capacity</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
        "text-align:right}tr.knee{background:#fff3c4}.warn{color:#a00}</style>",
        "<h1>Capacity</h1>",
        throughput_chart(sweeps),
    ]
    if len(sweeps) > 1:
        parts.append(_knees_table(sweeps))
    for sweep in sweeps:
        parts.append(f"<h2>{html.escape(_label(sweep))}</h2>")
        if not sweep.complete:
            parts.append("<p class='warn'>The sweep stopped early: later steps are missing.</p>")
        parts.append(f"<p><b>Knee:</b> {html.escape(sweep.knee.reason)}</p>")
        parts += [f"<p>{html.escape(c)}</p>" for c in sweep.knee.culprits]
        parts.append(
            f"<p>sync: {html.escape(sweep.sync_reason or sweep.sync)}</p>"
            f"<p>reset: {html.escape(sweep.reset)}, scale: {html.escape(sweep.scale)}, SLOs: "
            f"{html.escape(', '.join(sweep.slos) or 'none')}</p>"
        )
        parts.append(_table(sweep))
        parts.append(_statements_table(sweep))
        parts += [c for c in (class_chart(sweep), waits_chart(sweep)) if c]
    return "\n".join(parts)
