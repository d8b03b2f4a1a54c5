"""pgtraffic capture: PostgreSQL logs into a normalized, replayable workload.

The front door::

    from capture import capture, CaptureOptions, Filters, read_workload

    summary = capture(["postgresql.csv"], Path("w.pgtw"), CaptureOptions(strict=True))
    workload = read_workload("w.pgtw")

Names are imported on first use, so ``import capture.errors`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "capture": "capture.pipeline",
    "CaptureOptions": "capture.pipeline",
    "CaptureSummary": "capture.pipeline",
    "Filters": "capture.filters",
    "LogFormat": "capture.formats",
    "read_workload": "capture.workload",
    "Workload": "capture.workload",
    "WorkloadWriter": "capture.workload",
    "workload_stats": "capture.inspect",
}

__all__ = [
    "CaptureOptions",
    "CaptureSummary",
    "Filters",
    "LogFormat",
    "Workload",
    "WorkloadWriter",
    "capture",
    "read_workload",
    "workload_stats",
]

if TYPE_CHECKING:
    from capture.filters import Filters
    from capture.formats import LogFormat
    from capture.inspect import workload_stats
    from capture.pipeline import CaptureOptions, CaptureSummary, capture
    from capture.workload import Workload, WorkloadWriter, read_workload


def _warn_if_stale() -> None:
    from capture.native import stale

    names = stale()
    if names:
        import warnings

        warnings.warn(
            f"capture's compiled modules {', '.join(names)} are older than their source: "
            "the compiled ones run, not the edits. Run `pip install -e .` again, or "
            "`rm capture/*.so` to run plain Python",
            RuntimeWarning,
            stacklevel=2,
        )


_warn_if_stale()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'capture' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
