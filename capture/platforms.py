"""Logs of hosted PostgreSQL as their platforms export them (pure; no I/O).

docs/capture.md cites the documentation each layout comes from.

* **Google Cloud SQL**: Cloud Logging entries (``gcloud logging read --format=json``
  writes a JSON array, newest first; sinks write one JSON object per line) whose
  ``textPayload`` (or the ``message`` of a ``jsonPayload``) is the server's stderr
  line (``%m [%p]: [%l-1] db=%d,user=%u ``). The payloads, oldest first, are read as
  a stderr log.
* **Azure Database for PostgreSQL** (flexible server), category ``PostgreSQLLogs``:
  blobs of a storage account (Azure Monitor's common resource-log schema: one JSON
  object per line with ``time`` and a ``properties`` object: ``message``,
  ``detail``, ``errorLevel``, ``sqlerrcode``, ``processId``, ``prefix`` from
  ``log_line_prefix = '%t-%c-'``), and Log Analytics rows exported as JSON (``az
  monitor log-analytics query -o json``: an array in no set order, sorted here):
  ``AzureDiagnostics`` (``TimeGenerated``, ``Message``, ``Detail``,
  ``errorLevel_s``, ``sqlerrcode_s``, ``processId_d``) or ``PGSQLServerLogs``
  (``TimeGenerated``, ``Message``, ``Detail``, ``ErrorLevel``, ``SqlErrorCode``,
  ``ProcessId``, ``Statement``).
* **CloudNativePG**: the instance manager's JSON lines; PostgreSQL's own records are
  those with ``"logger": "postgres"`` whose ``record`` holds the csvlog fields by
  name (``log_time``, ``session_id``, ``error_severity``, ``message``, ...; empty
  ones may be left out); the pod is ``logging_pod`` (``logging_podName`` before 1.22).

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
_PAYLOAD = re.compile(r'"(?:textPayload|message)":\s*("(?:[^"\\]|\\.)*")')


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
    if _payload(obj) is not None and ("logName" in obj or "resource" in obj):
        return Platform.CLOUDSQL
    if "PostgreSQLLogs" in (obj.get("category"), obj.get("Category")) or (
        ("ErrorLevel" in obj or "errorLevel_s" in obj) and "Message" in obj
    ):
        return Platform.AZURE
    if obj.get("logger") == "postgres" or isinstance(obj.get("record"), dict):
        return Platform.CLOUDNATIVEPG
    if "level" in obj and ("logging_pod" in obj or "logging_podName" in obj):
        return Platform.CLOUDNATIVEPG
    return None


def _payload(obj: dict[str, Any]) -> str | None:
    """A Cloud Logging entry's server line: ``textPayload``, or the ``message`` of a
    ``jsonPayload``."""
    text = obj.get("textPayload")
    if isinstance(text, str):
        return text
    payload = obj.get("jsonPayload")
    message = payload.get("message") if isinstance(payload, dict) else None
    return message if isinstance(message, str) else None


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
                cut = "textPayload" in head or '"jsonPayload"' in head
                first = {"textPayload": "", "logName": ""} if cut else None
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
    """textPayload (or jsonPayload message) values of the complete entries at the start
    of a cut JSON array."""
    out = []
    for found in _PAYLOAD.finditer(head):
        out.append(json.loads(found.group(1)))
    return out


def _cloudsql_text(objects: Sequence[tuple[int, Any]], array: bool) -> tuple[str, list[int]]:
    entries = [
        (index, str(obj.get("timestamp", "")), _payload(obj) or "")
        for index, obj in objects
        if isinstance(obj, dict) and _payload(obj) is not None
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


_AZURE_LAYOUTS = (
    # (member that tells the layout, time, message, detail, statement, level,
    #  sqlstate, pid, prefix); the first is the storage-account layout's properties
    ("properties", "time", "message", "detail", "statement", "errorLevel", "sqlerrcode",
     "processId", "prefix"),
    ("errorLevel_s", "TimeGenerated", "Message", "Detail", "Statement", "errorLevel_s",
     "sqlerrcode_s", "processId_d", "prefix_s"),
    ("ErrorLevel", "TimeGenerated", "Message", "Detail", "Statement", "ErrorLevel",
     "SqlErrorCode", "ProcessId", "Prefix"),
)  # fmt: skip
"""Where an Azure record keeps each field: a blob of the storage account (the common
resource-log schema, fields in ``properties``), Log Analytics ``AzureDiagnostics``
rows (``errorLevel_s``, ``processId_d``, ``sqlerrcode_s``) and ``PGSQLServerLogs``
rows (resource-specific table)."""


def _azure_fields(obj: dict[str, Any]) -> list[Any] | None:
    """[time, message, detail, statement, level, sqlstate, pid, prefix] of a record."""
    for tell, *names in _AZURE_LAYOUTS:
        if tell not in obj:
            continue
        source = obj[tell] if tell == "properties" else obj
        if not isinstance(source, dict):
            return None
        fields = [source.get(name) for name in names]
        if tell == "properties":
            fields[0] = obj.get("time") or source.get("timestamp")
        elif tell == "errorLevel_s":  # the suffixed spellings of AzureDiagnostics
            fields[2] = fields[2] or obj.get("detail_s")
            fields[3] = fields[3] or obj.get("statement_s")
        return fields
    return None


def _azure_line(obj: dict[str, Any], with_session: bool) -> str | None:
    fields = _azure_fields(obj)
    if fields is None:
        return None
    when, message, detail, statement, level, state, pid, prefix = fields
    if not when or not level or pid is None:
        return None
    try:
        pid = int(float(pid))  # processId_d is a double
    except (TypeError, ValueError):
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


def _azure_time(item: tuple[int, Any]) -> str:
    fields = _azure_fields(item[1]) if isinstance(item[1], dict) else None
    if fields is None or not fields[0]:
        return ""
    try:
        return log_time(str(fields[0]))
    except ValueError:
        return ""


def azure_prefix(head: str) -> str:
    """The prefix of an Azure export's stderr lines: with %c when it has session ids."""
    return AZURE_PREFIX + "%c " if _SESSION.search(head) and '"prefix"' in head else AZURE_PREFIX


def _azure_text(
    objects: Sequence[tuple[int, Any]], with_session: bool, array: bool
) -> tuple[str, list[int]]:
    out: list[str] = []
    bad: list[int] = []
    if array:  # a query's rows (az monitor log-analytics query -o json): in time order
        objects = sorted(objects, key=_azure_time)
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
        stderr_text, bad = _azure_text(objects, "%c" in prefix, array)
    reason = f"not a {platform.value} log entry"
    for index in bad:
        decoder.problem(source, first_line + index, reason)
    parse_translated(decoder, chunk, stderr_text, prefix, lines)
