"""pgtraffic replay: re-execute a captured workload, compare runs, manage servers."""

from __future__ import annotations

from capture import __version__

__all__ = ["__version__"]
