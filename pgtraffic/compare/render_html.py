"""The self-contained HTML report: summary, class table, charts, divergences, plans."""

from __future__ import annotations

import math

import jinja2

from pgtraffic.compare import charts
from pgtraffic.compare.model import Comparison, Verdict
from pgtraffic.compare.render_text import (
    completeness_text,
    floor_text,
    fmt_ratio,
    headline,
    incomplete_lines,
    ms,
    noise_lines,
    plan_problem_lines,
)

_TEMPLATE = "report.html.j2"


def to_html(c: Comparison, *, version: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pgtraffic.compare", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    template = env.get_template(_TEMPLATE)
    return template.render(
        c=c,
        th=c.thresholds,
        headline=headline(c),
        incomplete=incomplete_lines(c),
        plan_problems=plan_problem_lines(c),
        noise=noise_lines(c),
        floor=floor_text,
        completeness=completeness_text,
        ratio_svg=charts.ratios(c),
        dist_svg=charts.distributions(c),
        time_svg=charts.timeline(c),
        css={
            Verdict.REGRESSED: "regressed",
            Verdict.IMPROVED: "improved",
            Verdict.UNCHANGED: "",
            Verdict.TOO_FEW: "too-few",
        },
        ms=ms,
        ratio=fmt_ratio,
        q=lambda v: "-" if math.isnan(v) else f"{v:.2g}",
        version=version,
    )
