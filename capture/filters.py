"""Which sessions and statements a capture keeps."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from capture.events import SessionInfo


@dataclass(frozen=True, slots=True)
class Filters:
    """Include/exclude lists match exactly; an empty include list keeps everything.

    Session filters (database, user, application) use the values of the session's
    connection line (or its first record when the connection was not logged).
    Time bounds apply to statement start times: ``since`` inclusive, ``until`` exclusive.
    """

    databases: tuple[str, ...] = ()
    exclude_databases: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    exclude_users: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    exclude_applications: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    exclude_sql: tuple[str, ...] = ()
    """Regular expressions (Python syntax, searched anywhere in the SQL text)."""

    def keeps_session(self, info: SessionInfo) -> str | None:
        """None when the session is kept, else the reason it is not."""
        for value, include, exclude, what in (
            (info.database, self.databases, self.exclude_databases, "database"),
            (info.user, self.users, self.exclude_users, "user"),
            (info.application, self.applications, self.exclude_applications, "application"),
        ):
            if include and value not in include:
                return f"{what} not included"
            if exclude and value in exclude:
                return f"{what} excluded"
        return None

    @property
    def since_us(self) -> int | None:
        return _epoch_us(self.since)

    @property
    def until_us(self) -> int | None:
        return _epoch_us(self.until)

    def sql_pattern(self) -> re.Pattern[str] | None:
        if not self.exclude_sql:
            return None
        return re.compile("|".join(f"(?:{p})" for p in self.exclude_sql))

    def to_json(self) -> dict[str, Any]:
        """The filters as recorded in the workload header (only those set)."""
        out: dict[str, Any] = {}
        for name in (
            "databases",
            "exclude_databases",
            "users",
            "exclude_users",
            "applications",
            "exclude_applications",
            "exclude_sql",
        ):
            value = getattr(self, name)
            if value:
                out[name] = list(value)
        if self.since is not None:
            out["since"] = self.since.isoformat()
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out


def _epoch_us(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
