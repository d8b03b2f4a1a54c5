"""Errors raised by replay, all part of the one tree drawn in :mod:`pgtraffic.errors`."""

from __future__ import annotations

from capture.errors import PgTrafficError, WorkloadFormatError


class ResultsFormatError(WorkloadFormatError):
    """A results file is not one, is of an unknown format version, or is damaged."""


class TargetError(PgTrafficError):
    """The replay target could not be reached or inspected before the replay began."""

    exit_code = 5


class ReplayError(PgTrafficError):
    """The replay itself could not run (a worker process failed to start)."""


class TargetRefusedError(TargetError):
    """The replay was not started: the target is the capture's source, its logins are
    missing, or writing onto it was not confirmed. Nothing was sent."""

    exit_code = 7
