"""The root of pgtraffic's one error tree, and the errors of reading inputs.

The whole tree is drawn in :mod:`pgtraffic.errors`; its root lives here, in the
lowest layer, because every layer raises it.

Every error pgtraffic raises on purpose derives from :class:`PgTrafficError`, so a
caller (and the CLI) can catch them all in one place. Subclasses carry the context
a user needs to act: the file and line of a bad log record, the server that failed
to start and where its log is.
"""

from __future__ import annotations


class PgTrafficError(Exception):
    """Root of every error pgtraffic raises on purpose.

    ``hint`` says what the user can do next; the CLI prints it under the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(PgTrafficError):
    """The arguments or options do not make sense together."""

    exit_code = 2


class InputError(PgTrafficError):
    """An input file is missing, unreadable, or not what it claims to be."""

    exit_code = 3


class LogParseError(InputError):
    """A log record could not be understood; carries ``file:line`` and the reason."""

    def __init__(self, source: str, line: int, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{source}:{line}: {reason}", hint=hint)
        self.source = source
        self.line = line
        self.reason = reason


class WorkloadFormatError(InputError):
    """A workload or results file is malformed or of a format version we do not read."""
