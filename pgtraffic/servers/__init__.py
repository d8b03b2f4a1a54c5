"""Throwaway PostgreSQL servers: find installations, create, start and stop clusters."""

from __future__ import annotations

from pgtraffic.servers.cluster import Cluster, StopReport
from pgtraffic.servers.installations import Installation, find_installation, find_installations
from pgtraffic.servers.profiles import Profile

__all__ = [
    "Cluster",
    "Installation",
    "Profile",
    "StopReport",
    "find_installation",
    "find_installations",
]
