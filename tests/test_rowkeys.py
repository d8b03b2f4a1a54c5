"""Key plans and key values (capture/rowkeys.py), and the row clock (capture/rowclock.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from capture.effects import classify
from capture.rowclock import RowClock
from capture.rowkeys import Access, KeyPlan, canonical, key_values, plan_of

PLANNED = [
    # (sql, access, relation, columns, params, key values)
    (
        "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;",
        Access.CHANGE, "pgbench_accounts", ("aid",), None, ("5678",),
    ),
    ("SELECT abalance FROM a WHERE a.aid = 0042", Access.READ, "a", ("aid",), None, ("42",)),
    (
        "INSERT INTO h (tid, bid, delta, mtime) VALUES (3, '1', -5, CURRENT_TIMESTAMP)",
        Access.INSERT, "h", ("tid", "bid"), None, ("3", "1"),
    ),
    ("UPDATE t SET x = $1 WHERE id = $2", Access.CHANGE, "t", ("id",), ("a", "9"), ("9",)),
    (
        "SELECT * FROM t WHERE name = 'O''Brien' AND x > 3 LIMIT 5",
        Access.READ, "t", ("name",), None, ("O'Brien",),
    ),
    ("DELETE FROM t WHERE 7 = id::int", Access.CHANGE, "t", ("id",), None, None),
    ("DELETE FROM t WHERE id = 7::int", Access.CHANGE, "t", ("id",), None, ("7",)),
    ("SELECT count(*) FROM q WHERE k = 2 FOR UPDATE", Access.CHANGE, "q", ("k",), None, ("2",)),
]  # fmt: skip

UNPLANNED = [
    "SELECT * FROM t WHERE id = 5 OR id = 6",
    "SELECT * FROM t JOIN u USING (id) WHERE id = 5",
    "SELECT * FROM t WHERE id IN (SELECT id FROM u) AND id = 5",
    "UPDATE t SET id = 7 WHERE id = 5",  # moves the row to another key
    "UPDATE t SET x = 1 FROM u WHERE t.id = 5",
    "DELETE FROM t USING u WHERE t.id = 5",
    "INSERT INTO t VALUES (1, 2)",  # no column list
    "INSERT INTO t (a) VALUES (1) ON CONFLICT DO NOTHING",
    "INSERT INTO t (a) SELECT 1",
    "WITH x AS (SELECT 1) SELECT * FROM t WHERE id = 5",
    "SELECT * FROM t WHERE id = -5",  # the constant starts at its sign
    "SELECT * FROM t WHERE id = NULL",
    "SELECT * FROM t WHERE id = 5 UNION SELECT * FROM t WHERE id = 6",
    "BEGIN",
    "SELECT 1",
    "SELEC broken",
]


@pytest.mark.parametrize(("sql", "access", "relation", "columns", "params", "values"), PLANNED)
def test_plans_and_values(
    sql: str,
    access: Access,
    relation: str,
    columns: tuple[str, ...],
    params: tuple[str | None, ...] | None,
    values: tuple[str, ...] | None,
) -> None:
    plan = plan_of(sql)
    if values is None and plan is None:
        return  # the reversed equality is not planned: by relation, which is safe
    assert plan is not None
    assert (plan.access, plan.relation, plan.columns) == (access, relation, columns)
    assert key_values(plan, sql, params) == values


@pytest.mark.parametrize("sql", UNPLANNED)
def test_shapes_that_may_reach_other_rows_have_no_plan(sql: str) -> None:
    assert plan_of(sql) is None


def test_values_of_other_texts_of_the_class() -> None:
    plan = plan_of("SELECT a FROM t WHERE id = 5 LIMIT 1")
    assert plan is not None
    assert key_values(plan, "SELECT a FROM t WHERE id = 123456 LIMIT 1", None) == ("123456",)
    assert key_values(plan, "SELECT a FROM t WHERE id = '9' LIMIT 1", None) == ("9",)
    # another literal count, a comment, an escape: the position cannot be trusted
    assert key_values(plan, "SELECT a FROM t WHERE id = 5 LIMIT 1 OFFSET 2", None) is None
    assert key_values(plan, "SELECT a FROM t WHERE id = /* 7 */ 5 LIMIT 1", None) is None
    assert key_values(plan, "SELECT a FROM t WHERE id = E'\\x' LIMIT 1", None) is None
    param = plan_of("SELECT a FROM t WHERE id = $1")
    assert param is not None and param.literals == -1
    assert key_values(param, "SELECT a FROM t WHERE id = $1", (None,)) is None
    assert key_values(param, "SELECT a FROM t WHERE id = $1", ()) is None


def test_effects_carry_plans_only_where_they_are_safe() -> None:
    assert classify("UPDATE t SET x = 1 WHERE id = 5").keys is not None
    assert classify("UPDATE t SET x = f() WHERE id = 5").keys is None  # global: any write
    assert classify("UPDATE t SET x = 1 WHERE id = 5; SELECT 1").keys is None
    assert classify("CREATE TABLE c (p int REFERENCES p (id))").couples == {"c", "p"}
    assert classify("CREATE VIEW v AS SELECT * FROM a").couples == {"v", "a"}
    assert classify("ALTER TABLE y ATTACH PARTITION x FOR VALUES IN (1)").couples == {"x", "y"}
    assert classify("CREATE TABLE q (id int PRIMARY KEY)").couples == frozenset()


@given(st.decimals(allow_nan=False, allow_infinity=False), st.integers(0, 3))
@example(Decimal("1473822070459675546893932298240"), 1)  # 31 digits: plain integer fast path
def test_canonical_numbers_are_equal_when_their_values_are(number: Decimal, zeros: int) -> None:
    text = str(number)
    padded = format(number, "f") + ("." + "0" * zeros if zeros and "." not in str(number) else "")
    assert canonical(text) == canonical(padded)
    assert Decimal(canonical(text)) == number


def test_canonical_keeps_text_apart() -> None:
    assert canonical("05") == canonical("5") == canonical("5.0") == canonical("5e0") == "5"
    assert canonical("abc") == "abc"
    assert canonical("5 ") == "5 "  # not a number: as it is
    # a huge exponent stays short and exact (int() of it would not finish, or raise)
    assert canonical("5e9999") == canonical("50e9998") == "5E+9999"
    assert canonical("1e-999999") == "1E-999999"


def _plan(access: Access, relation: str, *columns: str) -> KeyPlan:
    return KeyPlan(access, relation, columns, tuple(range(1, len(columns) + 1)), -1)


def test_row_clock_answers_by_key_and_by_relation() -> None:
    clock = RowClock()
    change = _plan(Access.CHANGE, "acc", "aid")
    clock.record(1, [(change, ("7",))], ())
    clock.record(2, [(_plan(Access.INSERT, "hist", "aid", "delta"), ("7", "1"))], ())
    clock.record(3, [], {"log"})
    assert clock.keyed(change, ("7",)) == 1
    assert clock.keyed(change, ("8",)) == 0
    assert clock.keyed(_plan(Access.READ, "acc", "owner"), ("x",)) == 1  # changed by aid
    assert clock.keyed(_plan(Access.READ, "hist", "aid"), ("7",)) == 2
    assert clock.keyed(_plan(Access.READ, "hist", "tid"), ("1",)) == 2  # no tid given
    assert clock.keyed(_plan(Access.READ, "log", "id"), ("1",)) == 3  # written unkeyed
    assert clock.inserting("hist") == 0  # inserts do not wait for inserts
    assert clock.inserting("acc") == 1 and clock.inserting("log") == 3


def test_row_clock_forgets_keys_into_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capture.rowclock.ROWS_KEPT", 3)
    clock = RowClock()
    change = _plan(Access.CHANGE, "acc", "aid")
    for k in range(1, 6):
        clock.record(k, [(change, (str(k),))], ())
    assert clock.keyed(change, ("1",)) >= 1  # forgotten: answered by the floor
    assert clock.keyed(change, ("999",)) >= 4


@given(st.text(alphabet="0123456789٣.e-+ax'", max_size=8))
def test_the_inlined_integer_path_agrees_with_canonical(value: str) -> None:
    """key_values inlines canonical()'s plain-integer case: pinned to it here."""
    plan = plan_of("SELECT 1 FROM t WHERE id = $1")
    assert plan is not None
    assert key_values(plan, "SELECT 1 FROM t WHERE id = $1", (value,)) == (canonical(value),)
