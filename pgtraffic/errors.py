"""The one error tree of pgtraffic.

Every error pgtraffic raises on purpose derives from :class:`PgTrafficError`, so a
caller (and the CLI) can catch them all in one place; ``exit_code`` is what the CLI
exits with and ``hint`` what it prints under the message. Each layer defines the
errors it raises (imports run ``pgtraffic`` -> ``replay`` -> ``capture``), so the
root lives in the lowest one::

    PgTrafficError                    capture.errors    exit 1
    ├── UsageError                    capture.errors    exit 2  options that do not fit together
    ├── InputError                    capture.errors    exit 3  an input missing or unreadable
    │   ├── LogParseError             capture.errors            file:line and the reason
    │   └── WorkloadFormatError       capture.errors            a damaged workload file
    │       └── ResultsFormatError    replay.errors             a damaged results file
    ├── ReplayError                   replay.errors     exit 1  the replay could not run
    ├── TargetError                   replay.errors     exit 5  the target is unreachable
    │   └── TargetRefusedError        replay.errors     exit 7  not replayed onto it (safety)
    └── ServerError                   pgtraffic.errors  exit 4  a server did not start

    (InputError also has DifferentWorkloadsError, in pgtraffic.compare: two results
    files of different workloads.)

Server errors met *during* a replay are not exceptions: they are recorded with
their SQLSTATE (see :mod:`replay.sqlstates` for the pseudo-SQLSTATEs of failures
the server did not report itself).
"""

from __future__ import annotations

from pathlib import Path

from capture.errors import (
    InputError,
    LogParseError,
    PgTrafficError,
    UsageError,
    WorkloadFormatError,
)
from replay.errors import ReplayError, ResultsFormatError, TargetError, TargetRefusedError

__all__ = [
    "InputError",
    "LogParseError",
    "PgTrafficError",
    "ReplayError",
    "ResultsFormatError",
    "ServerError",
    "TargetError",
    "TargetRefusedError",
    "UsageError",
    "WorkloadFormatError",
]


class ServerError(PgTrafficError):
    """A PostgreSQL server could not be found, created, started or stopped."""

    exit_code = 4

    def __init__(
        self, message: str, *, hint: str | None = None, log_path: Path | None = None
    ) -> None:
        if log_path is not None:
            message = f"{message} (server log: {log_path})"
        super().__init__(message, hint=hint)
        self.log_path = log_path
