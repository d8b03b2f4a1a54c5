"""Build: capture's hot modules compiled to C with mypyc, when it can be done.

``pip install -e .`` (or ``pip install .``) compiles the modules of
:data:`COMPILED` with mypyc (a build requirement, fetched by pip) and the
system's C compiler. The compiled module is the same source, with the same
behaviour (tests/test_compiled.py pins the two together); only its speed differs.
When mypyc or the compiler is missing or fails, the install still succeeds and
the package runs as plain Python, with a warning. ``PGTRAFFIC_PURE_PYTHON=1``
skips the compilation on purpose.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

_NATIVE = Path(__file__).parent / "capture" / "native.py"
COMPILED = [f"capture/{name}.py" for name in runpy.run_path(str(_NATIVE))["COMPILED"]]
"""The modules capture spends its time in (the list is capture/native.py's)."""


class OptionalBuild(build_ext):
    """build_ext on both cores that leaves plain Python behind when compiling fails."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any compiler failure: stay pure
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            print(
                f"warning: pgtraffic's compiled modules were not built ({exc}); "
                "capture runs as plain Python, about 1.5x slower",
                file=sys.stderr,
            )


def extensions() -> list[Any]:
    if os.environ.get("PGTRAFFIC_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("warning: mypyc is not installed; pgtraffic stays plain Python", file=sys.stderr)
        return []
    # the build environment has mypyc but not the runtime dependencies: their
    # modules are typed Any there, which compiles to the same calls
    options = ["--ignore-missing-imports", *COMPILED]
    # -O1: half the build time of -O3 (50 s against 75 s on 2 cores) and no slower
    # capture measured (the gain is mypyc's native calls and attributes, not gcc's)
    try:
        return list(mypycify(options, opt_level="1", debug_level="0"))
    except (Exception, SystemExit) as exc:  # mypy found an error: stay pure
        print(f"warning: pgtraffic stays plain Python (mypyc: {exc})", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuild})
