"""The postgresql.conf settings a capture needs, with what each one costs.

This is the single source of the capture recipe: the README, capture's error
messages and the embedded server's *capture* profile all read it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    return _recipe(
        f"{'logging_collector = on':<34} # one writer: messages of backends never interleave",
        f"{'log_destination = ' + chr(39) + 'stderr' + chr(39):<34} # or 'csvlog' (recommended)",
        f"{'log_line_prefix = ' + chr(39) + STDERR_PREFIX + chr(39):<34}"
        " # needs a time (%m) and %c or %p; %e: SQLSTATEs",
    )


def _recipe(*head: str) -> str:
    """``head``'s lines, then the other required capture settings, as postgresql.conf
    text (the destination and collector lines are the format's own, in ``head``)."""
    lines = list(head)
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
    return _recipe(
        f"{'log_destination = ' + chr(39) + 'syslog' + chr(39):<34} # or 'csvlog' (recommended)",
        f"{'syslog_sequence_numbers = on':<34} # [N-M]: pieces of one message joined back",
        f"{'syslog_split_messages = on':<34} # lines under the daemon's size limit",
        f"{'log_line_prefix = ' + chr(39) + SYSLOG_PREFIX + chr(39):<34}"
        " # %m: times to the millisecond; %e: SQLSTATEs",
    )


_MANAGED = ("log_statement", "log_connections", "log_disconnections", "log_min_error_statement")
"""The settings hosted platforms let users change (logging itself is theirs)."""


def _managed(value: str = "{name}={value}") -> list[str]:
    return [
        "  " + value.format(name=s.name, value=s.value.strip("'"))
        for s in CAPTURE_SETTINGS
        if s.name in _MANAGED
    ]


def platform_recipe(platform: str) -> str:
    """Where and how to set the capture recipe on a hosting platform: ``rds``,
    ``cloudsql``, ``azure``, ``cloudnativepg``, ``heroku``; anything else gets the
    postgresql.conf recipe."""
    if platform == "rds":
        return "\n".join(
            [
                "AWS RDS/Aurora: in the instance's (or Aurora cluster's) DB parameter group "
                "(a custom one: the default group cannot be changed), then download the "
                "postgresql.log.* files (console > Logs & events, or aws rds "
                "download-db-log-file-portion --db-instance-identifier DB --log-file-name "
                "error/postgresql.log.YYYY-MM-DD-HH --starting-token 0 --output text):",
                *_managed("{name} = {value}"),
                "  e.g. aws rds modify-db-parameter-group --db-parameter-group-name G "
                "--parameters ParameterName=log_statement,ParameterValue=all,"
                "ApplyMethod=immediate",
            ]
        )
    if platform == "cloudsql":
        return "\n".join(
            [
                "Google Cloud SQL: set these database flags (gcloud sql instances patch "
                "INSTANCE --database-flags=... sets the whole list: repeat the flags "
                "already set), then export with gcloud logging read "
                '\'resource.type="cloudsql_database" AND '
                'logName:"postgres.log"\' --format=json > cloudsql.json:',
                *_managed("{name}={value}"),
            ]
        )
    if platform == "azure":
        return "\n".join(
            [
                "Azure Database for PostgreSQL: set these server parameters (portal > "
                "Server parameters, or az postgres flexible-server parameter set "
                "--resource-group RG --server-name S --name NAME --value VALUE), and send "
                "the PostgreSQLLogs category to a storage account (Diagnostic settings):",
                *_managed("{name} = {value}"),
            ]
        )
    if platform == "cloudnativepg":
        return "\n".join(
            [
                "CloudNativePG: in the Cluster resource (the operator keeps logging_collector "
                "and csvlog itself; read the pods' logs with kubectl logs POD > pg.json):",
                "spec:",
                "  postgresql:",
                "    parameters:",
                *("  " + line for line in _managed('  {name}: "{value}"')),
            ]
        )
    if platform == "heroku":
        return "\n".join(
            [
                "Heroku Postgres: heroku pg:settings:log-statement all --app APP "
                "(log-min-duration-statement for durations); connections are logged; "
                "read the logs with heroku logs --num 1500 --source app --dyno postgres "
                "or from a log drain",
            ]
        )
    return "In postgresql.conf (then reload; logging_collector needs a restart):\n" + (
        capture_recipe(include_optional=False)
    )


_PLATFORM_LABELS = (
    ("AWS RDS", "rds"),
    ("Cloud SQL", "cloudsql"),
    ("Azure", "azure"),
    ("CloudNativePG", "cloudnativepg"),
    ("Heroku", "heroku"),
)


def recipe_for_formats(labels: Sequence[str]) -> str:
    """The recipe for the platform the inputs were taken for (their format labels);
    postgresql.conf's when none."""
    for label in labels:
        for mark, platform in _PLATFORM_LABELS:
            if mark in label:
                return platform_recipe(platform)
    return capture_recipe(include_optional=False)
