"""What the server was doing during a step: wait events and database counters.

A background thread samples ``pg_stat_activity`` ten times a second over its own
connection (active client backends by ``wait_event_type``; an active backend that
waits for nothing is on the CPU), and ``pg_stat_database`` is read before and after
the step for its deltas. This is the I/O edge of a sweep; the shares and deltas it
returns are plain data for :mod:`pgtraffic.capacity.model`.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import psycopg

from replay.conninfo import libpq_dsn

ACTIVITY_SQL = """
SELECT /* pgtraffic-capacity */ coalesce(wait_event_type, 'CPU'), count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()
GROUP BY 1
"""

DATABASE_COLUMNS = (
    "xact_commit",
    "xact_rollback",
    "deadlocks",
    "temp_files",
    "temp_bytes",
    "blks_read",
    "blks_hit",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
)


def _defaults(application: str) -> dict[str, str]:
    """What pgtraffic's own connections use unless the DSN, the environment or a
    service says otherwise."""
    return {"connect_timeout": "10", "fallback_application_name": application}


def database_counters(dsn: str, databases: tuple[str, ...]) -> dict[str, int]:
    """The sums of :data:`DATABASE_COLUMNS` over ``databases`` (all when empty)."""
    columns = ", ".join(f"coalesce(sum({c}), 0)::bigint" for c in DATABASE_COLUMNS)
    sql = f"SELECT /* pgtraffic-capacity */ {columns} FROM pg_stat_database"
    params: tuple[Any, ...] = ()
    if databases:
        sql += " WHERE datname = ANY(%s)"
        params = (list(databases),)
    conninfo = libpq_dsn(dsn, os.environ, defaults=_defaults("pgtraffic capacity"))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(sql, params).fetchone()
    return dict(zip(DATABASE_COLUMNS, (int(v) for v in row or ()), strict=False))


def deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in DATABASE_COLUMNS if k in after}


class ActivitySampler:
    """Samples wait events in a thread while the ``with`` block runs."""

    def __init__(self, dsn: str, interval_s: float = 0.1) -> None:
        self._dsn = libpq_dsn(dsn, os.environ, defaults=_defaults("pgtraffic-capacity-sampler"))
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capacity-sampler", daemon=True)
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.error: str | None = None

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._stop.wait(self._interval):
                    rows = conn.execute(ACTIVITY_SQL).fetchall()
                    self.samples += 1
                    for kind, n in rows:
                        self.counts[str(kind)] += int(n)
        except psycopg.Error as exc:  # sampling is best effort: say so in the step
            self.error = f"wait events not sampled: {exc}".strip()

    def shares(self) -> dict[str, float]:
        """Share of the sampled active backends per wait event type."""
        total = sum(self.counts.values())
        if not total:
            return {}
        return {k: n / total for k, n in self.counts.most_common()}
