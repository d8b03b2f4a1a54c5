"""Logs of hosted PostgreSQL as their platforms export them (pure; no I/O).

* **Google Cloud SQL**: Cloud Logging entries (``gcloud logging read --format=json``
  writes a JSON array, newest first; sinks write one JSON object per line) whose
  ``textPayload`` is the server's stderr line (``%m [%p]: [%l-1] db=%d,user=%u ``).
  The payloads, oldest first, are read as a stderr log.
* **Azure Database for PostgreSQL** (flexible server): diagnostic-settings exports
  of the ``PostgreSQLLogs`` category, one JSON object per line with ``time`` and a
  ``properties`` object (``message``, ``detail``, ``errorLevel``, ``sqlerrcode``,
  ``processId``, ``prefix`` from ``log_line_prefix = '%t-%c-'``), or Log Analytics
  ``PGSQLServerLogs`` rows (``TimeGenerated``, ``Message``, ``ErrorLevel``,
  ``SqlErrorCode``, ``ProcessId``, ``Detail``, ``Statement``).
* **CloudNativePG**: the instance manager's JSON lines; PostgreSQL's own records are
  those with ``"logger": "postgres"`` whose ``record`` holds the csvlog fields by
  name (``log_time``, ``session_id``, ``error_severity``, ``message``, ...).

Each becomes what :class:`~capture.decode.RecordDecoder` takes: Cloud SQL and Azure
through stderr text (:mod:`capture.stderrlog`: sessions from pids and connection
messages when the export has no session id), CloudNativePG directly.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from collections.abc import Sequence
from typing import Any

from capture.chunking import Chunker, ChunkText
from capture.decode import RecordDecoder
from capture.prefix import compile_prefix, detect_prefix, head_lines
from capture.stderrlog import parse_translated


class Platform(enum.StrEnum):
    CLOUDSQL = "cloudsql"
    AZURE = "azure"
    CLOUDNATIVEPG = "cloudnativepg"


PLATFORM_NAMES = {
    Platform.CLOUDSQL: "Google Cloud SQL (Cloud Logging export)",
    Platform.AZURE: "Azure Database for PostgreSQL (PostgreSQLLogs export)",
    Platform.CLOUDNATIVEPG: "CloudNativePG (instance manager JSON)",
}
CLOUDSQL_PREFIX = "%m [%p]: [%l-1] db=%d,user=%u "
"""Cloud SQL's log_line_prefix (users cannot change it)."""
AZURE_PREFIX = "%m [%p] %e "
"""The prefix of the stderr lines an Azure record is written as."""
_SESSION = re.compile(r"[0-9a-f]{6,10}\.[0-9a-f]{1,8}")
_FRACTION = re.compile(r"(\.\d{6})\d+")


class WholeChunker(Chunker):
    """One chunk of the whole input: a JSON array is read at once."""

    def _cut(self, start: int) -> int | None:
        return None

    def _ends_inside_record(self, start: int) -> bool:
        return False


def log_time(text: str) -> str:
    """An RFC 3339 time as a PostgreSQL log time in UTC (milliseconds)."""
    moment = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def _objects(text: str) -> list[tuple[int, Any]]:
    """(line index, object) of a JSON array or of JSON lines (unparsable lines: None)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError:
            return [(0, None)]
        return [(0, item) for item in items] if isinstance(items, list) else [(0, None)]
    out: list[tuple[int, Any]] = []
    for index, raw in enumerate(text.split("\n")):
        if raw.strip():
            try:
                out.append((index, json.loads(raw)))
            except ValueError:
                out.append((index, None))
    return out


def platform_of(obj: Any) -> Platform | None:
    """Which platform's export a first JSON object comes from."""
    if not isinstance(obj, dict):
        return None
    if "textPayload" in obj and ("logName" in obj or "resource" in obj):
        return Platform.CLOUDSQL
    if obj.get("category") == "PostgreSQLLogs" or ("ErrorLevel" in obj and "Message" in obj):
        return Platform.AZURE
    if obj.get("logger") == "postgres" or isinstance(obj.get("record"), dict):
        return Platform.CLOUDNATIVEPG
    if "level" in obj and "logging_pod" in obj:
        return Platform.CLOUDNATIVEPG
    return None


def detect_platform(head: str) -> tuple[Platform, str] | None:
    """The platform of an export's first bytes and, for Cloud SQL, the log_line_prefix
    of its payloads; None when it is none of them."""
    stripped = head.lstrip()
    if stripped.startswith("["):
        found = re.search(r"\{", stripped)
        first: Any = None
        if found is not None:
            try:
                first, _ = json.JSONDecoder().raw_decode(stripped, found.start())
            except ValueError:
                first = {"textPayload": "", "logName": ""} if "textPayload" in head else None
        objects = [(0, first)]
    else:
        objects = _objects("\n".join(head.split("\n")[:-1]) or head)
    platforms = [platform_of(obj) for _, obj in objects[:50] if obj is not None]
    known = [p for p in platforms if p is not None]
    if not known:
        return None
    platform = max(set(known), key=known.count)
    if platform is not Platform.CLOUDSQL:
        return platform, ""
    payloads = _payloads_of_array_head(head)
    lines = head_lines("\n".join(payloads) + "\n")
    known_prefix = compile_prefix(CLOUDSQL_PREFIX)
    if lines and sum(1 for line in lines if known_prefix.match(line)) >= 0.9 * len(lines):
        return platform, CLOUDSQL_PREFIX
    found_prefix = detect_prefix(lines)
    return platform, found_prefix.prefix.text if found_prefix is not None else ""


def _payloads_of_array_head(head: str) -> list[str]:
    """textPayload values of the complete entries at the start of a cut JSON array."""
    out = []
    for found in re.finditer(r'"textPayload":\s*("(?:[^"\\]|\\.)*")', head):
        out.append(json.loads(found.group(1)))
    return out


def _cloudsql_text(objects: Sequence[tuple[int, Any]], array: bool) -> tuple[str, list[int]]:
    entries = [
        (index, str(obj.get("timestamp", "")), str(obj.get("textPayload", "")))
        for index, obj in objects
        if isinstance(obj, dict) and "textPayload" in obj
    ]
    bad = [index for index, obj in objects if not isinstance(obj, dict)]
    if array:
        if len(entries) > 1 and entries[0][1] > entries[-1][1]:
            entries.reverse()  # gcloud lists the newest first
        entries.sort(key=lambda e: e[1])
        return "\n".join(payload for _, _, payload in entries) + "\n", bad
    out: list[str] = []
    for index, _, payload in entries:
        if len(out) < index:
            out.extend([""] * (index - len(out)))
        out.extend(payload.rstrip("\n").split("\n"))
    return "\n".join(out) + "\n", bad


def _azure_line(obj: dict[str, Any], with_session: bool) -> str | None:
    props = obj.get("properties")
    if isinstance(props, dict):
        get = props.get
        when = obj.get("time") or get("timestamp")
        message, detail, statement = get("message"), get("detail"), get("statement")
        level, state, pid, prefix = (
            get("errorLevel"),
            get("sqlerrcode"),
            get("processId"),
            get("prefix"),
        )
    elif "Message" in obj:
        get = obj.get
        when, message, detail, statement = (
            get("TimeGenerated"),
            get("Message"),
            get("Detail"),
            get("Statement"),
        )
        level, state, pid, prefix = (
            get("ErrorLevel"),
            get("SqlErrorCode"),
            get("ProcessId"),
            get("Prefix"),
        )
    else:
        return None
    if not when or not level or pid is None:
        return None
    head = f"{log_time(str(when))} [{pid}] {state or '00000'} "
    if with_session:
        session = _SESSION.search(str(prefix or ""))
        head += f"{session.group(0) if session else '0.0'} "
    lines = [f"{head}{level}:  " + str(message or "").replace("\n", "\n\t")]
    if detail:
        lines.append(f"{head}DETAIL:  " + str(detail).replace("\n", "\n\t"))
    if statement:
        lines.append(f"{head}STATEMENT:  " + str(statement).replace("\n", "\n\t"))
    return "\n".join(lines)


def azure_prefix(head: str) -> str:
    """The prefix of an Azure export's stderr lines: with %c when it has session ids."""
    return AZURE_PREFIX + "%c " if _SESSION.search(head) and '"prefix"' in head else AZURE_PREFIX


def _azure_text(objects: Sequence[tuple[int, Any]], with_session: bool) -> tuple[str, list[int]]:
    out: list[str] = []
    bad: list[int] = []
    for index, obj in objects:
        line = _azure_line(obj, with_session) if isinstance(obj, dict) else None
        if line is None:
            bad.append(index)
            continue
        if len(out) < index:
            out.extend([""] * (index - len(out)))
        out.extend(line.split("\n"))
    return "\n".join(out) + "\n", bad


def _cnpg(
    decoder: RecordDecoder, objects: Sequence[tuple[int, Any]], source: str, first: int
) -> None:
    for index, obj in objects:
        record = obj.get("record") if isinstance(obj, dict) else None
        if not isinstance(record, dict):
            if not isinstance(obj, dict):
                decoder.problem(source, first + index, "not a CloudNativePG record")
            continue  # the instance manager's own messages
        get = record.get
        if not get("log_time"):
            continue
        decoder.add(
            source,
            first + index,
            str(get("log_time")),
            str(get("session_id", "")),
            str(get("error_severity", "")),
            str(get("sql_state_code", "")),
            str(get("message", "")),
            str(get("detail", "")),
            str(get("query", "")),
            str(get("user_name", "")),
            str(get("database_name", "")),
            str(get("application_name", "")),
            str(get("connection_from", "")),
            str(get("backend_type", "")),
        )


def parse_chunk(decoder: RecordDecoder, chunk: ChunkText) -> None:
    """Decode one chunk of a platform export (``options``: ``platform:prefix``)."""
    name, _, prefix = chunk.options.partition(":")
    platform = Platform(name)
    text, source, first_line = chunk.text, chunk.source, chunk.first_line
    lines = chunk.line_count()
    objects = _objects(text)
    if platform is Platform.CLOUDNATIVEPG:
        before = decoder.result.lines
        _cnpg(decoder, objects, source, first_line)
        decoder.result.lines = before + lines
        return
    array = text.lstrip().startswith("[")
    if platform is Platform.CLOUDSQL:
        stderr_text, bad = _cloudsql_text(objects, array)
    else:
        stderr_text, bad = _azure_text(objects, "%c" in prefix)
    reason = f"not a {platform.value} log entry"
    for index in bad:
        decoder.problem(source, first_line + index, reason)
    parse_translated(decoder, chunk, stderr_text, prefix, lines)
