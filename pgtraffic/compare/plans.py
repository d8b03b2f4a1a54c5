"""EXPLAIN a representative statement of a class on both servers and compare shapes.

Plan *shape* is the tree of node types with the relations, indexes, join types and
strategies they use; costs, row estimates and expressions are left out, so only a
different way of executing the query counts as a change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pglast
import psycopg

from capture.records import Statement, StatementKind
from pgtraffic.compare.model import PlanDiff
from replay.conninfo import libpq_dsn

_SHAPE_KEYS = ("Join Type", "Strategy", "Scan Direction")
_EXPLAINABLE = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}


def plan_shape(plan: Mapping[str, Any], depth: int = 0) -> list[str]:
    """Lines of an indented plan tree: node type, relation, index (pure)."""
    parts = [str(plan.get("Node Type", "?"))]
    for key in _SHAPE_KEYS:
        if key in plan and not (key == "Scan Direction" and plan[key] == "Forward"):
            parts.append(f"[{plan[key]}]")
    if "Relation Name" in plan:
        parts.append(f"on {plan['Relation Name']}")
    if "Index Name" in plan:
        parts.append(f"using {plan['Index Name']}")
    lines = ["  " * depth + " ".join(parts)]
    for child in plan.get("Plans", ()):
        lines.extend(plan_shape(child, depth + 1))
    return lines


def explainable(sql: str) -> bool:
    """One statement of a kind EXPLAIN accepts (pure)."""
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return False
    return len(stmts) == 1 and type(stmts[0].stmt).__name__ in _EXPLAINABLE


_DEFAULTS = {"connect_timeout": "10", "fallback_application_name": "pgtraffic explain"}


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def explain_statement(conninfo: str, stmt: Statement, dbname: str | None) -> list[str]:
    """EXPLAIN (no ANALYZE: nothing runs) one statement; the plan's shape lines.

    ``conninfo`` is what libpq takes (a URI, key=value pairs; the environment, the
    service and password files apply); a malformed one is a ConninfoError (UsageError).
    """
    dsn = libpq_dsn(conninfo, os.environ, dbname=dbname or None, defaults=_DEFAULTS)
    conn = psycopg.connect(dsn, autocommit=True)
    with conn, conn.transaction(force_rollback=True):
        if stmt.kind is StatementKind.EXECUTE and stmt.params:
            conn.execute(f"PREPARE pgtraffic_explain AS {stmt.sql}".encode())
            args = ", ".join(_literal(p) for p in stmt.params)
            row = conn.execute(
                f"EXPLAIN (FORMAT JSON) EXECUTE pgtraffic_explain({args})".encode()
            ).fetchone()
        else:
            row = conn.execute(f"EXPLAIN (FORMAT JSON) {stmt.sql}".encode()).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return plan_shape(doc[0]["Plan"])


def _failure(exc: psycopg.Error) -> tuple[str, bool]:
    """The reason an EXPLAIN failed, and whether it was the connection (the server is
    unreachable for every class: no use trying it again)."""
    state = getattr(exc, "sqlstate", None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state is None or state[:2] in ("08", "28"):
        return f"cannot connect: {first}", True
    return f"EXPLAIN failed ({state}): {first}", False


def compare_plans(
    statements: Mapping[str, Statement],
    texts: Mapping[str, str],
    databases: Mapping[str, str | None],
    baseline_dsn: str,
    candidate_dsn: str,
    order: Sequence[str],
) -> tuple[PlanDiff, ...]:
    """EXPLAIN each class's representative statement on both servers.

    A class whose plan could not be had on a side is reported with that side and the
    reason (never as an unchanged plan); after a connection failure, a side (and
    database) is not tried again for the remaining classes, which get the same reason.
    """
    out = []
    unreachable: dict[tuple[str, str | None], str] = {}
    sides = (("baseline", baseline_dsn), ("candidate", candidate_dsn))
    for _, dsn in sides:
        libpq_dsn(dsn, os.environ)  # a malformed DSN: a UsageError before any EXPLAIN
    for fp in order:
        stmt = statements.get(fp)
        if stmt is None or not explainable(stmt.sql):
            continue
        db = databases.get(stmt.session)
        shapes: dict[str, list[str]] = {}
        errors: dict[str, str] = {}
        for side, dsn in sides:
            if (side, db) in unreachable:
                errors[side] = unreachable[side, db]
                continue
            try:
                shapes[side] = explain_statement(dsn, stmt, db)
            except psycopg.Error as exc:
                errors[side], lost = _failure(exc)
                if lost:
                    unreachable[side, db] = errors[side]
        text = texts.get(fp, fp)
        base, cand = shapes.get("baseline"), shapes.get("candidate")
        if base is None or cand is None:
            failed = "both" if len(errors) == 2 else next(iter(errors))
            reason = "; ".join(f"{side}: {why}" for side, why in errors.items())
            plans = ("\n".join(base or ()), "\n".join(cand or ()))
            out.append(PlanDiff(fp, text, stmt.sql, *plans, False, error=reason, failed=failed))
            continue
        out.append(PlanDiff(fp, text, stmt.sql, "\n".join(base), "\n".join(cand), base != cand))
    return tuple(out)
