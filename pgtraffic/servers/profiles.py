"""Server settings for the two kinds of throwaway cluster pgtraffic runs."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path

from capture.errors import UsageError
from capture.settings import CAPTURE_SETTINGS


class Profile(enum.Enum):
    """What a cluster is for."""

    CAPTURE = "capture"
    """Logs every statement, connection and error as csvlog, as capture needs."""
    TARGET = "target"
    """Quiet logging and steady timing, for replaying onto and measuring latency."""


# Settings every cluster gets: reachable on loopback and a private socket directory,
# English messages, UTC log times, and no JIT (its compile time is noise in latencies).
_COMMON: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "lc_messages": "'C'",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
    "jit": "off",
    "max_connections": "200",
    "shared_buffers": "'128MB'",
    "logging_collector": "on",
    "log_file_mode": "0644",
    "log_rotation_size": "0",
    "log_rotation_age": "0",
    # a throwaway server: replay may write onto it without asking (replay.safety.MARKER)
    "pgtraffic.replay_target": "on",
}

_TARGET: dict[str, str] = {
    "log_destination": "'stderr'",
    "log_filename": "'postgresql.log'",
    "log_statement": "'none'",
    "log_min_duration_statement": "-1",
    "log_connections": "off",
    "log_disconnections": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "track_io_timing": "on",
}


def profile_settings(
    profile: Profile,
    *,
    port: int,
    socket_dir: Path,
    log_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The postgresql.conf settings for a cluster of ``profile`` (``extra`` wins)."""
    settings = dict(_COMMON)
    if profile is Profile.CAPTURE:
        for setting in CAPTURE_SETTINGS:
            settings[setting.name] = setting.value
        settings["log_filename"] = "'postgresql-%Y%m%d-%H%M%S.log'"
    else:
        settings.update(_TARGET)
    settings["port"] = str(port)
    settings["unix_socket_directories"] = _quote(str(socket_dir))
    settings["log_directory"] = _quote(str(log_dir))
    if extra:
        settings.update(extra)
    return settings


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)?")
"""A setting name as postgresql.conf spells it (``extension.name`` for custom ones)."""
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.|'')*'")
"""A value already single-quoted as postgresql.conf writes it."""
_ESCAPES = {"\\": "\\\\", "'": "''", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def conf_literal(value: str) -> str:
    """``value`` (a setting's value, as ``postgres -c name=value`` takes it) written as
    a postgresql.conf string literal: in single quotes, with ``'`` doubled and
    backslashes and line breaks escaped (pure). A value that is already a quoted
    literal (copied from a postgresql.conf) is kept as it is."""
    if _QUOTED.fullmatch(value):
        return value
    return "'" + "".join(_ESCAPES.get(ch, ch) for ch in value) + "'"


def parse_setting(item: str) -> tuple[str, str]:
    """``NAME=VALUE`` (``--set``) as the setting's name and its postgresql.conf literal;
    the value is kept exactly (spaces too). UsageError when it is not a setting."""
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        raise UsageError(
            f"--set {item!r}: expected NAME=VALUE with a setting's name before the =",
            hint='e.g. --set work_mem=64MB --set "log_line_prefix=%m [%p] "',
        )
    return name, conf_literal(value)


def render_conf(settings: Mapping[str, str]) -> str:
    lines = ["", "# --- added by pgtraffic ---"]
    lines.extend(f"{name} = {value}" for name, value in settings.items())
    return "\n".join(lines) + "\n"
