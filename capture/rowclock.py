"""The row-level part of the commit clock (``after_rows``, ``--sync rows``).

Pure and in memory. The tracker (capture/sessions.py) tells it, in log order,
which rows each numbered commit wrote (:meth:`RowClock.record`) and asks, for a
statement with a key plan (capture/rowkeys.py), the latest commit that wrote a
row it may touch (:meth:`RowClock.keyed`, :meth:`RowClock.inserting`). What it
cannot tell by key it answers by relation, conservatively:

* a keyed read or change of ``rel.col = v`` depends on the latest commit that
  wrote a row with ``col = v``, changed ``rel`` keyed on another column (that row
  may have ``col = v``), inserted into ``rel`` without a value for ``col``, or
  wrote ``rel`` without a key at all;
* an INSERT that succeeded in the capture depends on the latest commit that
  changed or deleted rows of ``rel`` (a unique key it uses may have been freed or
  taken by it), not on other inserts: inserts that all succeeded in the capture
  succeed in any order. One that failed is ordered by relation (the tracker's
  ``after_objects``).

Row keys are remembered by hash (a collision only adds a wait) and at most
:data:`ROWS_KEPT` of them; when that is exceeded the table starts again from a
*floor*, the latest commit it had seen, which every forgotten key answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from capture.rowkeys import Access, KeyPlan

ROWS_KEPT = 400_000
"""Row keys remembered (about 100 bytes each) before the table starts again."""

Write = tuple[KeyPlan, tuple[str, ...]]
"""A keyed write of a transaction: its plan and its key values."""


class RowClock:
    """Which commit last wrote which rows, by key."""

    __slots__ = ("_changed", "_col_changed", "_floor", "_insert_sets", "_rows", "_unkeyed")

    def __init__(self) -> None:
        self._rows: dict[int, int] = {}
        """hash((relation, column, value)) to the latest commit that wrote such a row."""
        self._floor = 0
        """Every commit up to here may have written a forgotten row key."""
        self._col_changed: dict[str, dict[str, int]] = {}
        """Relation to key column to the latest commit that changed rows keyed on it."""
        self._changed: dict[str, int] = {}
        """Relation to the latest commit that changed or deleted any of its rows."""
        self._unkeyed: dict[str, int] = {}
        """Relation to the latest commit that wrote it without a key."""
        self._insert_sets: dict[str, dict[tuple[str, ...], int]] = {}
        """Relation to the column sets inserts gave values, to the latest such commit."""

    def keyed(self, plan: KeyPlan, values: tuple[str, ...]) -> int:
        """The latest commit a READ or CHANGE of ``plan``'s key ``values`` depends on."""
        relation, column = plan.relation, plan.columns[0]
        m = self._rows.get(hash((relation, column, values[0])), self._floor)
        m = max(m, self._unkeyed.get(relation, 0))
        for other, k in self._col_changed.get(relation, {}).items():
            if other != column and k > m:
                m = k
        for columns, k in self._insert_sets.get(relation, {}).items():
            if k > m and column not in columns:
                m = k
        return m

    def inserting(self, relation: str) -> int:
        """The latest commit an INSERT into ``relation`` (that succeeded) depends on."""
        return self._changed.get(relation, 0)

    def record(self, commit: int, writes: Iterable[Write], unkeyed: Iterable[str]) -> None:
        """Commit number ``commit`` wrote these keyed rows, and these relations unkeyed."""
        rows = self._rows
        for plan, values in writes:
            relation = plan.relation
            columns = plan.columns
            if plan.access is Access.INSERT:
                for i, value in enumerate(values):
                    rows[hash((relation, columns[i], value))] = commit
                sets = self._insert_sets.get(relation)
                if sets is None:
                    sets = self._insert_sets[relation] = {}
                sets[columns] = commit
            else:
                rows[hash((relation, columns[0], values[0]))] = commit
                changed = self._col_changed.get(relation)
                if changed is None:
                    changed = self._col_changed[relation] = {}
                changed[columns[0]] = commit
                self._changed[relation] = commit
        for relation in unkeyed:
            self._unkeyed[relation] = commit
            self._changed[relation] = commit
        if len(rows) > ROWS_KEPT:
            rows.clear()
            self._floor = commit
