"""What differs between the two targets, besides what is under test.

A comparison means "the version (or the change) made this difference" only when the
two targets are otherwise alike. Each results file records its target's key
settings (``target.settings`` in its header: see :data:`replay.connection.KEY_SETTINGS`)
and, before the replay, the tables it found without planner statistics and the size
and extensions of each database the sessions used (``databases``, see
:mod:`replay.target_contents`); this module lists what differs, for compare's report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replay.target_contents import DatabaseContents, databases_from_header

IGNORED = frozenset({"server_version", "TimeZone", "DateStyle"})
"""Settings not listed as differences: the version is what is compared, and the two
others only shape how values print."""

SIZE_RATIO = 1.2
SIZE_BYTES = 8 * 1024 * 1024
"""Database sizes are listed as different when the bigger is over 20% and over 8 MB
bigger than the smaller. The 8 MB (1,024 pages, a sixteenth of the default 128 MB
shared_buffers) keep out small databases, where a percentage says nothing about the
cache: an empty database is 7 MB of catalogs (6.9 MB on 16, 7.1 MB on 18), so one
with a few MB of test data on one side only is 50% bigger and still fits in cache on
both. The 20% keep out the bloat a replay's own writes leave behind (dead rows,
split pages) on a target that is not restored between rounds. A difference beyond
both is data one target holds and the other does not: it changes how much of the
database fits in cache."""


@dataclass(frozen=True, slots=True)
class SettingDifference:
    name: str
    baseline: str | None
    """None: the baseline's results file did not record this setting."""
    candidate: str | None


@dataclass(frozen=True, slots=True)
class ExtensionDifference:
    database: str
    """The database's name (``base / cand`` when the two sides used different names)."""
    name: str
    baseline: str | None
    """The installed version (None: not installed on the baseline)."""
    candidate: str | None

    def line(self) -> str:
        if self.baseline is None or self.candidate is None:
            side = "baseline" if self.candidate is None else "candidate"
            return (
                f"extension {self.name} {self.baseline or self.candidate} is installed in "
                f"database {self.database} on the {side} only: statements that use it fail on "
                "the other side, and plans there cannot use its operators and index types"
            )
        return (
            f"extension {self.name} in database {self.database}: {self.baseline} -> "
            f"{self.candidate}: its functions, operators and index support may behave or "
            "cost differently"
        )


@dataclass(frozen=True, slots=True)
class SizeDifference:
    database: str
    baseline_bytes: int
    candidate_bytes: int

    def line(self) -> str:
        a, b = self.baseline_bytes, self.candidate_bytes
        ratio = max(a, b) / max(1, min(a, b))
        bigger = "candidate" if b > a else "baseline"
        return (
            f"database {self.database}: {_size(a)} -> {_size(b)} ({ratio:.1f}x): the bigger "
            f"database (the {bigger}'s) keeps less of itself in cache, so its reads are colder, "
            "and its tables take longer to scan, whatever the version"
        )


@dataclass(frozen=True, slots=True)
class TargetDifferences:
    settings: tuple[SettingDifference, ...]
    baseline_unanalyzed: tuple[str, ...]
    """Tables the workload uses that had no planner statistics on the baseline."""
    candidate_unanalyzed: tuple[str, ...]
    extensions: tuple[ExtensionDifference, ...] = ()
    """Extensions installed on one side only, or in other versions, per database."""
    sizes: tuple[SizeDifference, ...] = ()
    """Databases whose sizes differ beyond :data:`SIZE_RATIO` and :data:`SIZE_BYTES`."""
    unknown: tuple[str, ...] = ()
    """What could not be compared and why (a results file without ``databases``,
    extensions that could not be read, databases used on one side only)."""

    def __bool__(self) -> bool:
        return bool(
            self.settings
            or self.baseline_unanalyzed
            or self.candidate_unanalyzed
            or self.extensions
            or self.sizes
        )

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
        out += [d.line() for d in self.extensions]
        out += [d.line() for d in self.sizes]
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
    contents = _contents(databases_from_header(baseline), databases_from_header(candidate))
    return TargetDifferences(diffs, _unanalyzed(baseline), _unanalyzed(candidate), *contents)


def _size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.0f} MB" if n >= 100 * 2**20 else f"{n / 2**20:.1f} MB"


_Pair = tuple[str, DatabaseContents, DatabaseContents]


def _pairs(
    a: Mapping[str, DatabaseContents], b: Mapping[str, DatabaseContents]
) -> tuple[list[_Pair], list[str]]:
    """The databases to compare, matched by name (one a side: matched whatever their
    names, as after --map-database), and notes on those used on one side only."""
    if len(a) == 1 and len(b) == 1 and set(a) != set(b):
        (na, da), (nb, db) = next(iter(a.items())), next(iter(b.items()))
        return [(f"{na} / {nb}", da, db)], []
    notes = [
        f"database(s) used on the {side} only, not compared: {', '.join(sorted(names))}"
        for side, names in (("baseline", set(a) - set(b)), ("candidate", set(b) - set(a)))
        if names
    ]
    return [(name, a[name], b[name]) for name in sorted(set(a) & set(b))], notes


def _extension_differences(
    name: str, a: Mapping[str, str], b: Mapping[str, str]
) -> list[ExtensionDifference]:
    return [
        ExtensionDifference(name, ext, a.get(ext), b.get(ext))
        for ext in sorted(set(a) | set(b))
        if a.get(ext) != b.get(ext)
    ]


def _size_differs(a: int, b: int) -> bool:
    small, big = sorted((a, b))
    return big > small * SIZE_RATIO and big - small > SIZE_BYTES


def _contents(
    a: Mapping[str, DatabaseContents] | None, b: Mapping[str, DatabaseContents] | None
) -> tuple[tuple[ExtensionDifference, ...], tuple[SizeDifference, ...], tuple[str, ...]]:
    """Extension and size differences of the databases both sides used, and what could
    not be compared."""
    if a is None or b is None:
        which = "either" if a is b else "the baseline's" if a is None else "the candidate's"
        note = (
            f"extensions and database sizes were not recorded in {which} results file "
            "(written before pgtraffic recorded them): not compared"
        )
        return (), (), (note,)
    pairs, unknown = _pairs(a, b)
    extensions: list[ExtensionDifference] = []
    sizes: list[SizeDifference] = []
    for name, da, db in pairs:
        if da.extensions is None or db.extensions is None:
            why = "; ".join(
                f"{side}: {c.error or 'not recorded'}"
                for side, c in (("baseline", da), ("candidate", db))
                if c.extensions is None
            )
            unknown.append(f"extensions of database {name} not compared ({why})")
        else:
            extensions += _extension_differences(name, da.extensions, db.extensions)
        if da.size_bytes is None or db.size_bytes is None:
            unknown.append(f"size of database {name} not compared (not readable on one side)")
        elif _size_differs(da.size_bytes, db.size_bytes):
            sizes.append(SizeDifference(name, da.size_bytes, db.size_bytes))
    return tuple(extensions), tuple(sizes), tuple(unknown)
