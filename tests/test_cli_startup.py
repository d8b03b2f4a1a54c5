"""``pgtraffic --help`` stays fast: building the app loads none of the heavy libraries.

Asserted on the modules a fresh interpreter has loaded, not on time (these machines
are shared and noisy); ``python -X importtime -c 'import pgtraffic.cli'`` shows where
the time goes when this fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pgtraffic.commands import options
from replay.sync import DEFAULT_SYNC_TIMEOUT_S, SyncMode

HEAVY = ("numpy", "scipy", "psycopg", "asyncpg", "pglast", "matplotlib")
"""What the command implementations need and --help must not load."""

BUILD_AND_LIST = """
import json, sys
import typer.main
import pgtraffic.cli
typer.main.get_command(pgtraffic.cli.build_app())  # every command and its options
print(json.dumps(sorted(sys.modules)))
"""


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return {name.partition(".")[0] for name in json.loads(out.stdout)}


def test_building_the_app_loads_no_heavy_library() -> None:
    loaded = _loaded_after(BUILD_AND_LIST)
    assert "typer" in loaded and "pgtraffic" in loaded
    assert sorted(loaded & set(HEAVY)) == []


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["compare", "--help"]])
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import json, sys\n"
        "import pgtraffic.cli\n"
        "try:\n"
        f"    pgtraffic.cli.app(args={argv!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lines = out.stdout.strip().splitlines()
    assert "Usage:" in out.stdout
    loaded = {name.partition(".")[0] for name in json.loads(lines[-1])}
    assert sorted(loaded & set(HEAVY)) == []


def test_pgtraffic_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgtraffic.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("capture", "replay", "compare", "rehearse", "demo", "servers", "results"):
        assert command in result.stdout


def test_sync_choices_match_the_replayer() -> None:
    """--sync is declared without importing replay.sync (it loads asyncpg); keep in step."""
    assert [c.value for c in options.SyncChoice] == [m.value for m in SyncMode]
    assert options.DEFAULT_SYNC_TIMEOUT == DEFAULT_SYNC_TIMEOUT_S
