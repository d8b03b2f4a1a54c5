"""What differs between the two targets, besides what is under test.

A comparison means "the version (or the change) made this difference" only when the
two targets are otherwise alike. Each results file records its target's key
settings (``target.settings`` in its header: see :data:`replay.connection.KEY_SETTINGS`)
and, before the replay, the tables it found without planner statistics; this
module lists what differs, for compare's report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IGNORED = frozenset({"server_version", "TimeZone", "DateStyle"})
"""Settings not listed as differences: the version is what is compared, and the two
others only shape how values print."""


@dataclass(frozen=True, slots=True)
class SettingDifference:
    name: str
    baseline: str | None
    """None: the baseline's results file did not record this setting."""
    candidate: str | None


@dataclass(frozen=True, slots=True)
class TargetDifferences:
    settings: tuple[SettingDifference, ...]
    baseline_unanalyzed: tuple[str, ...]
    """Tables the workload uses that had no planner statistics on the baseline."""
    candidate_unanalyzed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.settings or self.baseline_unanalyzed or self.candidate_unanalyzed)

    def lines(self) -> list[str]:
        """One line per difference, for the terminal and Markdown."""
        out = [
            f"{d.name}: {d.baseline or '(not recorded)'} -> {d.candidate or '(not recorded)'}"
            for d in self.settings
        ]
        for side, tables in (
            ("baseline", self.baseline_unanalyzed),
            ("candidate", self.candidate_unanalyzed),
        ):
            if tables:
                shown = ", ".join(tables[:5]) + (" ..." if len(tables) > 5 else "")
                out.append(
                    f"{len(tables)} table(s) without planner statistics on the {side} "
                    f"({shown}): run ANALYZE after a restore, before replaying"
                )
        return out


def _settings(header: Mapping[str, Any]) -> Mapping[str, str]:
    target = header.get("target")
    if not isinstance(target, Mapping):
        return {}
    settings = target.get("settings")
    return settings if isinstance(settings, Mapping) else {}


def _unanalyzed(header: Mapping[str, Any]) -> tuple[str, ...]:
    tables = header.get("unanalyzed_tables")
    return tuple(str(t) for t in tables) if isinstance(tables, list) else ()


def target_differences(
    baseline: Mapping[str, Any], candidate: Mapping[str, Any]
) -> TargetDifferences:
    """The differences between two results files' targets (from their headers)."""
    a, b = _settings(baseline), _settings(candidate)
    names = sorted((set(a) | set(b)) - IGNORED)
    diffs = tuple(
        SettingDifference(name, a.get(name), b.get(name))
        for name in names
        if a.get(name) != b.get(name)
    )
    return TargetDifferences(diffs, _unanalyzed(baseline), _unanalyzed(candidate))
