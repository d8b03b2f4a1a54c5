"""pgtraffic: capture PostgreSQL traffic from logs, replay it, compare the runs.

The application package: the command line (:mod:`pgtraffic.cli`, one module per
command in :mod:`pgtraffic.commands`), the one error tree (:mod:`pgtraffic.errors`),
compare and its reports (:mod:`pgtraffic.compare`), the throwaway-server manager
(:mod:`pgtraffic.servers`), rehearse/demo (:mod:`pgtraffic.rehearsal`) and the
bundled scenarios' loader (:mod:`pgtraffic.scenario`). It builds on :mod:`replay`
(the replayer) and :mod:`capture` (logs into workloads); neither imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capture.version import __version__

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Read from the package metadata on first use (importlib.metadata is slow to
    # import), so building the CLI for --help does not pay for it.
    if name == "__version__":
        from capture.version import __version__

        return __version__
    raise AttributeError(f"module 'pgtraffic' has no attribute {name!r}")
