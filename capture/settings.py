"""The postgresql.conf settings a capture needs, with what each one costs.

This is the single source of the capture recipe: the README, capture's error
messages and the embedded server's *capture* profile all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Setting:
    """One postgresql.conf line of the capture recipe."""

    name: str
    value: str
    why: str
    cost: str
    required: bool = True

    def conf_line(self) -> str:
        return f"{self.name} = {self.value}"


CAPTURE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "logging_collector",
        "on",
        "writes csvlog/jsonlog files (needs a server restart to change)",
        "one extra process; negligible",
    ),
    Setting(
        "log_destination",
        "'csvlog'",
        "machine-readable records with session ids and multi-line fields kept intact",
        "same volume as stderr logging; 'jsonlog' (PostgreSQL 15+) also works",
    ),
    Setting(
        "log_statement",
        "'all'",
        "every statement logged when it starts: its intended start time for replay",
        "one log record per statement; on a busy server, plan disk for the full "
        "SQL text of every statement (about 150-300 bytes each on an OLTP workload) "
        "and a few percent of CPU",
    ),
    Setting(
        "log_connections",
        "on",
        "session start, user, database and application name",
        "two short records per connection",
    ),
    Setting(
        "log_disconnections",
        "on",
        "session end time, so replay closes connections when the original did",
        "one short record per connection",
    ),
    Setting(
        "log_min_error_statement",
        "error",
        "failed statements keep their SQL text next to their SQLSTATE",
        "none beyond the error itself (this is the default)",
    ),
    Setting(
        "log_parameter_max_length",
        "-1",
        "bind parameters of extended-protocol statements logged in full",
        "long parameter values are written out in full (the default)",
    ),
    Setting(
        "log_rotation_size",
        "0",
        "a capture is not split into many files mid-run",
        "files grow until rotated by time or by hand",
    ),
    Setting(
        "lc_messages",
        "'C'",
        "log messages in English, which capture recognizes",
        "none",
    ),
    Setting(
        "log_min_duration_statement",
        "0",
        "optional: logs each statement's duration when it ends, giving original latencies",
        "a second record per statement (three for extended protocol): roughly doubles log "
        "volume; leave at -1 if disk or I/O is tight",
        required=False,
    ),
)


def capture_recipe(*, include_optional: bool = True) -> str:
    """The recipe as postgresql.conf text, each line commented with its reason."""
    lines = []
    for setting in CAPTURE_SETTINGS:
        if setting.required or include_optional:
            lines.append(f"{setting.conf_line():<34} # {setting.why}")
    return "\n".join(lines)


STDERR_PREFIX = "%m [%p] %e %q%u@%d "
"""A log_line_prefix capture reads well: millisecond times, the pid (sessions from it
and the connection messages), the SQLSTATE, user and database on session lines."""


def stderr_recipe() -> str:
    """What stderr logging needs, as postgresql.conf text."""
    lines = [
        f"{'logging_collector = on':<34} # one writer: messages of backends never interleave",
        f"{'log_destination = ' + chr(39) + 'stderr' + chr(39):<34} # or 'csvlog' (recommended)",
        f"{'log_line_prefix = ' + chr(39) + STDERR_PREFIX + chr(39):<34}"
        " # needs a time (%m) and %c or %p; %e: SQLSTATEs",
    ]
    lines.extend(
        f"{s.conf_line():<34} # {s.why}"
        for s in CAPTURE_SETTINGS
        if s.required and s.name not in ("logging_collector", "log_destination")
    )
    return "\n".join(lines)


SYSLOG_PREFIX = "%m [%p] %e %q%u@%d "
"""With syslog too: the server's millisecond time (a BSD syslog time has no year and
whole seconds), the SQLSTATE, user and database."""


def syslog_recipe() -> str:
    """What logging through syslog needs, as postgresql.conf text."""
    lines = [
        f"{'log_destination = ' + chr(39) + 'syslog' + chr(39):<34} # or 'csvlog' (recommended)",
        f"{'syslog_sequence_numbers = on':<34} # [N-M]: pieces of one message joined back",
        f"{'syslog_split_messages = on':<34} # lines under the daemon's size limit",
        f"{'log_line_prefix = ' + chr(39) + SYSLOG_PREFIX + chr(39):<34}"
        " # %m: times to the millisecond; %e: SQLSTATEs",
    ]
    lines.extend(
        f"{s.conf_line():<34} # {s.why}"
        for s in CAPTURE_SETTINGS
        if s.required and s.name not in ("logging_collector", "log_destination")
    )
    return "\n".join(lines)
