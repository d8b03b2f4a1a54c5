"""Which rows a statement touches, for the row-level commit clock (``--sync rows``).

Pure: SQL text in, :class:`KeyPlan` out (once per query class), then the key
values of each statement of that class from its text or its bind parameters
(:func:`key_values`, once per statement, no parsing).

A plan exists only for the simplest and commonest shapes, where the rows touched
are named by an equality on one column of one relation:

* ``SELECT ... FROM rel WHERE col = <value> [AND ...]`` (``FOR UPDATE`` too),
* ``UPDATE rel SET ... WHERE col = <value> [AND ...]``,
* ``DELETE FROM rel WHERE col = <value> [AND ...]``,
* ``INSERT INTO rel (cols) VALUES (<one row>)``,

with ``<value>`` a constant or a ``$n`` parameter, and nothing else that could
reach other rows or relations: no join, subquery, CTE, ``USING``/``FROM`` list,
``ON CONFLICT`` or set operation. Anything else has no plan and is ordered by
relation (or globally) as before. Plans are built from the parse tree's node
locations; a constant's value is then found in other texts of the class as the
n-th literal of :data:`LITERALS`, which the plan checks against PostgreSQL's own
scanner once (a text the two disagree on gets no plan).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import pglast.parser

LITERALS = re.compile(
    r"['0-9](?:(?<=')[^']*(?:''[^']*)*'|(?<=[0-9])[0-9]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
)
"""String literals and runs of digits (unsigned numbers, and digits in names such as
``t1`` or ``$1``), in text order. Every match starts with a quote or a digit, which
lets the regex engine skip to candidates (three times faster than a pattern whose
number branch starts with a look-behind); digits in names are matches too, in the
same places in every text of a class, and a plan only uses matches the scanner
confirms as constants."""


def _unsafe(sql: str) -> bool:
    """Literal boundaries are not plain in ``sql`` (escapes, dollar quotes, comments)."""
    return "\\" in sql or "$$" in sql or "--" in sql or "/*" in sql


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_PLAIN_DIGITS = 30
"""Numbers whose magnitude is within this many digits of 1 are written out in full."""
_CONST_TOKENS = frozenset({"ICONST", "FCONST", "SCONST"})


class Access(enum.IntEnum):
    """What a keyed statement does to the rows its key names."""

    READ = 0
    """Reads them (SELECT)."""
    CHANGE = 1
    """Changes, deletes or locks them (UPDATE, DELETE, SELECT ... FOR UPDATE)."""
    INSERT = 2
    """Makes new rows with these column values."""


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """How to find the rows a statement of one class touches."""

    access: Access
    relation: str
    """Bare name of the one relation it touches."""
    columns: tuple[str, ...]
    """READ / CHANGE: the one key column; INSERT: the columns given a known value."""
    sources: tuple[int, ...]
    """Where each column's value is: ``n >= 1`` is bind parameter ``$n``, ``n <= 0``
    the ``-n``-th (0-based) match of :data:`LITERALS` in the text."""
    literals: int
    """How many :data:`LITERALS` matches the class's texts have (-1: none is used)."""

    writes: bool = False
    """It changes or inserts rows (set from ``access``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "writes", self.access is not Access.READ)


def canonical(value: str) -> str:
    """A key value made comparable across spellings (``5``, ``'5'``, ``5.0``, ``05``,
    ``5e0`` are one key): numbers in plain decimal without leading zeros, integral
    ones without a fraction (in scientific notation, exact, beyond 30 digits either
    side of the point: ``1e999999`` must not become a million digits); anything else
    as it is."""
    if value.isdigit() and value.isascii():  # the usual key: a plain integer
        digits = value.lstrip("0") or "0"
        if len(digits) <= _PLAIN_DIGITS:
            return digits
    if _NUMBER.fullmatch(value):
        try:
            number = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern is a Decimal literal
            return value
        if not -_PLAIN_DIGITS < number.adjusted() < _PLAIN_DIGITS:
            exact = Context(prec=max(1, len(number.as_tuple().digits)))
            return str(number.normalize(exact))
        if number == number.to_integral_value():
            return str(int(number))
        return format(number, "f").rstrip("0")  # exact: no context rounding
    return value


def key_values(
    plan: KeyPlan, sql: str, params: tuple[str | None, ...] | None
) -> tuple[str, ...] | None:
    """The canonical values of ``plan``'s columns in this statement, or None when
    they cannot be told (a NULL, a missing parameter, a text the literal scan may
    misread): the statement is then ordered by relation, as if it had no plan."""
    literals: list[str] = []
    if plan.literals >= 0:
        if _unsafe(sql):
            return None
        literals = _find_literals(sql)
        if len(literals) != plan.literals:
            return None
    out = []
    for source in plan.sources:
        if source >= 1:
            if params is None or source > len(params):
                return None
            value = params[source - 1]
            if value is None:
                return None
        else:
            value = literals[-source]
            if value[0] == "'":
                value = value[1:-1].replace("''", "'")
        out.append(canonical(value))
    return tuple(out)


_find_literals = LITERALS.findall


# --- plans -----------------------------------------------------------------------

_FORBIDDEN = frozenset(
    {
        "SubLink",
        "RangeSubselect",
        "RangeFunction",
        "JoinExpr",
        "WithClause",
        "OnConflictClause",
        "CommonTableExpr",
        "RangeTableSample",
    }
)
"""Nodes through which a statement may reach rows or relations its key does not name
(a function that may read or write anything makes the whole statement global in
capture.effects, which then ignores its plan)."""


_FORBIDDEN_FIELDS = frozenset({"onConflictClause", "withClause"})
"""The same, where the parse tree holds them as a field rather than a node."""


def _nodes(tree: Any) -> Any:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name, value in item.items():
                yield name, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


class _Planner:
    """Builds the plan of one text from its JSON parse tree."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.spans: list[int] | None = None

    def literal_index(self, location: int) -> int | None:
        """The index of the :data:`LITERALS` match that starts at ``location``."""
        if self.spans is None:
            if _unsafe(self.sql):
                self.spans = []
            else:
                matches = list(LITERALS.finditer(self.sql))
                self.spans = [m.start() for m in matches]
                tokens = pglast.parser.scan(self.sql)
                strings = [t.start for t in tokens if t.name == "SCONST"]
                numbers = {t.start for t in tokens if t.name in _CONST_TOKENS}
                if strings != [m.start() for m in matches if m.group()[0] == "'"] or not (
                    numbers <= set(self.spans)
                ):  # the regex misreads this text: no literal keys
                    self.spans = []
        try:
            return self.spans.index(location)
        except ValueError:
            return None

    def source(self, node: Any) -> int | None:
        """The source of a value node: a constant or a parameter (maybe cast)."""
        if not isinstance(node, dict) or len(node) != 1:
            return None
        ((kind, body),) = node.items()
        if kind == "TypeCast":
            return self.source(body.get("arg"))
        if kind == "ParamRef":
            number = int(body.get("number", 0))
            return number if number >= 1 else None
        if kind == "A_Const" and not body.get("isnull") and "location" in body:
            index = self.literal_index(int(body["location"]))
            return None if index is None else -index
        return None

    def equality(self, where: Any) -> tuple[str, int] | None:
        """(column, source) of the first ``column = value`` conjunct of ``where``."""
        if not isinstance(where, dict):
            return None
        boolexpr = where.get("BoolExpr")
        if boolexpr is not None:
            if boolexpr.get("boolop") != "AND_EXPR":
                return None
            for arg in boolexpr.get("args", ()):
                found = self.equality(arg)
                if found is not None:
                    return found
            return None
        expr = where.get("A_Expr")
        if expr is None or expr.get("kind") != "AEXPR_OP":
            return None
        if [n.get("String", {}).get("sval") for n in expr.get("name", ())] != ["="]:
            return None
        for col_side, value_side in (("lexpr", "rexpr"), ("rexpr", "lexpr")):
            column = _column(expr.get(col_side))
            source = self.source(expr.get(value_side))
            if column is not None and source is not None:
                return column, source
        return None

    def literal_count(self, sources: tuple[int, ...]) -> int:
        if all(s >= 1 for s in sources):
            return -1
        assert self.spans is not None
        return len(self.spans)


def _column(node: Any) -> str | None:
    ref = node.get("ColumnRef") if isinstance(node, dict) else None
    if ref is None:
        return None
    fields = ref.get("fields", ())
    if not fields or len(fields) > 2:
        return None
    name = fields[-1].get("String", {}).get("sval") if isinstance(fields[-1], dict) else None
    return str(name) if name else None


def _relname(node: Any) -> str | None:
    var = node.get("RangeVar") if isinstance(node, dict) and "RangeVar" in node else node
    if not isinstance(var, dict) or not var.get("relname"):
        return None
    return str(var["relname"])


def plan_of(sql: str) -> KeyPlan | None:
    """The key plan of one statement text, or None (see the module docstring)."""
    try:
        tree = json.loads(pglast.parser.parse_sql_json(sql))
    except Exception:  # pglast raises ParseError, and a few others on odd input
        return None
    stmts = tree.get("stmts", ())
    if len(stmts) != 1:
        return None
    ((kind, body),) = stmts[0].get("stmt", {}).items()
    if any(name in _FORBIDDEN or name in _FORBIDDEN_FIELDS for name, _ in _nodes(body)):
        return None
    planner = _Planner(sql)
    if kind == "InsertStmt":
        return _insert_plan(planner, body)
    if kind == "SelectStmt":
        if body.get("op", "SETOP_NONE") != "SETOP_NONE" or body.get("valuesLists"):
            return None
        tables = body.get("fromClause", ())
        access = Access.CHANGE if body.get("lockingClause") else Access.READ
        if len(tables) != 1:
            return None
        relation = _relname(tables[0])
    elif kind in ("UpdateStmt", "DeleteStmt"):
        if body.get("fromClause") or body.get("usingClause"):
            return None
        access, relation = Access.CHANGE, _relname(body.get("relation"))
    else:
        return None
    found = planner.equality(body.get("whereClause"))
    if relation is None or found is None:
        return None
    column, source = found
    if kind == "UpdateStmt" and column in _set_columns(body):
        return None  # it moves rows to another key value
    sources = (source,)
    return KeyPlan(access, relation, (column,), sources, planner.literal_count(sources))


def _set_columns(body: Any) -> set[str]:
    return {str(t.get("ResTarget", {}).get("name")) for t in body.get("targetList", ())}


def _insert_plan(planner: _Planner, body: Any) -> KeyPlan | None:
    relation = _relname(body.get("relation"))
    select = body.get("selectStmt", {}).get("SelectStmt")
    cols = [c.get("ResTarget", {}).get("name") for c in body.get("cols", ())]
    if relation is None or select is None or not cols or not all(cols):
        return None
    rows = select.get("valuesLists", ())
    if len(rows) != 1:
        return None
    values = rows[0].get("List", {}).get("items", ())
    if len(values) != len(cols):
        return None
    columns, sources = [], []
    for column, value in zip(cols, values, strict=True):
        source = planner.source(value)
        if source is not None:
            columns.append(str(column))
            sources.append(source)
    if not columns:
        return None
    found = tuple(sources)
    return KeyPlan(Access.INSERT, relation, tuple(columns), found, planner.literal_count(found))
