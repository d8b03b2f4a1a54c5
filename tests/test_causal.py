"""Causal replay on real servers: sessions that build on each other stay in order.

Workloads (tests/causal_workloads.py) are run by real clients on a capture server,
captured from its log, and replayed onto a fresh server of the same or the next
version at ``--speed 1``, ``--speed 4`` and ``--max-speed``. With ``--sync commit``
(and ``objects``) every statement must end as it did originally; ``--sync none``
shows why the sync is needed (sessions overtake the ones they depend on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capture.workload import Workload
from pgtraffic.servers import Cluster, Profile
from replay.report import build_report
from replay.results import Results
from replay.sync import SyncMode
from tests import causal_workloads as wl
from tests.conftest import require_version
from tests.replay_helpers import outcomes, replay, replayable_keys, run_quiet

pytestmark = pytest.mark.pg(">=16")

PACES: list[dict[str, Any]] = [
    {"speed": 1.0},
    {"speed": 4.0},
    {"max_speed": True},
]
PACE_IDS = ["speed1", "speed4", "max-speed"]
FAST_PACES = [
    pytest.param(pace, id=name, marks=[pytest.mark.slow] if name == "speed4" else [])
    for pace, name in zip(PACES, PACE_IDS, strict=True)
]
"""PACES with ``--speed 4`` in the slow run only: for the tests whose every pace
case takes seconds, the default run keeps the two ends (the capture's own pace and
no pace at all)."""


def _capture(
    tmp: pytest.TempPathFactory, name: str, run: Callable[[Cluster], None], major: int = 16
) -> Iterator[wl.Captured]:
    cluster = Cluster.create(require_version(major), profile=Profile.CAPTURE)
    try:
        run(cluster)
        workload = wl.capture_cluster_log(cluster, tmp.mktemp(name) / f"{name}.pgtw")
        yield wl.Captured(workload, cluster)
    finally:
        cluster.stop()


def _captured(name: str, run: Callable[[Cluster], None]) -> Any:
    """A module fixture: ``run`` on a fresh capture server, its log captured."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[wl.Captured]:
        yield from _capture(tmp_path_factory, name, run)

    return fixture


def _run_foreign_key_logged(cluster: Cluster) -> None:
    wl.run_foreign_key_handover(cluster, logged=True)


chain = _captured("chain", wl.run_chain)
new_database = _captured("newdb", wl.run_new_database)
producer_consumer = _captured("prodcons", wl.run_producer_consumer)
keyed_handover = _captured("keyed", wl.run_keyed_handover)
foreign_key_handover = _captured("fk", wl.run_foreign_key_handover)
foreign_key_logged = _captured("fklogged", _run_foreign_key_logged)
connect_each = _captured("connect", wl.run_pgbench_connect_each)


def agreement(results: Results, workload: Workload) -> tuple[float, list[Any]]:
    """Share of replayable statements that ended as originally, and the first misses."""
    seen = outcomes(results)
    keys = replayable_keys(workload)
    assert set(seen) == keys, "every replayable statement is recorded once"
    misses = [(k, seen[k]) for k in sorted(keys) if seen[k][0] != seen[k][1]]
    return 1 - len(misses) / len(keys), misses[:5]


def replay_agrees(captured: wl.Captured, target: Cluster, out: Path, **options: Any) -> Results:
    """Replay ``captured`` onto ``target`` (``options``: the sync mode and pace): every
    replayable statement must end as it did originally."""
    results = replay(captured.workload, target, out, **options)
    share, misses = agreement(results, captured.workload)
    assert share == 1.0, misses
    return results


def share_without_sync(captured: wl.Captured, make_cluster: Any, out: Path) -> float:
    """The controls: the share of outcomes kept when ``captured`` is replayed onto a
    fresh 16 at --max-speed with --sync none."""
    target: Cluster = make_cluster(16, Profile.TARGET)
    results = replay(captured.workload, target, out, sync=SyncMode.NONE, max_speed=True)
    return agreement(results, captured.workload)[0]


def _connect_each_target(make_cluster: Any) -> Cluster:
    """A pgbench-initialized 16 with room for 12 client connections (pgbench -C had 8)."""
    target: Cluster = make_cluster(
        16,
        Profile.TARGET,
        settings={"max_connections": "15", "superuser_reserved_connections": "3"},
    )
    run_quiet(target, "pgbench", "-i", "-q", "-s", "1")
    return target


@pytest.mark.parametrize("pace", FAST_PACES)
@pytest.mark.parametrize("major", [16, 18])
def test_chain_of_sessions_keeps_every_outcome(
    chain: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any], major: int
) -> None:
    target: Cluster = make_cluster(major, Profile.TARGET)
    results = replay_agrees(chain, target, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, **pace)
    assert len(results) > 300


@pytest.mark.parametrize("mode", [SyncMode.OBJECTS, SyncMode.ROWS])
@pytest.mark.parametrize("pace", PACES[1:], ids=PACE_IDS[1:])
def test_objects_and_rows_modes_keep_the_chain_too(
    chain: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any], mode: SyncMode
) -> None:
    target: Cluster = make_cluster(16, Profile.TARGET)
    replay_agrees(chain, target, tmp_path / "r.pgtr", sync=mode, **pace)


def test_without_sync_the_chain_breaks_at_max_speed(
    chain: wl.Captured, make_cluster: Any, tmp_path: Path
) -> None:
    """The control: independent sessions overtake the sessions they depend on."""
    assert share_without_sync(chain, make_cluster, tmp_path / "r.pgtr") < 0.95


@pytest.mark.parametrize("pace", FAST_PACES)
def test_sessions_into_a_database_created_by_an_earlier_one(
    new_database: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any]
) -> None:
    target: Cluster = make_cluster(18, Profile.TARGET)
    replay_agrees(new_database, target, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, **pace)


@pytest.mark.parametrize("mode", [SyncMode.COMMIT, SyncMode.OBJECTS, SyncMode.ROWS])
@pytest.mark.parametrize("pace", FAST_PACES)
def test_consumer_never_runs_before_the_producer_commit(
    producer_consumer: wl.Captured,
    make_cluster: Any,
    tmp_path: Path,
    pace: dict[str, Any],
    mode: SyncMode,
) -> None:
    target: Cluster = make_cluster(16, Profile.TARGET)
    replay_agrees(producer_consumer, target, tmp_path / "r.pgtr", sync=mode, **pace)


def test_a_slower_target_still_keeps_the_order(
    producer_consumer: wl.Captured, make_cluster: Any, tmp_path: Path
) -> None:
    """Every insert into jobs sleeps 20 ms on the target: at --speed 1 the consumer,
    which originally ran 2 ms after each insert, must wait for it."""
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END$$;"
    )
    # the workload's own CREATE TABLE makes jobs; the trigger is added by an event trigger
    target.psql(
        "CREATE FUNCTION add_slow() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$BEGIN IF EXISTS (SELECT 1 FROM pg_class WHERE relname = 'jobs') THEN "
        "CREATE TRIGGER slow BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION slow(); "
        "END IF; END$$; "
        "CREATE EVENT TRIGGER add_slow ON ddl_command_end WHEN TAG IN ('CREATE TABLE') "
        "EXECUTE FUNCTION add_slow();"
    )
    results = replay_agrees(producer_consumer, target, tmp_path / "r.pgtr", sync=SyncMode.COMMIT)
    assert int(results.records["sync_wait_us"].max()) > 5_000  # the consumer did wait


@pytest.mark.parametrize("pace", FAST_PACES)
def test_connection_per_transaction_keeps_its_concurrency(
    connect_each: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any]
) -> None:
    """pgbench -C never had more than 8 connections; with room for 12 on the target,
    no session may be refused (53300) or left unsent."""
    target = _connect_each_target(make_cluster)
    replay_agrees(connect_each, target, tmp_path / "r.pgtr", sync=SyncMode.COMMIT, **pace)
    assert len(connect_each.workload.sessions) > 100


@pytest.mark.parametrize("pace", FAST_PACES)
@pytest.mark.parametrize("major", [16, 18])
def test_rows_mode_orders_by_key(
    keyed_handover: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any], major: int
) -> None:
    """The consumer's keyed read waits for the producer's insert of that key (and
    only for that: the sync table shows the waits)."""
    target: Cluster = make_cluster(major, Profile.TARGET)
    results = replay_agrees(keyed_handover, target, tmp_path / "r.pgtr", sync=SyncMode.ROWS, **pace)
    report = build_report(results)
    assert report.sync == "rows"
    if pace.get("max_speed"):
        assert report.sync_waits > 0  # the consumer ran ahead and had to wait


def test_without_sync_the_keyed_handover_breaks(
    keyed_handover: wl.Captured, make_cluster: Any, tmp_path: Path
) -> None:
    """The control: the keyed workload does need the order rows mode keeps."""
    assert share_without_sync(keyed_handover, make_cluster, tmp_path / "r.pgtr") < 0.99


@pytest.mark.parametrize("mode", [SyncMode.ROWS, SyncMode.NONE])
def test_rows_mode_keeps_commit_order_where_the_target_has_a_foreign_key(
    foreign_key_handover: wl.Captured, make_cluster: Any, tmp_path: Path, mode: SyncMode
) -> None:
    """The child's INSERT names no parent row; only the target's foreign key (not in
    the log) ties them. rows sees it on the target and keeps commit order, and says
    so; the control without sync loses children (23503)."""
    target: Cluster = make_cluster(16, Profile.TARGET)
    target.psql(wl.FOREIGN_KEY_SCHEMA)
    results = replay(
        foreign_key_handover.workload, target, tmp_path / "r.pgtr", sync=mode, max_speed=True
    )
    share, misses = agreement(results, foreign_key_handover.workload)
    report = build_report(results)
    if mode is SyncMode.NONE:
        assert share < 0.99
        return
    assert share == 1.0, misses
    assert (report.sync, report.sync_requested) == ("commit", "rows")
    assert any("child (foreign key" in t for t in report.rows_tied)
    assert any("--sync rows kept commit order" in w for w in report.warnings)


@pytest.mark.parametrize("pace", FAST_PACES)
def test_rows_mode_sees_a_foreign_key_made_in_the_log(
    foreign_key_logged: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any]
) -> None:
    """The workload makes the tables itself, so the empty target has nothing to show
    before the replay: the capture saw the REFERENCES and orders both tables by every
    commit from then on."""
    target: Cluster = make_cluster(18, Profile.TARGET)
    results = replay_agrees(
        foreign_key_logged, target, tmp_path / "r.pgtr", sync=SyncMode.ROWS, **pace
    )
    assert build_report(results).sync == "rows"


@pytest.mark.parametrize("pace", FAST_PACES)
def test_rows_mode_keeps_connection_per_transaction_concurrency(
    connect_each: wl.Captured, make_cluster: Any, tmp_path: Path, pace: dict[str, Any]
) -> None:
    target = _connect_each_target(make_cluster)
    replay_agrees(connect_each, target, tmp_path / "r.pgtr", sync=SyncMode.ROWS, **pace)
