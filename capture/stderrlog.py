"""stderr-format logs: lines that begin with a log_line_prefix, records made of them.

PostgreSQL writes one message at a time (``elog.c``): a prefixed ``LEVEL:  text``
line, a tab after every newline inside the text, then prefixed ``DETAIL:``,
``HINT:``, ``QUERY:``, ``CONTEXT:``, ``LOCATION:`` and ``STATEMENT:`` lines that
belong to it. :class:`StderrChunker` cuts before a line that begins a new
message; :func:`parse_chunk` turns each message into the fields
:meth:`RecordDecoder.add` takes.

Sessions come from ``%c`` when the prefix has it. Otherwise from ``%p`` and the
connection messages: ``connection received`` (or ``authorized``, when the first
was not logged) begins a new session of that pid, and so does a record of a pid
whose ``disconnection`` was seen. A worker names a session it saw begin
``<start second hex>.<pid hex>`` (what ``%c`` would be, mostly); records of a
pid whose session began in an earlier chunk get a provisional key ``~<pid
hex>~<second hex>`` that :class:`PidSessions`, in the main process, maps to the
session that pid had at the end of the chunks before.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from capture.chunking import BoundaryChunker, ChunkText, is_utf8
from capture.decode import RecordDecoder
from capture.events import ChunkResult, SessionInfo
from capture.messages import FAILURE_SEVERITIES
from capture.prefix import LinePrefix, compile_prefix
from capture.timestamps import TimestampError

FOLLOW_UPS = frozenset({"DETAIL", "HINT", "QUERY", "CONTEXT", "LOCATION", "STATEMENT"})
"""Levels of the lines that continue the message before them."""
UNKNOWN_SQLSTATE = "XX000"
"""A failure whose line does not say its SQLSTATE (no %e, an unknown message)."""

_VERBOSE_STATE = re.compile(r"[0-9A-Z]{5}: ")
_AT_CHARACTER = re.compile(r" at character \d+$")
_CONNECT_WHO = re.compile(
    r"connection authorized: user=(\S*)(?: database=(\S*))?(?: application_name=(.*?))?"
    r"(?: (?:SSL|GSS) .*)?$",
    re.DOTALL,
)
_RECEIVED = re.compile(r"connection received: host=(\S+)(?: port=(\d+))?")
_REMOTE = re.compile(r"(.*)\((\d+)\)$")

# The SQLSTATE of common failures, from the start of their message (when the prefix
# has no %e and log_error_verbosity is not verbose)
_STATES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), state)
    for pattern, state in (
        (r"relation \".*\" does not exist", "42P01"),
        (r"(?:syntax error at|unterminated |zero-length delimited identifier)", "42601"),
        (r"division by zero", "22012"),
        (r"canceling statement due to (?:statement timeout|user request)", "57014"),
        (r"canceling statement due to lock timeout", "55P03"),
        (r"canceling statement due to conflict with recovery", "40001"),
        (r"column .* does not exist", "42703"),
        (r"(?:function|operator) .*does not exist", "42883"),
        (r"duplicate key value violates unique constraint", "23505"),
        (r"null value in column .* violates not-null constraint", "23502"),
        (r".* violates foreign key constraint", "23503"),
        (r".* violates check constraint", "23514"),
        (r"deadlock detected", "40P01"),
        (r"could not serialize access", "40001"),
        (r"current transaction is aborted", "25P02"),
        (r"invalid input syntax for", "22P02"),
        (r"value too long for type", "22001"),
        (r".* out of range", "22003"),
        (r"permission denied", "42501"),
        (r"relation \".*\" already exists", "42P07"),
        (r"prepared statement \".*\" does not exist", "26000"),
        (r"prepared statement \".*\" already exists", "42P05"),
        (r"cursor \".*\" does not exist", "34000"),
        (r"schema \".*\" does not exist", "3F000"),
        (r"type \".*\" does not exist", "42704"),
        (r"database \".*\" does not exist", "3D000"),
        (r"role \".*\" does not exist", "28000"),
        (r"password authentication failed", "28P01"),
        (r"terminating connection due to administrator command", "57P01"),
        (r"(?:savepoint \".*\" does not exist|no such savepoint)", "3B001"),
        (r"more than one row returned by a subquery", "21000"),
        (r"invalid byte sequence for encoding", "22021"),
    )
)


def sqlstate_of_message(message: str) -> str:
    """The SQLSTATE of a failure's message text, or :data:`UNKNOWN_SQLSTATE`."""
    text = _AT_CHARACTER.sub("", message)
    for pattern, state in _STATES:
        if pattern.match(text):
            return state
    return UNKNOWN_SQLSTATE


class StderrChunker(BoundaryChunker):
    """Chunks that end before a line beginning a new message (not a tab-continued
    line, not a DETAIL/STATEMENT/... line of the message before)."""

    def __init__(self, target: int, prefix: LinePrefix) -> None:
        super().__init__(target)
        self._prefix = prefix

    def _begins_record(self, at: int) -> bool:
        buf = self._buf
        if at >= len(buf) or buf[at] == 0x09:  # nothing after it yet, or a tab
            return False
        line_end = buf.find(b"\n", at, at + 4096)
        head = bytes(buf[at : line_end if line_end >= 0 else at + 4096])
        text = head.decode("utf-8", "replace")
        if "LOG:  connection auth" in text:
            return False  # its session's "connection received" is just before: keep them together
        found = self._prefix.match(text)
        return found is None or found.group("level") not in FOLLOW_UPS


@dataclass(slots=True)
class _Message:
    """One message being put together from its lines."""

    line: int
    fields: dict[str, str | None]
    level: str
    text: list[str]
    parts: dict[str, list[str]] = field(default_factory=dict)
    current: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.text

    def part(self, level: str) -> str:
        lines = self.parts.get(level)
        return "\n".join(lines) if lines else ""


@dataclass(slots=True)
class _Who:
    """What a session's connection messages said about it."""

    user: str = ""
    database: str = ""
    application: str = ""
    client: str = ""


@dataclass(slots=True)
class _Sessions:
    """Session keys of one chunk, from %c or from pids and connection messages."""

    by_pid: bool
    keys: dict[str, str] = field(default_factory=dict)
    """pid to the key of its current session"""
    connecting: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)
    who: dict[str, _Who] = field(default_factory=dict)

    def key(self, fields: dict[str, str | None], ts_us: int | None, level: str, text: str) -> str:
        session = fields.get("session")
        if not self.by_pid:
            return session or ""
        pid = fields.get("pid") or ""
        if not pid or ts_us is None:
            return ""
        begins = False
        if level == "LOG" and text.startswith("connection "):
            if text.startswith("connection received: "):
                begins = True
                self.connecting.add(pid)
            elif text.startswith(("connection authorized: ", "connection authenticated: ")):
                begins = pid not in self.connecting
                if text.startswith("connection authenticated: "):
                    self.connecting.add(pid)
                else:
                    self.connecting.discard(pid)
        if pid in self.closed:
            begins = True
            self.closed.discard(pid)
        key = self.keys.get(pid)
        if begins or key is None:
            stamp = f"{ts_us // 1_000_000:x}.{int(pid):x}"
            key = stamp if begins else f"~{int(pid):x}~{ts_us // 1_000_000:x}"
            self.keys[pid] = key
        return key


def _clean(value: str | None) -> str:
    if not value:
        return ""
    value = value.strip()
    return "" if value == "[unknown]" else value


_EPOCH_TEXT: dict[str, str] = {}


def _epoch_text(epoch: str) -> str:
    """``%n`` (seconds.millis since the epoch) as a log time PostgreSQL's way."""
    seconds, _, millis = epoch.partition(".")
    base = _EPOCH_TEXT.get(seconds)
    if base is None:
        moment = dt.datetime.fromtimestamp(int(seconds), dt.UTC)
        base = _EPOCH_TEXT[seconds] = moment.strftime("%Y-%m-%d %H:%M:%S")
        if len(_EPOCH_TEXT) > 10_000:
            _EPOCH_TEXT.clear()
    return f"{base}.{millis} UTC"


def parse_chunk(decoder: RecordDecoder, chunk: ChunkText) -> None:
    """Decode every message of a chunk from :class:`StderrChunker` (``options``: its
    log_line_prefix)."""
    source, first_line = chunk.source, chunk.first_line
    truncated_tail, check_encoding = chunk.truncated_tail, chunk.check_encoding
    line_prefix = compile_prefix(chunk.options)
    sessions = _Sessions(by_pid="c" not in line_prefix.escapes)
    lines = chunk.lines()
    message: _Message | None = None
    for index, raw in enumerate(lines):
        line = first_line + index
        if raw.startswith("\t"):
            if message is not None:
                message.current.append(raw[1:])
            else:
                decoder.problem(source, line, "not a stderr log line", f"{raw[:80]!r}")
            continue
        found = line_prefix.match(raw)
        if found is None:
            if raw.strip():
                decoder.problem(source, line, "not a stderr log line", f"{raw[:80]!r}")
            continue
        level = found.group("level")
        fields = found.groupdict()
        body = raw[found.end() :]
        if (
            level in FOLLOW_UPS
            and message is not None
            and fields.get("pid") == message.fields.get("pid")
            and fields.get("session") == message.fields.get("session")
        ):
            message.current = message.parts.setdefault(level, [])
            message.current.append(body)
            continue
        if message is not None:
            _flush(decoder, sessions, message, source, check_encoding)
        message = _Message(line, fields, level, [body])
    if message is not None:
        if truncated_tail:
            decoder.problem(source, message.line, "truncated record at end of file")
        else:
            _flush(decoder, sessions, message, source, check_encoding)
    decoder.result.lines += len(lines)


def parse_translated(
    decoder: RecordDecoder, chunk: ChunkText, stderr_text: str, prefix: str, lines: int
) -> None:
    """Decode ``stderr_text``, a chunk of another format written as stderr lines with
    ``prefix``, line for line; ``lines``: the chunk's own lines, counted instead."""
    before = decoder.result.lines
    parse_chunk(decoder, replace(chunk, text=stderr_text, options=prefix))
    decoder.result.lines = before + lines


def _flush(
    decoder: RecordDecoder,
    sessions: _Sessions,
    message: _Message,
    source: str,
    check_encoding: bool,
) -> None:
    """Hand one message to the decoder, with its session and who it is."""
    fields, level, line = message.fields, message.level, message.line
    text = "\n".join(message.text)
    if check_encoding and not is_utf8(text, *(message.part(k) for k in message.parts)):
        decoder.problem(source, line, "not UTF-8", "the record holds bytes that are not UTF-8")
        return
    epoch = fields.get("epoch")
    log_time = fields.get("time") or (_epoch_text(epoch) if epoch else "")
    try:
        ts_us: int | None = decoder.parse_time(log_time) if log_time else None
    except TimestampError:
        ts_us = None  # add() reports it
    sqlstate = fields.get("sqlstate") or ""
    if _VERBOSE_STATE.match(text):  # log_error_verbosity = verbose
        sqlstate, text = text[:5], text[7:]
    if level in FAILURE_SEVERITIES and (not sqlstate or sqlstate == "00000"):
        sqlstate = sqlstate_of_message(text)
    key = sessions.key(fields, ts_us, level, text)
    who = sessions.who.get(key)
    if who is None:
        who = sessions.who[key] = _Who()
    _learn(who, fields, level, text)
    context = message.part("CONTEXT")
    backend_type = _clean(fields.get("btype"))
    if not backend_type and fields.get("leader"):
        backend_type = "parallel worker"
    elif not backend_type and context.startswith(("automatic vacuum", "automatic analyze")):
        backend_type = "autovacuum worker"
    decoder.add(
        source,
        line,
        log_time,
        key,
        level,
        sqlstate,
        text,
        message.part("DETAIL"),
        message.part("STATEMENT"),
        who.user,
        who.database,
        who.application,
        who.client,
        backend_type,
    )
    if level == "LOG" and text.startswith("disconnection: ") and sessions.by_pid:
        sessions.closed.add(fields.get("pid") or "")


def _learn(who: _Who, fields: dict[str, str | None], level: str, text: str) -> None:
    """Fill in a session's identity from the prefix and its connection messages."""
    user, database = _clean(fields.get("user")), _clean(fields.get("db"))
    application = _clean(fields.get("app"))
    who.user = user or who.user
    who.database = database or who.database
    who.application = application or who.application
    remote, host = _clean(fields.get("remote")), _clean(fields.get("host"))
    if remote:
        found = _REMOTE.match(remote)
        who.client = f"{found.group(1)}:{found.group(2)}" if found else remote
    elif host and not who.client:
        who.client = host
    if level != "LOG" or not text.startswith("connection "):
        return
    received = _RECEIVED.match(text)
    if received is not None:
        host_, port = received.groups()
        who.client = f"{host_}:{port}" if port else host_
        return
    authorized = _CONNECT_WHO.match(text)
    if authorized is not None:
        who.user = who.user or authorized.group(1) or ""
        who.database = who.database or authorized.group(2) or ""
        who.application = who.application or (authorized.group(3) or "")


@dataclass(slots=True)
class PidSessions:
    """Main-process half of pid-based sessions: gives provisional keys (``~pid~sec``,
    a pid seen in a chunk before any connection message of it) the session that pid
    had at the end of the chunks before. Chunks must come in input order."""

    current: dict[str, str] = field(default_factory=dict)
    """pid (hex) to its latest session id"""

    def __call__(self, result: ChunkResult) -> ChunkResult:
        mapping: dict[str, str] = {}
        sessions: dict[str, SessionInfo] = {}
        current = self.current
        for key, info in result.sessions.items():
            if key[:1] == "~":
                _, pid, second = key.split("~")
                known = current.get(pid)
                if known is None:
                    known = current[pid] = f"{second}.{pid}"
                    sessions[known] = info
                mapping[key] = known
            else:
                current[key.rpartition(".")[2]] = key
                sessions[key] = info
        if mapping:
            result.sessions = sessions
            result.events = [
                event if event[1] not in mapping else (event[0], mapping[event[1]], *event[2:])
                for event in result.events
            ]
        return result


def resolve_sessions(results: Iterator[ChunkResult]) -> Iterator[ChunkResult]:
    """``results`` (in input order) with provisional pid-session keys resolved."""
    resolve = PidSessions()
    for result in results:
        yield resolve(result)
