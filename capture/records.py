"""The records of a workload: what capture writes and replay reads.

All offsets are microseconds from the workload's ``capture_start``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from capture.fields import field_dict, from_fields


class StatementKind(enum.StrEnum):
    """How the original client sent a statement."""

    SIMPLE = "simple"
    """Simple-query protocol (``statement:`` in the log); may hold several statements."""
    EXECUTE = "execute"
    """Extended protocol (``execute <name>:``): parse/bind/execute with parameters."""
    COPY_FROM_STDIN = "copy_from_stdin"
    """``COPY ... FROM STDIN``: the data is not in the log, so it cannot be replayed."""

    @property
    def replayable(self) -> bool:
        return self is not StatementKind.COPY_FROM_STDIN


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement as the original client sent it."""

    session: str
    """The session it ran in (PostgreSQL's session id, e.g. ``6565b3c1.1a2b``)."""
    seq: int
    """0-based position within its session."""
    offset_us: int
    """When it started, in microseconds after ``capture_start``."""
    kind: StatementKind
    sql: str
    fingerprint: str
    """Query-class key: ``pglast.fingerprint`` (or a fallback for unparsable SQL)."""
    params: tuple[str | None, ...] | None = None
    """Bind parameters as logged (text; None is SQL NULL); None for simple queries."""
    name: str | None = None
    """Prepared-statement name for EXECUTE ('' is the unnamed statement)."""
    duration_us: int | None = None
    """Original duration when ``log_min_duration_statement`` logged it."""
    sqlstate: str | None = None
    """Original SQLSTATE when the statement failed; None when it succeeded."""
    params_truncated: bool = False
    """Some parameter was cut by ``log_parameter_max_length``: replay cannot be exact."""
    commit: int = 0
    """Its completion is commit number ``commit`` of the commit clock (0: not a commit)."""
    after: int = 0
    """Commits 1..after were seen complete in the log before it started."""
    after_objects: int = 0
    """The latest of those that wrote a relation it touches, or was global (<= after)."""
    after_rows: int = 0
    """The latest commit that wrote rows it touches, by key where it has one, else by
    relation (docs/workload-format.md; present when the header's sync has ``rows``)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "statement",
            "session": self.session,
            "seq": self.seq,
            "offset_us": self.offset_us,
            "kind": self.kind.value,
            "sql": self.sql,
            "fingerprint": self.fingerprint,
        }
        if self.params is not None:
            out["params"] = list(self.params)
        if self.name is not None:
            out["name"] = self.name
        if self.duration_us is not None:
            out["duration_us"] = self.duration_us
        if self.sqlstate is not None:
            out["sqlstate"] = self.sqlstate
        if self.params_truncated:
            out["params_truncated"] = True
        if self.commit:
            out["commit"] = self.commit
        if self.after:
            out["after"] = self.after
        if self.after_objects:
            out["after_objects"] = self.after_objects
        if self.after_rows:
            out["after_rows"] = self.after_rows
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Statement:
        params = obj.get("params")
        return cls(
            session=obj["session"],
            seq=obj["seq"],
            offset_us=obj["offset_us"],
            kind=StatementKind(obj["kind"]),
            sql=obj["sql"],
            fingerprint=obj["fingerprint"],
            params=tuple(params) if params is not None else None,
            name=obj.get("name"),
            duration_us=obj.get("duration_us"),
            sqlstate=obj.get("sqlstate"),
            params_truncated=obj.get("params_truncated", False),
            commit=obj.get("commit", 0),
            after=obj.get("after", 0),
            after_objects=obj.get("after_objects", 0),
            after_rows=obj.get("after_rows", 0),
        )


_SESSION_SYNC = ("disconnect_order", "after_disconnects", "connect_after", "connect_after_objects")
"""Session members of format version 2, left out of the JSON when 0."""
_SESSION_SPAN = ("first_us", "last_us")
"""Session members written since the statement spans (left out when None)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One original client connection."""

    id: str
    user: str | None
    database: str | None
    application: str | None = None
    client: str | None = None
    """``host:port`` or ``[local]`` as logged in ``connection_from``."""
    connect_us: int | None = None
    """When it connected; None when the capture began after it connected."""
    disconnect_us: int | None = None
    """When it disconnected; None when it outlived the capture."""
    statements: int = 0
    disconnect_order: int = 0
    """Its disconnection was the j-th of the file's sessions to be logged (0: none)."""
    after_disconnects: int = 0
    """Disconnections 1..after_disconnects were logged before its connection."""
    connect_after: int = 0
    """The commit clock when its connection was logged."""
    connect_after_objects: int = 0
    """The latest global commit at or before ``connect_after``."""
    first_us: int | None = None
    """The offset of its first statement (None: none, or written before spans were)."""
    last_us: int | None = None
    """The offset of its last statement plus that statement's logged duration."""

    def to_json(self) -> dict[str, Any]:
        exclude = _SESSION_SYNC + _SESSION_SPAN
        out: dict[str, Any] = {"type": "session", **field_dict(self, exclude=exclude)}
        for key in _SESSION_SYNC:
            value = getattr(self, key)
            if value:
                out[key] = value
        for key in _SESSION_SPAN:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Session:
        return from_fields(cls, obj, user=obj.get("user"), database=obj.get("database"))


@dataclass(frozen=True, slots=True)
class QueryClass:
    """All statements sharing one fingerprint."""

    fingerprint: str
    normalized: str
    """``pglast.normalize`` text of the first occurrence (raw SQL when unparsable)."""
    parsed: bool
    """False when pglast could not parse it and the fingerprint is a fallback."""
    count: int
    total_duration_us: int = 0
    """Sum of logged durations (0 when durations were not logged)."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "class", **field_dict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> QueryClass:
        return from_fields(cls, obj)


@dataclass(frozen=True, slots=True)
class WorkloadHeader:
    """Identity and provenance of a workload file."""

    format_version: int
    pgtraffic_version: str
    pglast_version: str
    created: str
    """ISO 8601 UTC time the file was written."""
    capture_start: str
    """ISO 8601 time that offset 0 stands for."""
    capture_end: str
    source_server_version: str | None = None
    sources: tuple[str, ...] = ()
    filters: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    workload_id: str = ""
    """A digest of the statements: results files name it to prove what they replayed."""
    sync: dict[str, int] = field(default_factory=dict)
    """``{"commits": K, "disconnects": J, "rows": 1}``: the commit clock's totals ({} in
    version 1); ``rows`` says the statements carry ``after_rows`` (absent before)."""
    source: dict[str, Any] = field(default_factory=dict)
    """The source server's identity when capture could read it (``--source-dsn``):
    system_identifier, server_version, host, port, data_directory, cluster_name ({}: unknown)."""
    preamble_digest: str = ""
    """SHA-256 (hex, first 16 bytes) of the class and session lines as stored, so a
    reader can tell an edited or damaged preamble ("": written before it existed)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "header",
            "format": "pgtraffic-workload",
            **field_dict(self, sources=list(self.sources)),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WorkloadHeader:
        return from_fields(
            cls,
            obj,
            sources=tuple(obj.get("sources", ())),
            filters=dict(obj.get("filters", {})),
            counts=dict(obj.get("counts", {})),
            sync=dict(obj.get("sync", {})),
            source=dict(obj.get("source") or {}),
            preamble_digest=str(obj.get("preamble_digest") or ""),
        )
