"""Comparison as terminal tables (rich), JSON, Markdown and JUnit XML: strings out."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any
from xml.sax.saxutils import quoteattr

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pgtraffic.compare.model import ClassComparison, Comparison, RunSummary, Verdict

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


def incomplete_lines(c: Comparison) -> list[str]:
    """One line per incomplete run: which, and why (empty when both are complete)."""
    return [
        f"the {side} run ({run.path}) is INCOMPLETE: {'; '.join(run.completeness.reasons())}. "
        "Its verdicts cover only what ran; replay it again, or pass --allow-incomplete "
        "to accept it"
        for side, run in c.incomplete_runs()
    ]


def noise_lines(c: Comparison) -> list[str]:
    """How far the verdicts can be trusted on this machine: rounds, drift, targets."""
    r = c.rounds
    if r is None:
        lines = [
            "one run a side: no noise floor was measured, so a verdict rests on a single "
            "pair of replays (the spread between two runs on one machine is a few percent); "
            "rehearse --rounds 3, or several results files a side, measures it"
        ]
    else:
        lines = [
            f"{r.baseline} baseline and {r.candidate} candidate rounds: verdicts come from "
            f"the spread between rounds ({r.statements:,} statements that succeeded in every "
            "round), each class with its own noise floor"
        ]
        if r.concurrent:
            lines.append(
                "each baseline round ran at the same time as its candidate round (replayed "
                "concurrently): the machine's state in a round fell on both sides alike, but "
                "the two replays shared the machine"
            )
        if r.drift is not None:
            d = r.drift
            way = "slower" if d.ratio > 1 else "faster"
            lines.append(
                f"drift: the candidate side is {abs(d.ratio - 1):.1%} {way} in {d.share:.0%} of "
                f"{d.classes} classes, a shift shared by nearly all of them (the machine's state, "
                "or one side's server kept busy by a few heavy classes; not one query): "
                "reported once here and factored out of each class's verdict"
            )
    if c.targets:
        lines.append("the targets differ in more than the version:")
        lines += [f"  {line}" for line in c.targets.lines()]
    if c.targets is not None:
        lines += [f"unknown whether the targets differ: {note}" for note in c.targets.unknown]
    return lines


def floor_text(cls: ClassComparison) -> str:
    """The class's noise floor: changes smaller than this cannot be told from noise."""
    if cls.rounds is None or cls.rounds.floor is None:
        return "-"
    return f"±{cls.rounds.floor:.0%}"


def plan_problem_lines(c: Comparison) -> list[str]:
    """Why plans (some or all) could not be compared, in a few lines."""
    if c.explain_error is not None:
        return [f"plans were not compared: {c.explain_error}"]
    missing = c.unexplained
    if not missing:
        return []
    reasons: dict[str, int] = {}
    for p in missing:
        reasons[p.error or "?"] = reasons.get(p.error or "?", 0) + 1
    lines = [f"plans of {len(missing)} of {len(c.plans)} explained classes could not be compared:"]
    lines += [f"  {n} x {why}" for why, n in reasons.items()]
    return lines


def completeness_text(run: RunSummary) -> str:
    return "yes" if run.complete else "NO: " + "; ".join(run.completeness.reasons())


def headline(c: Comparison) -> str:
    reg = len(c.by_verdict(Verdict.REGRESSED))
    imp = len(c.by_verdict(Verdict.IMPROVED))
    sides = [side for side, _ in c.incomplete_runs()]
    prefix = (
        f"INCOMPLETE ({' and '.join(sides)} run{'s' if len(sides) > 1 else ''}): " if sides else ""
    )
    return prefix + (
        f"{reg} regressed, {imp} improved, {len(c.by_verdict(Verdict.UNCHANGED))} unchanged, "
        f"{len(c.by_verdict(Verdict.TOO_FEW))} with too few samples; "
        f"total time {fmt_ratio(c.total_ratio)}, geometric mean of class ratios "
        f"{fmt_ratio(c.geomean_ratio)}; {c.new_errors} statements with new or changed errors"
    )


def terminal(c: Comparison, *, limit: int = 25, width: int = 120) -> RenderableType:
    """Rich renderables: run summary, class table (worst first), divergences, plans.

    ``width`` is the terminal's: narrow ones get fewer columns.
    """
    noise = [Text(line, style="dim") for line in noise_lines(c)]
    parts: list[RenderableType] = [
        *_banners(c),
        _runs_table(c),
        *noise,
        *_class_table(c, limit, width),
    ]
    parts += _divergence_tables(c, limit)
    parts += _plan_tables(c)
    parts.append(Text(headline(c), style="bold red" if c.incomplete_runs() else "bold"))
    return Group(*parts)


def _banners(c: Comparison) -> list[RenderableType]:
    """What must be read before any verdict: incomplete runs, odd inputs."""
    out: list[RenderableType] = []
    lines = incomplete_lines(c)
    if lines:
        out.append(
            Panel(Text("\n".join(lines)), title="INCOMPLETE RUN", style="bold red", box=box.HEAVY)
        )
    for notice in c.notices:
        out.append(Text(f"warning: {notice}", style="bold yellow"))
    return out


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
        "complete",
        Text(completeness_text(b), style="" if b.complete else "bold red"),
        Text(completeness_text(k), style="" if k.complete else "bold red"),
    )
    runs.add_row("lag p50/p99/max (ms)", b.lag_text(), k.lag_text())
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
    rounds = c.rounds is not None
    if rounds:
        numeric.append("floor")
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
        if rounds:
            cells.append(floor_text(cls))
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
    """Error divergence and row-count mismatches (what there is of them)."""
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
    return parts


def _plan_tables(c: Comparison) -> list[RenderableType]:
    """Changed plans side by side, and the plans that could not be compared (never
    counted as unchanged)."""
    parts: list[RenderableType] = []
    changed = [p for p in c.plans if p.changed]
    compared = [p for p in c.plans if p.compared]
    if changed:
        plans = Table(title=f"Plans ({len(changed)} of {len(compared)} compared classes changed)")
        for col in ("query class", "baseline plan", "candidate plan"):
            plans.add_column(col)
        for p in changed:
            plans.add_row(short(p.text, 40), p.baseline_plan, p.candidate_plan)
        parts.append(plans)
    elif compared:
        parts.append(Text(f"Plans: no change in the {len(compared)} compared classes"))
    if c.unexplained:
        missing = Table(title="Plans not compared", title_style="bold red")
        for col in ("query class", "failed on", "why"):
            missing.add_column(col)
        for p in c.unexplained:
            missing.add_row(short(p.text, 40), p.failed or "?", p.error or "")
        parts.append(missing)
    if c.explain_error is not None:
        parts.append(Text(f"Plans were not compared: {c.explain_error}", style="bold red"))
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
        "plans_not_compared": len(c.unexplained),
        "explain_error": c.explain_error,
    }
    data["complete"] = not c.incomplete_runs()
    data["incomplete"] = {
        side: list(run.completeness.reasons()) for side, run in c.incomplete_runs()
    }
    data["notices"] = list(c.notices)
    data["noise"] = noise_lines(c)
    return json.dumps(_clean(data), indent=2, default=str)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(c: Comparison, *, limit: int = 30) -> str:
    b, k = c.baseline, c.candidate
    out = ["## pgtraffic comparison", ""]
    out += [f"> **:warning: {_md(line)}**\n" for line in incomplete_lines(c)]
    out += [f"> **warning:** {_md(notice)}\n" for notice in c.notices]
    out += [
        f"**{headline(c)}**",
        "",
        "| | baseline | candidate |",
        "|---|---|---|",
        f"| server | {_md(b.label)} | {_md(k.label)} |",
        f"| complete | {_md(completeness_text(b))} | {_md(completeness_text(k))} |",
        f"| statements | {b.statements:,} | {k.statements:,} |",
        f"| errors | {b.errors_text()} | {k.errors_text()} |",
        f"| throughput (stmt/s) | {b.throughput:,.0f} | {k.throughput:,.0f} |",
        f"| lag p50 / p99 / max (ms) | {_md(b.lag_text())} | {_md(k.lag_text())} |",
        f"| fidelity | {_md(b.fidelity_note)} | {_md(k.fidelity_note)} |",
        "",
        *[f"_{_md(line)}_  " for line in noise_lines(c)],
        "",
        "| verdict | query class | n | p50 ms | p95 ms | p50 ratio [95% CI] | floor | q |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for cls in c.classes[:limit]:
        out.append(
            f"| {cls.verdict.value} | `{_md(short(cls.text, 70))}` | "
            f"{cls.baseline.count:,}/{cls.candidate.count:,} | "
            f"{ms(cls.baseline.p50)} → {ms(cls.candidate.p50)} | "
            f"{ms(cls.baseline.p95)} → {ms(cls.candidate.p95)} | {_ratio_ci(cls)} | "
            f"{floor_text(cls)} | {'-' if math.isnan(cls.q_value) else f'{cls.q_value:.2g}'} |"
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
    out += _markdown_plan_problems(c, limit)
    return "\n".join(out) + "\n"


def _markdown_plan_problems(c: Comparison, limit: int) -> list[str]:
    problems = plan_problem_lines(c)
    if not problems:
        return []
    out = ["", "### Plans not compared", "", f"**{_md(problems[0])}**"]
    if c.unexplained:
        out += ["", "| query class | failed on | why |", "|---|---|---|"]
        out += [
            f"| `{_md(short(p.text, 70))}` | {p.failed} | {_md(p.error or '')} |"
            for p in c.unexplained[:limit]
        ]
    return out


def _case(classname: str, name: str, failure: tuple[str, str] | None, time: str = "") -> str:
    """A JUnit testcase; ``failure`` is (type, message)."""
    attrs = f'classname="{classname}" name={quoteattr(short(name, 120))}'
    if time:
        attrs += f' time="{time}"'
    body = ""
    if failure is not None:
        body = f"<failure message={quoteattr(failure[1])} type={quoteattr(failure[0])}/>"
    return f"<testcase {attrs}>{body}</testcase>"


def _run_cases(c: Comparison) -> list[str]:
    """One case per side: the run is complete (a failure when it is not)."""
    cases = []
    for side, run in (("baseline", c.baseline), ("candidate", c.candidate)):
        failure = None
        if not run.complete:
            failure = ("incomplete-run", f"{run.path}: " + "; ".join(run.completeness.reasons()))
        cases.append(_case("pgtraffic.runs", f"the {side} run is complete", failure))
    return cases


def _plan_cases(c: Comparison) -> list[str]:
    """One case per explained class (changed or not compared: a failure)."""
    cases = []
    for p in c.plans:
        failure = None
        if not p.compared:
            failure = ("plan-not-compared", f"{p.failed}: {p.error}")
        elif p.changed:
            failure = (
                "plan-changed",
                f"baseline:\n{p.baseline_plan}\ncandidate:\n{p.candidate_plan}",
            )
        cases.append(_case("pgtraffic.plans", p.text, failure))
    if c.explain_error is not None:
        failure = ("plan-not-compared", c.explain_error)
        cases.append(_case("pgtraffic.plans", "plans were compared", failure))
    return cases


def to_junit(c: Comparison) -> str:
    """A test case per run (complete?), per query class, per error divergence and per
    explained plan; failures are findings (and incomplete runs, plans not compared)."""
    cases = _run_cases(c)
    for cls in c.classes:
        failure = None
        if cls.verdict is Verdict.REGRESSED:
            failure = (
                "regression",
                f"p50 {ms(cls.baseline.p50)} ms -> {ms(cls.candidate.p50)} ms "
                f"({fmt_ratio(cls.ratio_p50)}, q={cls.q_value:.2g})",
            )
        mean = 0 if math.isnan(cls.candidate.mean) else cls.candidate.mean / 1e6
        cases.append(_case("pgtraffic.latency", cls.text, failure, f"{mean:.6f}"))
    for d in c.errors:
        if d.change == "resolved":
            continue
        msg = (
            f"{d.count} statements: {d.baseline_sqlstate or 'ok'} -> {d.candidate_sqlstate or 'ok'}"
        )
        cases.append(_case("pgtraffic.errors", d.text, (f"{d.change}-error", msg)))
    cases += _plan_cases(c)
    failures = sum("<failure " in case for case in cases)
    props = [("baseline.complete", str(c.baseline.complete).lower())]
    props += [("candidate.complete", str(c.candidate.complete).lower())]
    props += [(f"notice.{i + 1}", notice) for i, notice in enumerate(c.notices)]
    properties = "".join(f"<property name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in props)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="pgtraffic compare" tests="{len(cases)}" failures="{failures}">\n'
        f"<properties>{properties}</properties>\n" + "\n".join(cases) + "\n</testsuite>\n"
    )
