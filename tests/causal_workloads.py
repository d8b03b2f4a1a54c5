"""Dependent multi-session workloads, run by real clients on a capture server.

Each function runs its clients against a cluster of the *capture* profile (every
statement, connection and error logged) and returns when they are done; the
caller captures the cluster's log. Every workload is deterministic: replayed in
the causal order the log shows, each statement ends as it did originally, so any
difference in outcome is a replay that ran something too early.

(This module holds no tests; tests/test_causal.py and bench/causal_bench.py use it.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

import psycopg

from capture.pipeline import CaptureOptions, capture
from capture.workload import Workload, read_workload
from pgtraffic.servers import Cluster
from tests.replay_helpers import run_quiet


def _psql(cluster: Cluster, script: str, dbname: str = "postgres") -> None:
    """One psql session running ``script`` (errors are part of the workload)."""
    cluster.run_tool(
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", dbname, input=script, timeout=120
    )


def chain_script(i: int) -> str:
    """Session ``i`` of the chain: builds on what sessions ``i - 1`` and ``i - 5`` made."""
    if i == 0:
        return (
            "CREATE TABLE t0 (id int PRIMARY KEY, v text);\n"
            "INSERT INTO t0 SELECT g, 'v' || g FROM generate_series(1, 50) g;\n"
            "CREATE TYPE pair0 AS (a int, b text);\n"
            "CREATE ROLE reader0;\n"
            "GRANT SELECT ON t0 TO reader0;\n"
        )
    p = i - 1
    lines = [
        f"CREATE TABLE t{i} AS SELECT id, v || '.{i}' AS v FROM t{p};",
        f"ALTER TABLE t{i} ADD PRIMARY KEY (id);",
        f"UPDATE t{i} SET v = upper(v) WHERE id % 7 = {i % 7};",
        f"SELECT count(*) FROM t{i} JOIN t{p} USING (id);",
        f"INSERT INTO t{i} VALUES (1, 'duplicate');",  # 23505, every time
        f"SELECT (id, v)::pair{p // 5 * 5} FROM t{p} WHERE id = {i % 50 + 1};",
        "BEGIN;",
        f"DELETE FROM t{p} WHERE id = {i % 50 + 1};",
        f"INSERT INTO t{p} VALUES ({i % 50 + 1}, 'moved by {i}');",
        "COMMIT;",
        f"SET ROLE reader{p // 5 * 5};",
        f"SELECT count(*) FROM t{p // 5 * 5};",
        "RESET ROLE;",
    ]
    if i % 5 == 0:
        lines += [
            f"CREATE TYPE pair{i} AS (a int, b text);",
            f"CREATE ROLE reader{i};",
            f"GRANT SELECT ON t{i} TO reader{i};",
        ]
    if i % 4 == 0:
        lines.append(f"SELECT 1 / (count(*) - count(*)) FROM t{i};")  # 22012
    return "\n".join(lines) + "\n"


def run_chain(cluster: Cluster, sessions: int = 30) -> None:
    """``sessions`` psql scripts one after another, each using what the previous made."""
    for i in range(sessions):
        _psql(cluster, chain_script(i))


def run_new_database(cluster: Cluster, sessions: int = 6) -> None:
    """A session creates a database; later sessions connect to it and build on each other."""
    _psql(cluster, "CREATE DATABASE causal_app;\n")
    _psql(cluster, "CREATE TABLE items (id int PRIMARY KEY, n int);\n", "causal_app")
    for i in range(sessions):
        _psql(
            cluster,
            f"INSERT INTO items VALUES ({i}, {i * 10});\n"
            f"UPDATE items SET n = n + 1 WHERE id = {i - 1};\n"
            f"SELECT 1 / count(*) FROM items WHERE id = {i - 1} AND n = {(i - 1) * 10 + 1};\n",
            "causal_app",
        )


def run_producer_consumer(cluster: Cluster, jobs: int = 150) -> None:
    """A producer commits jobs; a consumer, in another session, takes each one it saw.

    The consumer's ``1 / count(*)`` fails with 22012 if the job is not visible yet,
    so a replay that runs it before the producer's commit diverges. The producer
    runs one more statement before it hands a job over, so that its commit is
    evidenced in the log (by its next record) before the consumer's statement.
    """
    setup = psycopg.connect(cluster.dsn(), autocommit=True)
    setup.execute("CREATE TABLE jobs (id int PRIMARY KEY, taken boolean DEFAULT false)")
    setup.close()
    _handover(
        cluster,
        jobs,
        "INSERT INTO jobs (id) VALUES (%s)",
        "UPDATE jobs SET taken = true WHERE id = %s "
        "AND 1 / (SELECT count(*) FROM jobs WHERE id = %s) = 1",
    )


def run_keyed_handover(cluster: Cluster, jobs: int = 150) -> None:
    """Like :func:`run_producer_consumer`, with statements ``--sync rows`` orders by
    key: the consumer's ``SELECT 1 / count(*) FROM orders WHERE id = n`` fails with
    22012 unless the producer's ``INSERT INTO orders (id, total) VALUES (n, ...)``
    committed first; nothing else orders the two sessions."""
    setup = psycopg.connect(cluster.dsn(), autocommit=True)
    setup.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
    setup.close()
    _handover(
        cluster,
        jobs,
        "INSERT INTO orders (id, total) VALUES (%s, 10)",
        "SELECT 1 / count(*) FROM orders WHERE id = %s",
    )


FOREIGN_KEY_SCHEMA = (
    "CREATE TABLE parent (id int PRIMARY KEY); "
    "CREATE TABLE child (id serial PRIMARY KEY, pid int NOT NULL REFERENCES parent (id));"
)
"""Made with logging off on the capture server (the log holds no DDL that ties the
two tables): load the target with it too."""


def run_foreign_key_handover(cluster: Cluster, jobs: int = 100, logged: bool = False) -> None:
    """A producer inserts parent rows, a consumer a child of each one it saw: the
    child's INSERT fails with 23503 unless the parent's committed first. Only the
    foreign key ties the two; the log shows it when ``logged``."""
    if logged:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(FOREIGN_KEY_SCHEMA)
    else:
        _psql_quiet(cluster, FOREIGN_KEY_SCHEMA)
    _handover(
        cluster,
        jobs,
        "INSERT INTO parent (id) VALUES (%s)",
        "INSERT INTO child (pid) VALUES (%s)",
    )


def _psql_quiet(cluster: Cluster, script: str) -> None:
    quiet = "-c log_statement=none -c log_min_duration_statement=-1 -c log_connections=off"
    with psycopg.connect(cluster.dsn(), autocommit=True, options=quiet) as conn:
        conn.execute(script)


def _handover(cluster: Cluster, jobs: int, produce: str, consume: str) -> None:
    """A producer runs ``produce`` for each job and hands it over (after one more
    statement, which evidences its commit); a consumer runs ``consume`` with it (as
    every one of its parameters)."""
    handed: Queue[int | None] = Queue()

    def producer() -> None:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for job in range(jobs):
                conn.execute(produce, (job,))
                conn.execute("SELECT %s::int AS handed_over", (job,))
                handed.put(job)
                time.sleep(0.002)
            handed.put(None)

    def consumer() -> None:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            while (job := handed.get()) is not None:
                conn.execute(consume, (job,) * consume.count("%s"))

    _run_threads(producer, consumer)


def _run_threads(*bodies: Callable[[], None]) -> None:
    failures: list[BaseException] = []

    def guarded(body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # reported to the caller below
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def run_pgbench_connect_each(cluster: Cluster, seconds: int = 3, clients: int = 8) -> None:
    """``pgbench -C``: a new connection per transaction, ``clients`` at a time (the
    tables are made with logging off: load the target the same way)."""
    run_quiet(cluster, "pgbench", "-i", "-q", "-s", "1")
    cluster.run_tool("pgbench", "-n", "-C", "-S", "-c", str(clients), "-T", str(seconds))


@dataclass(frozen=True, slots=True)
class Captured:
    """A workload captured from a capture cluster, and that cluster."""

    workload: Workload
    source: Cluster


def capture_cluster_log(cluster: Cluster, out: Path) -> Workload:
    """Capture everything the cluster logged so far into ``out``."""
    time.sleep(0.6)  # let the logging collector write the last records
    capture([str(p) for p in cluster.log_files()], out, CaptureOptions(jobs=1))
    return read_workload(out)
