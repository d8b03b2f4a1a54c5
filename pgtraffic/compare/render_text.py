"""Comparison as terminal tables (rich), JSON, Markdown and JUnit XML: strings out."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pgtraffic.compare.model import ClassComparison, Comparison, Verdict

VERDICT_STYLE = {
    Verdict.REGRESSED: "bold red",
    Verdict.IMPROVED: "bold green",
    Verdict.UNCHANGED: "",
    Verdict.TOO_FEW: "dim",
}


def ms(us: float) -> str:
    if math.isnan(us):
        return "-"
    return f"{us / 1000:.3f}"


def fmt_ratio(r: float) -> str:
    if math.isnan(r):
        return "-"
    if math.isinf(r):
        return "inf"
    return f"{r:.2f}x"


def short(text: str, width: int = 60) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def headline(c: Comparison) -> str:
    reg = len(c.by_verdict(Verdict.REGRESSED))
    imp = len(c.by_verdict(Verdict.IMPROVED))
    return (
        f"{reg} regressed, {imp} improved, {len(c.by_verdict(Verdict.UNCHANGED))} unchanged, "
        f"{len(c.by_verdict(Verdict.TOO_FEW))} with too few samples; "
        f"total time {fmt_ratio(c.total_ratio)}, geometric mean of class ratios "
        f"{fmt_ratio(c.geomean_ratio)}; {c.new_errors} statements with new or changed errors"
    )


def terminal(c: Comparison, *, limit: int = 25, width: int = 120) -> RenderableType:
    """Rich renderables: run summary, class table (worst first), divergences, plans.

    ``width`` is the terminal's: narrow ones get fewer columns.
    """
    parts: list[RenderableType] = [_runs_table(c), *_class_table(c, limit, width)]
    parts += _divergence_tables(c, limit)
    parts.append(Text(headline(c), style="bold"))
    return Group(*parts)


def _runs_table(c: Comparison) -> Table:
    runs = Table(title="Runs", show_lines=False)
    for col in ("", "baseline", "candidate"):
        runs.add_column(col)
    b, k = c.baseline, c.candidate
    runs.add_row("results", b.path, k.path)
    runs.add_row("server", b.label, k.label)
    runs.add_row("statements", f"{b.statements:,}", f"{k.statements:,}")
    runs.add_row("errors", b.errors_text(), k.errors_text())
    runs.add_row("throughput (stmt/s)", f"{b.throughput:,.0f}", f"{k.throughput:,.0f}")
    runs.add_row(
        "total service time (s)",
        f"{b.total_service_ms / 1000:,.2f}",
        f"{k.total_service_ms / 1000:,.2f}",
    )
    runs.add_row(
        "lag p50/p99/max (ms)",
        f"{b.lag_p50_ms:.1f} / {b.lag_p99_ms:.1f} / {b.lag_max_ms:.1f}",
        f"{k.lag_p50_ms:.1f} / {k.lag_p99_ms:.1f} / {k.lag_max_ms:.1f}",
    )
    runs.add_row(
        "fidelity",
        Text(b.fidelity_note, style="" if b.faithful else "bold yellow"),
        Text(k.fidelity_note, style="" if k.faithful else "bold yellow"),
    )
    return runs


def _class_table(c: Comparison, limit: int, width: int) -> list[RenderableType]:
    """The classes, worst first, as many columns as ``width`` holds."""
    parts: list[RenderableType] = []
    wide = width >= 130
    narrow = width < 100
    numeric = ["n", "p50 ms", "p95 ms", "p50 ratio [95% CI]"]
    if wide:
        numeric += ["q", "errors"]
    class_rows: list[tuple[ClassComparison, list[str]]] = []
    for cls in c.classes[:limit]:
        cells = [
            f"{max(cls.baseline.count, cls.candidate.count):,}",
            f"{ms(cls.baseline.p50)}→{ms(cls.candidate.p50)}",
            f"{ms(cls.baseline.p95)}→{ms(cls.candidate.p95)}",
            _ratio_ci(cls),
        ]
        if wide:
            cells += [
                "-" if math.isnan(cls.q_value) else f"{cls.q_value:.2g}",
                f"{cls.baseline_errors}/{cls.candidate_errors}",
            ]
        if narrow:
            del cells[2]  # p95 (in --json/--html)
        class_rows.append((cls, cells))
    if narrow:
        numeric.remove("p95 ms")
    widths = [max([len(h)] + [len(r[1][k]) for r in class_rows]) for k, h in enumerate(numeric)]
    verdict_width = max([len("verdict")] + [len(cls.verdict.value) for cls, _ in class_rows])
    text_width = max(16, width - sum(widths) - verdict_width - 2 * (len(numeric) + 2) - 6)
    table = Table(title=f"Query classes (worst first; {len(c.classes)} in all)", box=box.SIMPLE)
    table.add_column("verdict", no_wrap=True, min_width=verdict_width)
    table.add_column(
        "query class", no_wrap=True, overflow="ellipsis", max_width=min(text_width, 70), ratio=1
    )
    for col, w in zip(numeric, widths, strict=True):
        table.add_column(col, justify="right", no_wrap=True, min_width=w)
    for cls, cells in class_rows:
        table.add_row(
            Text(cls.verdict.value, style=VERDICT_STYLE[cls.verdict]), short(cls.text, 70), *cells
        )
    parts.append(table)
    if len(c.classes) > limit:
        parts.append(Text(f"... {len(c.classes) - limit} more classes (see --json/--html)"))
    return parts


def _divergence_tables(c: Comparison, limit: int) -> list[RenderableType]:
    """Error divergence, row-count mismatches and plan changes (what there is of them)."""
    parts: list[RenderableType] = []
    if c.errors:
        err = Table(title="Error divergence")
        for col in ("change", "query class", "baseline", "candidate", "count", "example"):
            err.add_column(col)
        for d in c.errors[:limit]:
            ex = d.examples[0] if d.examples else None
            err.add_row(
                Text(d.change, style="bold red" if d.change != "resolved" else "green"),
                short(d.text, 40),
                d.baseline_sqlstate or "ok",
                d.candidate_sqlstate or "ok",
                f"{d.count:,}",
                short(ex.sql or f"{ex.session}#{ex.index}", 40) if ex else "",
            )
        parts.append(err)
    if c.rows:
        rows = Table(title="Row-count mismatches")
        for col in ("query class", "mismatched", "example"):
            rows.add_column(col)
        for m in c.rows[:limit]:
            rows.add_row(
                short(m.text, 50),
                f"{m.count:,} of {m.compared:,}",
                m.examples[0].detail if m.examples else "",
            )
        parts.append(rows)
    changed = [p for p in c.plans if p.changed]
    if c.plans:
        plans = Table(title=f"Plans ({len(changed)} of {len(c.plans)} explained classes changed)")
        for col in ("query class", "baseline plan", "candidate plan"):
            plans.add_column(col)
        for p in changed:
            plans.add_row(short(p.text, 40), p.baseline_plan, p.candidate_plan)
        if changed:
            parts.append(plans)
        else:
            parts.append(Text(f"Plans: no change in the {len(c.plans)} explained classes"))
    return parts


def _ratio_ci(cls: ClassComparison) -> str:
    text = fmt_ratio(cls.ratio_p50)
    if cls.ci_p50 is not None:
        text += f" [{cls.ci_p50.low:.2f}, {cls.ci_p50.high:.2f}]"
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_json(c: Comparison) -> str:
    data = dataclasses.asdict(c)
    data.pop("samples", None)
    data["summary"] = {
        "headline": headline(c),
        "regressed": len(c.by_verdict(Verdict.REGRESSED)),
        "improved": len(c.by_verdict(Verdict.IMPROVED)),
        "unchanged": len(c.by_verdict(Verdict.UNCHANGED)),
        "too_few_samples": len(c.by_verdict(Verdict.TOO_FEW)),
        "new_errors": c.new_errors,
        "baseline_error_rate": c.baseline.error_rate,
        "candidate_error_rate": c.candidate.error_rate,
        "row_mismatches": sum(m.count for m in c.rows),
        "changed_plans": sum(1 for p in c.plans if p.changed),
    }
    return json.dumps(_clean(data), indent=2, default=str)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(c: Comparison, *, limit: int = 30) -> str:
    b, k = c.baseline, c.candidate
    out = [
        "## pgtraffic comparison",
        "",
        f"**{headline(c)}**",
        "",
        "| | baseline | candidate |",
        "|---|---|---|",
        f"| server | {_md(b.label)} | {_md(k.label)} |",
        f"| statements | {b.statements:,} | {k.statements:,} |",
        f"| errors | {b.errors_text()} | {k.errors_text()} |",
        f"| throughput (stmt/s) | {b.throughput:,.0f} | {k.throughput:,.0f} |",
        f"| lag p99 (ms) | {b.lag_p99_ms:.1f} | {k.lag_p99_ms:.1f} |",
        f"| fidelity | {_md(b.fidelity_note)} | {_md(k.fidelity_note)} |",
        "",
        "| verdict | query class | n | p50 ms | p95 ms | p50 ratio [95% CI] | q |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for cls in c.classes[:limit]:
        out.append(
            f"| {cls.verdict.value} | `{_md(short(cls.text, 70))}` | "
            f"{cls.baseline.count:,}/{cls.candidate.count:,} | "
            f"{ms(cls.baseline.p50)} → {ms(cls.candidate.p50)} | "
            f"{ms(cls.baseline.p95)} → {ms(cls.candidate.p95)} | {_ratio_ci(cls)} | "
            f"{'-' if math.isnan(cls.q_value) else f'{cls.q_value:.2g}'} |"
        )
    if c.errors:
        out += [
            "",
            "### Error divergence",
            "",
            "| change | query class | baseline | candidate | count |",
            "|---|---|---|---|--:|",
        ]
        for d in c.errors[:limit]:
            out.append(
                f"| {d.change} | `{_md(short(d.text, 70))}` | {d.baseline_sqlstate or 'ok'} "
                f"| {d.candidate_sqlstate or 'ok'} | {d.count:,} |"
            )
    if c.rows:
        out += [
            "",
            "### Row-count mismatches",
            "",
            "| query class | mismatched | example |",
            "|---|--:|---|",
        ]
        for m in c.rows[:limit]:
            out.append(
                f"| `{_md(short(m.text, 70))}` | {m.count:,} of {m.compared:,} | "
                f"{m.examples[0].detail if m.examples else ''} |"
            )
    changed = [p for p in c.plans if p.changed]
    if changed:
        out += ["", "### Changed plans"]
        for p in changed:
            out += [
                "",
                f"`{_md(short(p.text, 90))}`",
                "",
                "```",
                "baseline:",
                p.baseline_plan,
                "candidate:",
                p.candidate_plan,
                "```",
            ]
    return "\n".join(out) + "\n"


def to_junit(c: Comparison) -> str:
    """One test case per query class plus one per error divergence; failures are findings."""
    cases = []
    failures = 0
    for cls in c.classes:
        body = ""
        if cls.verdict is Verdict.REGRESSED:
            failures += 1
            msg = (
                f"p50 {ms(cls.baseline.p50)} ms -> {ms(cls.candidate.p50)} ms "
                f"({fmt_ratio(cls.ratio_p50)}, q={cls.q_value:.2g})"
            )
            body = f'<failure message={quoteattr(msg)} type="regression"/>'
        cases.append(
            f'<testcase classname="pgtraffic.latency" name={quoteattr(short(cls.text, 120))} '
            f'time="{0 if math.isnan(cls.candidate.mean) else cls.candidate.mean / 1e6:.6f}">'
            f"{body}</testcase>"
        )
    for d in c.errors:
        if d.change == "resolved":
            continue
        failures += 1
        msg = (
            f"{d.count} statements: {d.baseline_sqlstate or 'ok'} -> {d.candidate_sqlstate or 'ok'}"
        )
        cases.append(
            f'<testcase classname="pgtraffic.errors" name={quoteattr(short(d.text, 120))}>'
            f'<failure message={quoteattr(msg)} type="{escape(d.change)}-error"/></testcase>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="pgtraffic compare" tests="{len(cases)}" failures="{failures}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )
