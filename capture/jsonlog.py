"""jsonlog (PostgreSQL 15+): one JSON object per line; newlines inside are escaped."""

from __future__ import annotations

import json
from typing import Any

from capture.chunking import ChunkText, LineChunker, is_utf8
from capture.decode import RecordDecoder

JsonChunker = LineChunker
"""Chunks of whole lines: a jsonlog record is one line."""


def _client(obj: dict[str, Any]) -> str:
    host = obj.get("remote_host")
    if not host:
        return ""
    port = obj.get("remote_port")
    return f"{host}:{port}" if port else str(host)


def parse_chunk(decoder: RecordDecoder, chunk: ChunkText) -> None:
    """Decode every line of a chunk from :class:`JsonChunker` into ``decoder``."""
    source, first_line = chunk.source, chunk.first_line
    truncated_tail, check_encoding = chunk.truncated_tail, chunk.check_encoding
    lines = chunk.lines()
    last = len(lines) - 1
    loads = json.loads
    for index, raw in enumerate(lines):
        line = first_line + index
        if not raw.strip():
            continue
        if check_encoding and not is_utf8(raw):
            decoder.problem(source, line, "not UTF-8", "the record holds non-UTF-8 bytes")
            continue
        try:
            obj = loads(raw)
        except ValueError as exc:
            reason = (
                "truncated record at end of file"
                if truncated_tail and index == last
                else "not a jsonlog record"
            )
            decoder.problem(source, line, reason, f"{exc}: {raw[:80]!r}")
            continue
        if not isinstance(obj, dict) or "timestamp" not in obj:
            decoder.problem(source, line, "not a jsonlog record", raw[:80])
            continue
        get = obj.get
        decoder.add(
            source,
            line,
            obj["timestamp"],
            get("session_id", ""),
            get("error_severity", ""),
            get("state_code", ""),
            get("message", ""),
            get("detail", ""),
            get("statement", ""),
            get("user", ""),
            get("dbname", ""),
            get("application_name", ""),
            _client(obj),
            get("backend_type", ""),
        )
    decoder.result.lines += len(lines)
