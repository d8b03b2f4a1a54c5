"""What a statement does to transactions and data, for the commit clock.

Pure: SQL text in, :class:`Effect` out. The capture tracker asks once per query
class (it keeps the answers in a dict keyed by fingerprint: literals never change
the answer) and then follows each session's transaction block with it (see
``docs/workload-format.md`` and ``docs/replay.md``).

The classification is deliberately conservative: when in doubt a statement
*may write*, and when it is not known what it may write it is *global* (it may
have written anything, so any later statement may depend on it).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType, TransactionStmtKind

from capture.rowkeys import KeyPlan, plan_of


class Control(enum.IntEnum):
    """What a statement does to the session's transaction block."""

    NONE = 0
    BEGIN = 1
    """BEGIN / START TRANSACTION: a block starts."""
    COMMIT = 2
    """COMMIT / END / PREPARE TRANSACTION: the block ends, and commits what it wrote."""
    ROLLBACK = 3
    """ROLLBACK / ABORT: the block ends without a commit."""
    SAVEPOINT = 4
    """SAVEPOINT / RELEASE / ROLLBACK TO: the block goes on."""


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a (possibly multi-statement) text."""

    control: Control
    may_write: bool
    relations: frozenset[str]
    """Bare names of the relations it touches (reads or writes)."""
    is_global: bool
    """It touches everything: unparsable, an unknown function, DDL beyond relations."""


@dataclass(frozen=True, slots=True)
class Effect:
    """A whole statement record (one text, maybe several statements)."""

    steps: tuple[Step, ...]
    control: Control
    """The control of a single-statement text; NONE for several statements."""
    may_write: bool
    """Some step may write."""
    relations: frozenset[str]
    """Relations any step touches."""
    is_global: bool
    """Some step touches everything."""
    written: frozenset[str]
    """Relations touched by the steps that may write."""
    writes_global: bool
    """Some step that may write is global."""
    inert: bool
    """No step may write, begins or ends a block: the tracker can skip it."""
    autocommit: tuple[frozenset[str], bool] | None
    """One step that may write and controls nothing: what it commits when it runs
    outside a transaction block, ``(written, writes_global)``; None otherwise."""
    keys: KeyPlan | None = None
    """How to find the rows it touches (capture/rowkeys.py), for a single plain
    statement that is not global; None: it is ordered by relation."""
    couples: frozenset[str] = frozenset()
    """Relations this DDL ties to others, so that writing one may change or check
    rows of another (a foreign key, a view, a trigger, a rule, a policy, a
    partition or inheritance): from then on they are not ordered by row."""


READ_ONLY_FUNCTIONS = frozenset(
    """
    abs array_agg array_length array_lower array_position array_to_json array_to_string
    array_upper avg bit_and bit_or bool_and bool_or btrim cardinality cbrt ceil ceiling
    char_length character_length chr clock_timestamp coalesce concat concat_ws count
    cume_dist current_database current_schema current_schemas current_setting
    current_user date_part date_trunc dense_rank div every exp extract first_value floor
    format format_type generate_series generate_subscripts greatest has_table_privilege
    initcap isfinite json_agg json_build_array json_build_object json_object_agg
    jsonb_agg jsonb_build_array jsonb_build_object jsonb_object_agg jsonb_set
    jsonb_array_elements jsonb_array_length jsonb_each jsonb_extract_path
    jsonb_extract_path_text jsonb_typeof json_array_elements json_each json_extract_path
    json_extract_path_text lag last_value lead least left length ln localtime
    localtimestamp log lower lpad ltrim make_date make_interval make_timestamp max md5
    min mod now nth_value ntile nullif octet_length overlay percent_rank
    percentile_cont percentile_disc pg_backend_pid pg_column_size pg_database_size
    pg_get_expr pg_get_indexdef pg_get_viewdef pg_is_in_recovery pg_postmaster_start_time
    pg_relation_size pg_size_pretty pg_sleep pg_table_size pg_total_relation_size
    pg_typeof position power quote_ident quote_literal quote_nullable random rank
    regexp_match regexp_matches regexp_replace regexp_split_to_array
    regexp_split_to_table repeat replace reverse right round row_number row_to_json
    rpad rtrim sign split_part sqrt starts_with statement_timestamp stddev
    stddev_pop stddev_samp string_agg string_to_array strpos substr substring sum
    timeofday timezone to_char to_date to_json to_jsonb to_number to_timestamp
    transaction_timestamp translate trim trunc unnest upper variance var_pop var_samp
    version width_bucket
    """.split()  # noqa: SIM905
)
"""Built-in functions that never write (anything else called may write anything)."""

_NO_WRITE = (
    ast.VariableSetStmt,
    ast.VariableShowStmt,
    ast.DiscardStmt,
    ast.DeallocateStmt,
    ast.PrepareStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.ClosePortalStmt,
    ast.FetchStmt,
    ast.CheckPointStmt,
)
"""Statements that never write (PREPARE only defines; EXECUTE is what runs it)."""

_GLOBAL = (
    ast.CreatedbStmt,
    ast.DropdbStmt,
    ast.AlterDatabaseStmt,
    ast.AlterDatabaseSetStmt,
    ast.CreateRoleStmt,
    ast.AlterRoleStmt,
    ast.AlterRoleSetStmt,
    ast.DropRoleStmt,
    ast.GrantStmt,
    ast.GrantRoleStmt,
    ast.AlterDefaultPrivilegesStmt,
    ast.CreateSchemaStmt,
    ast.CreateFunctionStmt,
    ast.AlterFunctionStmt,
    ast.CreateExtensionStmt,
    ast.AlterExtensionStmt,
    ast.AlterExtensionContentsStmt,
    ast.DefineStmt,
    ast.CompositeTypeStmt,
    ast.CreateEnumStmt,
    ast.AlterEnumStmt,
    ast.CreateDomainStmt,
    ast.CreateTableSpaceStmt,
    ast.DropOwnedStmt,
    ast.ReassignOwnedStmt,
    ast.DoStmt,
    ast.CallStmt,
    ast.ExecuteStmt,
    ast.CreateTrigStmt,
    ast.RuleStmt,
    ast.CreateCastStmt,
    ast.CreateConversionStmt,
    ast.CreateOpClassStmt,
    ast.CreateFdwStmt,
    ast.CreateForeignServerStmt,
    ast.CreateUserMappingStmt,
    ast.CreatePublicationStmt,
    ast.CreateSubscriptionStmt,
    ast.CreateEventTrigStmt,
    ast.ImportForeignSchemaStmt,
)
"""Statements whose effect reaches beyond the relations they name (or is unknown:
DO, CALL, EXECUTE of a prepared statement)."""

_RELATION_DROPS = frozenset(
    {
        ObjectType.OBJECT_TABLE,
        ObjectType.OBJECT_VIEW,
        ObjectType.OBJECT_MATVIEW,
        ObjectType.OBJECT_SEQUENCE,
        ObjectType.OBJECT_FOREIGN_TABLE,
    }
)
_WRITING = (
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.IntoClause,
    ast.LockingClause,
)
"""Nodes that make a query a write: DML (a data-modifying CTE too), SELECT INTO, FOR UPDATE."""
_BEGIN_KINDS = frozenset(
    {TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START}
)
_COMMIT_KINDS = frozenset(
    {TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_PREPARE}
)
_SAVEPOINT_KINDS = frozenset(
    {
        TransactionStmtKind.TRANS_STMT_SAVEPOINT,
        TransactionStmtKind.TRANS_STMT_RELEASE,
        TransactionStmtKind.TRANS_STMT_ROLLBACK_TO,
    }
)

_INERT = frozenset({Control.NONE, Control.SAVEPOINT})
UNPARSABLE = Step(Control.NONE, True, frozenset(), True)
"""SQL pglast cannot parse: a write of anything, everywhere."""
_NOTHING = Step(Control.NONE, False, frozenset(), False)


def _walk(node: object) -> Iterator[ast.Node]:
    """Every node of a parse tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            for attr in getattr(type(item), "__slots__", ()):
                value = getattr(item, attr, None)
                if isinstance(value, ast.Node | tuple):
                    stack.append(value)
        elif isinstance(item, tuple):
            stack.extend(item)


def _unknown_function(node: ast.FuncCall) -> bool:
    names = [getattr(n, "sval", "") for n in node.funcname or ()]
    if len(names) > 1 and names[0] != "pg_catalog":
        return True
    return not names or names[-1].lower() not in READ_ONLY_FUNCTIONS


def _scan(tree: ast.Node) -> tuple[frozenset[str], bool, bool]:
    """(relations named, calls an unknown function, writes) over a whole tree."""
    relations: set[str] = set()
    unknown = writes = False
    for node in _walk(tree):
        if isinstance(node, ast.RangeVar):
            if node.relname:
                relations.add(node.relname)
        elif isinstance(node, ast.FuncCall):
            unknown = unknown or _unknown_function(node)
        elif isinstance(node, _WRITING):
            writes = True
    return frozenset(relations), unknown, writes


def _transaction(node: ast.TransactionStmt) -> tuple[Step, ...]:
    kind = node.kind
    if kind in _BEGIN_KINDS:
        return (Step(Control.BEGIN, False, frozenset(), False),)
    if kind in _SAVEPOINT_KINDS:
        return (Step(Control.SAVEPOINT, False, frozenset(), False),)
    if kind == TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED:
        # commits what some session prepared, nobody knows what: a global write
        return (Step(Control.NONE, True, frozenset(), True),)
    if kind == TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED:
        return (_NOTHING,)
    control = Control.COMMIT if kind in _COMMIT_KINDS else Control.ROLLBACK
    end = Step(control, False, frozenset(), False)
    if node.chain:  # COMMIT AND CHAIN: a new block starts at once
        return (end, Step(Control.BEGIN, False, frozenset(), False))
    return (end,)


def _drop(node: ast.DropStmt) -> Step:
    if node.removeType not in _RELATION_DROPS:
        return Step(Control.NONE, True, frozenset(), True)
    names = [getattr(name[-1], "sval", "") for name in node.objects or () if name]
    return Step(Control.NONE, True, frozenset(n for n in names if n), False)


def _explain_analyzes(node: ast.ExplainStmt) -> bool:
    return any(getattr(o, "defname", "") == "analyze" for o in node.options or ())


def statement_steps(node: ast.Node) -> tuple[Step, ...]:
    """The steps of one parsed statement (the ``stmt`` of a RawStmt)."""
    if isinstance(node, ast.TransactionStmt):
        return _transaction(node)
    if isinstance(node, _NO_WRITE):
        return (_NOTHING,)
    if isinstance(node, ast.DropStmt):
        return (_drop(node),)
    if isinstance(node, _GLOBAL):
        return (Step(Control.NONE, True, frozenset(), True),)
    relations, unknown, writes = _scan(node)
    if isinstance(node, ast.ExplainStmt) and not _explain_analyzes(node):
        return (Step(Control.NONE, False, relations, False),)  # planned, not run
    if unknown:
        return (Step(Control.NONE, True, relations, True),)
    if isinstance(node, ast.SelectStmt | ast.ExplainStmt | ast.DeclareCursorStmt):
        return (Step(Control.NONE, writes, relations, False),)
    if isinstance(node, ast.CopyStmt) and not node.is_from:
        return (Step(Control.NONE, writes, relations, False),)
    # anything else may write; when it names no relation, it may write anything
    return (Step(Control.NONE, True, relations, not relations),)


def combine(steps: tuple[Step, ...]) -> Effect:
    """The effect of a text made of ``steps``."""
    if not steps:
        steps = (_NOTHING,)
    writing = [s for s in steps if s.may_write]
    written = frozenset().union(*(s.relations for s in writing))
    writes_global = any(s.is_global for s in writing)
    single = steps[0] if len(steps) == 1 else None
    return Effect(
        steps=steps,
        control=steps[0].control if len(steps) == 1 else Control.NONE,
        may_write=bool(writing),
        relations=frozenset().union(*(s.relations for s in steps)),
        is_global=any(s.is_global for s in steps),
        written=written,
        writes_global=writes_global,
        inert=not writing and all(s.control in _INERT for s in steps),
        autocommit=(written, writes_global)
        if single is not None and single.may_write and single.control is Control.NONE
        else None,
    )


_COUPLING = (
    ast.ViewStmt,
    ast.CreateTrigStmt,
    ast.RuleStmt,
    ast.CreatePolicyStmt,
    ast.AlterPolicyStmt,
)
"""DDL that always ties the relations it names together."""
_COUPLING_ALTERS = frozenset({AlterTableType.AT_AttachPartition, AlterTableType.AT_AddInherit})


def couplings(node: ast.Node) -> frozenset[str]:
    """The relations ``node`` (one parsed statement) ties together, if it is such DDL."""
    tied = isinstance(node, _COUPLING)
    if isinstance(node, ast.CreateStmt):
        tied = bool(node.inhRelations or node.partbound)
    for item in _walk(node) if not tied else ():
        if isinstance(item, ast.Constraint) and item.contype == ConstrType.CONSTR_FOREIGN:
            tied = True
            break
        if isinstance(item, ast.AlterTableCmd) and item.subtype in _COUPLING_ALTERS:
            tied = True
            break
    if not tied or not isinstance(node, (ast.CreateStmt, ast.AlterTableStmt, *_COUPLING)):
        return frozenset()
    return frozenset(n.relname for n in _walk(node) if isinstance(n, ast.RangeVar) and n.relname)


def classify(sql: str) -> Effect:
    """The effect of one statement record's text (several statements allowed)."""
    try:
        raw = pglast.parse_sql(sql)
    except Exception:  # pglast raises ParseError, and a few others on odd input
        return combine((UNPARSABLE,))
    steps: list[Step] = []
    couples: set[str] = set()
    for item in raw:
        if item.stmt is not None:
            steps.extend(statement_steps(item.stmt))
            couples.update(couplings(item.stmt))
    effect = combine(tuple(steps))
    if couples:
        effect = replace(effect, couples=frozenset(couples))
    if len(steps) == 1 and not effect.is_global and effect.control is Control.NONE:
        plan = plan_of(sql)
        if plan is not None:
            effect = replace(effect, keys=plan)
    return effect


def effect_of(sql: str, parsed: bool) -> Effect:
    """:func:`classify`, knowing already whether pglast can parse ``sql``."""
    return classify(sql) if parsed else combine((UNPARSABLE,))
