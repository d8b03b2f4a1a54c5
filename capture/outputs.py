"""Output files that never destroy an input, and are never left half written.

Every command that writes a file checks its output first (:func:`check_output`):
the folder must exist, the output must not be one of the command's inputs (the
same file by :meth:`pathlib.Path.samefile`, so also through a symlink or a hard link,
or by resolved path), and an existing file is replaced only when the user said
``--force``. Files written in one go are written under a temporary name in the
same folder and renamed over the output when complete (:func:`atomic_output`),
so a failure leaves the old file (or nothing) behind, never a torn one.

This module is in ``capture`` (the lowest layer) so that capture, replay and the
application commands share it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from capture.errors import UsageError


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (symlinks and hard links included)."""
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return a.resolve() == b.resolve()


def check_output(
    output: Path,
    *,
    inputs: Iterable[str | Path] = (),
    force: bool = False,
    option: str = "-o",
) -> None:
    """Refuse an output that cannot or must not be written; nothing is touched.

    ``inputs``: the files the command reads (``-`` for stdin is ignored); writing
    over one of them is refused even with ``force``. ``option``: how the user
    named the output, for the messages.
    """
    folder = output.parent
    if not folder.exists():
        raise UsageError(
            f"{option} {output}: the folder {folder} does not exist",
            hint=f"create it first (mkdir -p {folder}) or write somewhere else",
        )
    if not folder.is_dir():
        raise UsageError(f"{option} {output}: {folder} is not a folder")
    if output.is_dir():
        raise UsageError(
            f"{option} {output} is a folder",
            hint=f"name a file inside it, e.g. {option} {output / 'out'}",
        )
    for name in inputs:
        if str(name) == "-":
            continue
        source = Path(name)
        if _same(output, source):
            raise UsageError(
                f"{option} {output} is also an input ({source}): writing it would destroy it",
                hint="write the output to another file",
            )
    if not os.access(folder, os.W_OK):
        raise UsageError(
            f"{option} {output}: cannot write in {folder} (permission denied)",
            hint="choose a folder you can write in",
        )
    if (output.exists() or output.is_symlink()) and not force:
        raise UsageError(
            f"{option} {output} exists; not replacing it",
            hint="add --force to replace it, or choose another file name",
        )


def temporary_name(output: Path) -> Path:
    """A name in the output's folder for writing it before the rename."""
    return output.with_name(f".{output.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``output`` (one rename),
    on failure it is removed and ``output`` is as it was."""
    tmp = temporary_name(output)
    try:
        yield tmp
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
