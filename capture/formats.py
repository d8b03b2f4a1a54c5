"""The log formats capture reads, by name (light: the CLI builds ``--format`` from it
without importing the readers)."""

from __future__ import annotations

import enum


class LogFormat(enum.StrEnum):
    CSVLOG = "csvlog"
    JSONLOG = "jsonlog"
    STDERR = "stderr"
    SYSLOG = "syslog"
    CLOUDSQL = "cloudsql"
    AZURE = "azure"
    CLOUDNATIVEPG = "cloudnativepg"
    APPSTREAM = "appstream"
    """The application-side stream of docs/app-stream.md."""
