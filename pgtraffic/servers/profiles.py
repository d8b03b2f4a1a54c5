"""Server settings for the two kinds of throwaway cluster pgtraffic runs."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path

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


def render_conf(settings: Mapping[str, str]) -> str:
    lines = ["", "# --- added by pgtraffic ---"]
    lines.extend(f"{name} = {value}" for name, value in settings.items())
    return "\n".join(lines) + "\n"
