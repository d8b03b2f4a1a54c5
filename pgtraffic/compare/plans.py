"""EXPLAIN a representative statement of a class on both servers and compare shapes.

Plan *shape* is the tree of node types with the relations, indexes, join types and
strategies they use; costs, row estimates and expressions are left out, so only a
different way of executing the query counts as a change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pglast
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from capture.records import Statement, StatementKind
from pgtraffic.compare.model import PlanDiff

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


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def explain_statement(conninfo: str, stmt: Statement, dbname: str | None) -> list[str]:
    """EXPLAIN (no ANALYZE: nothing runs) one statement; the plan's shape lines."""
    params = conninfo_to_dict(conninfo)
    if dbname:
        params["dbname"] = dbname
    conn = psycopg.connect(make_conninfo("", **params), autocommit=True, connect_timeout=10)
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


def compare_plans(
    statements: Mapping[str, Statement],
    texts: Mapping[str, str],
    databases: Mapping[str, str | None],
    baseline_dsn: str,
    candidate_dsn: str,
    order: Sequence[str],
) -> tuple[PlanDiff, ...]:
    """EXPLAIN each class's representative statement on both servers."""
    out = []
    for fp in order:
        stmt = statements.get(fp)
        if stmt is None or not explainable(stmt.sql):
            continue
        db = databases.get(stmt.session)
        try:
            base = explain_statement(baseline_dsn, stmt, db)
            cand = explain_statement(candidate_dsn, stmt, db)
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None) or "connection"
            out.append(
                PlanDiff(
                    fp,
                    texts.get(fp, fp),
                    stmt.sql,
                    "",
                    "",
                    False,
                    error=f"EXPLAIN failed ({state}): {str(exc).strip().splitlines()[0]}",
                )
            )
            continue
        out.append(
            PlanDiff(
                fp, texts.get(fp, fp), stmt.sql, "\n".join(base), "\n".join(cand), base != cand
            )
        )
    return tuple(out)
