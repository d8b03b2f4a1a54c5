"""pgtraffic's version, as installed (pyproject.toml is the one place it is written).

Capture records it in every workload and replay in every results file, so it is
read here, in the lowest layer, from the package's metadata.
"""

from __future__ import annotations

from importlib import metadata


def _installed_version() -> str:
    try:
        return metadata.version("pgtraffic")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "0+unknown"


__version__ = _installed_version()
