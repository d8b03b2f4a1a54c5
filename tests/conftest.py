"""The real-server test harness.

Session-scoped fixtures start real PostgreSQL 16 and 18 clusters (from the PyPI
wheels) and 15 where Debian's package is installed; tests needing a version that
is not installed are skipped with the reason. Every cluster is stopped at the end
of the session, and how each stop went (including a postmaster that died under a
test) is printed in the terminal summary.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgtraffic.errors import ServerError
from pgtraffic.servers import Cluster, Installation, Profile, StopReport, find_installations
from pgtraffic.servers.cluster import reap_orphans

VERSIONS = (15, 16, 18)
_STOP_REPORTS: list[StopReport] = []
_INSTALLATIONS: dict[int, Installation] = {}


def _installations() -> dict[int, Installation]:
    if not _INSTALLATIONS:
        for inst in find_installations():
            _INSTALLATIONS.setdefault(inst.major, inst)
    return _INSTALLATIONS


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI timeout, kill) unwinds like Ctrl-C so fixtures still stop servers.
    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    for report in reap_orphans():
        _STOP_REPORTS.append(report)


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = _installations()
    lines = []
    for major in VERSIONS:
        inst = found.get(major)
        where = f"{inst.version} from {inst.source} ({inst.bin_dir})" if inst else "not installed"
        lines.append(f"PostgreSQL {major}: {where}")
    return lines


def _matches(spec: object, major: int) -> bool:
    if isinstance(spec, int):
        return major == spec
    match = re.fullmatch(r"\s*(>=|<=|==|>|<)?\s*(\d+)\s*", str(spec))
    if match is None:
        raise pytest.UsageError(f"bad pg marker spec {spec!r}")
    op, value = match.group(1) or "==", int(match.group(2))
    return {
        ">=": major >= value,
        "<=": major <= value,
        ">": major > value,
        "<": major < value,
        "==": major == value,
    }[op]


def require_version(major: int) -> Installation:
    inst = _installations().get(major)
    if inst is None:
        hint = (
            "apt-get install postgresql-15" if major == 15 else "pip install 'pgtraffic[embedded]'"
        )
        pytest.skip(f"PostgreSQL {major} is not installed ({hint})")
    return inst


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("pg"):
        spec = marker.args[0] if marker.args else ">=0"
        majors = [m for m in _installations() if _matches(spec, m)]
        if not majors:
            pytest.skip(f"no installed PostgreSQL matches {spec}")


def _cluster(major: int, profile: Profile, **kwargs: Any) -> Iterator[Cluster]:
    inst = require_version(major)
    cluster = Cluster.create(inst, profile=profile, **kwargs)
    try:
        yield cluster
    finally:
        _STOP_REPORTS.append(cluster.stop())


@pytest.fixture(scope="session")
def pg16() -> Iterator[Cluster]:
    """A running PostgreSQL 16 target cluster, shared by the session."""
    yield from _cluster(16, Profile.TARGET)


@pytest.fixture(scope="session")
def pg18() -> Iterator[Cluster]:
    """A running PostgreSQL 18 target cluster, shared by the session."""
    yield from _cluster(18, Profile.TARGET)


@pytest.fixture(scope="session")
def pg15() -> Iterator[Cluster]:
    """A running PostgreSQL 15 target cluster (skipped when Debian's 15 is absent)."""
    yield from _cluster(15, Profile.TARGET)


@pytest.fixture(scope="session", params=[15, 16, 18], ids=lambda m: f"pg{m}")
def any_pg(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Each installed version in turn, as a target cluster."""
    yield from _cluster(request.param, Profile.TARGET)


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster() -> Iterator[ClusterFactory]:
    """Create clusters private to one test: ``make_cluster(16, Profile.CAPTURE)``."""
    made: list[Cluster] = []

    def factory(major: int, profile: Profile = Profile.TARGET, **kwargs: Any) -> Cluster:
        inst = require_version(major)
        cluster = Cluster.create(inst, profile=profile, **kwargs)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        if cluster.stop_report is None:
            _STOP_REPORTS.append(cluster.stop())
        else:
            _STOP_REPORTS.append(cluster.stop_report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _STOP_REPORTS:
        return
    terminalreporter.section("PostgreSQL clusters")
    for report in _STOP_REPORTS:
        terminalreporter.write_line(report.describe())


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pgtraffic_cmd() -> list[str]:
    """How to invoke the CLI in a subprocess."""
    return [sys.executable, "-m", "pgtraffic.cli"]


__all__ = ["ClusterFactory", "ServerError", "require_version"]
