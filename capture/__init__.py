"""pgtraffic capture: PostgreSQL logs into a normalized, replayable workload."""

from __future__ import annotations

__version__ = "0.1.0"
