"""Which of capture's modules are compiled to C (mypyc, by setup.py), and whether
a compiled one is older than its source.

Stdlib only and import-free, so setup.py can read :data:`COMPILED` in a build
environment that has none of the dependencies. A compiled module shadows its
``.py``: an edit made after ``pip install -e .`` would silently not run, so
importing capture warns about it (:func:`stale`), and the test suite, which turns
warnings into errors, stops there.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

COMPILED = (
    "batches",
    "chunking",
    "csvlog",
    "decode",
    "effects",
    "events",
    "jsonlog",
    "messages",
    "normalize",
    "platforms",
    "prefix",
    "rowclock",
    "rowkeys",
    "sessions",
    "stderrlog",
    "syslog",
    "timestamps",
    "workload",
)
"""The modules capture spends its time in (profiled on csvlog, jsonlog and stderr logs),
and every module with a subclass of one of their classes (an interpreted class
cannot inherit from a compiled one)."""

_HERE = Path(__file__).parent
_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def built() -> dict[str, Path]:
    """The compiled file of each module of :data:`COMPILED` that has one."""
    found = {}
    for name in COMPILED:
        for suffix in _SUFFIXES:
            path = _HERE / f"{name}{suffix}"
            if path.exists():
                found[name] = path
                break
    return found


def stale() -> list[str]:
    """Modules whose source changed after they were compiled."""
    return [
        name
        for name, path in built().items()
        if (_HERE / f"{name}.py").stat().st_mtime > path.stat().st_mtime
    ]


def running_compiled() -> list[str]:
    """The modules of :data:`COMPILED` that this process runs compiled (imported ones)."""
    out = []
    for name in COMPILED:
        module = sys.modules.get(f"capture.{name}")
        if module is not None and str(getattr(module, "__file__", "")).endswith(_SUFFIXES):
            out.append(name)
    return out
