"""Options several commands share, declared once, and the parsers that type them.

Each name is an ``Annotated`` type to put on a handler's parameter, with the default
in the handler (``speed: Speed = DEFAULT_SPEED``). This module imports only typer and
light modules: the root app is built from these declarations without loading the
command implementations (numpy, psycopg, asyncpg, pglast, ...), which handlers
import when they run.
"""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from capture.errors import UsageError

if TYPE_CHECKING:
    from pgtraffic.compare import FailOn, Thresholds
    from replay.runner import ReplaySettings

# Help panels: typer groups options under them with rich help; the plain help the CLI
# uses (see pgtraffic.cli) lists options in declaration order and ignores them.
REPLAY = "Replay"
"""Help panel of the options that shape a replay."""
COMPARE = "Comparison"
"""Help panel of the options that decide what counts as a finding."""
CAPTURE = "Capture filters"

# ---- replay --------------------------------------------------------------------------


class SyncChoice(enum.StrEnum):
    """The values of ``--sync``: those of :class:`replay.sync.SyncMode`, which imports the
    replayer (asyncpg) and so cannot be loaded to build ``--help``; a test keeps the two
    in step, and :func:`replay_settings` converts."""

    COMMIT = "commit"
    OBJECTS = "objects"
    ROWS = "rows"
    NONE = "none"


DEFAULT_SPEED = 1.0
DEFAULT_SYNC = SyncChoice.ROWS
DEFAULT_SYNC_TIMEOUT = 10.0
"""replay.sync.DEFAULT_SYNC_TIMEOUT_S (a test keeps them equal), as a literal for --help."""

Target = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        metavar="DSN",
        help="The server to replay onto, as libpq takes it: a URI "
        "(postgresql://app@db2:5432/shop) or key=value pairs "
        "('host=/var/run/postgresql port=5432 dbname=shop'), or service=NAME; what it "
        "leaves out comes from PGHOST, PGPORT, PGUSER, ... and the password from "
        "PGPASSWORD or ~/.pgpass (PGPASSFILE). See docs/replay.md, Connecting.",
    ),
]
BaselineDsn = Annotated[
    str,
    typer.Option(
        "--baseline",
        metavar="DSN",
        help="The baseline server, as libpq takes it (URI, key=value pairs, service=NAME).",
    ),
]
CandidateDsn = Annotated[
    str,
    typer.Option(
        "--candidate",
        metavar="DSN",
        help="The candidate server, as libpq takes it (URI, key=value pairs, service=NAME).",
    ),
]
ResultsOutput = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", help="Results file to write (.pgtr), read by compare."
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        "-f",
        help="Replace the output file if it exists (never an input of the command).",
    ),
]
Speed = Annotated[
    float,
    typer.Option(
        "--speed",
        metavar="FACTOR",
        help="Replay speed factor: 2 replays an hour of traffic in 30 minutes, with the "
        "same concurrency (capacity testing: try 2, 4, 8).",
        rich_help_panel=REPLAY,
    ),
]
MaxSpeed = Annotated[
    bool,
    typer.Option(
        "--max-speed",
        help="No waiting between statements: each session as fast as it can (throughput, "
        "not timing; lag is not measured).",
        rich_help_panel=REPLAY,
    ),
]
JumpIdle = Annotated[
    bool,
    typer.Option(
        "--jump-idle",
        help="Skip stretches of the capture in which no session was active.",
        rich_help_panel=REPLAY,
    ),
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        metavar="N",
        help="Replay processes sharing the sessions (1-64); add some when the report "
        "says the replayer itself fell behind.",
        rich_help_panel=REPLAY,
    ),
]
Sync = Annotated[
    SyncChoice,
    typer.Option(
        "--sync",
        metavar="[rows|commit|objects|none]",
        help="Which order across sessions to keep. rows (the default): before each "
        "statement, wait for the commits the log shows completed before it that wrote "
        "rows it touches (by key where a WHERE col = value or an INSERT names them, else "
        "by relation; relations tied by foreign keys, views, triggers or partitions, on "
        "the target or in the log, keep commit order). commit: wait for every commit the "
        "log shows completed before it (like Oracle Database Replay). objects: only for "
        "commits that wrote a relation the statement touches. none: independent "
        "sessions, only the timing.",
        case_sensitive=False,
        rich_help_panel=REPLAY,
    ),
]
SyncTimeout = Annotated[
    float,
    typer.Option(
        "--sync-timeout",
        metavar="SECONDS",
        help="Longest wait for one --sync dependency; then the statement goes ahead and "
        "the wait is counted, so a replay never hangs.",
        rich_help_panel=REPLAY,
    ),
]
SyncInBlocks = Annotated[
    bool,
    typer.Option(
        "--sync-in-blocks",
        help="With --sync, also wait inside transaction blocks (by default only a block's "
        "first statement waits: a statement inside one may hold row locks, and waiting "
        "there for another session's commit can close a cycle with the target's locks; "
        "the cycle breaker and --sync-timeout then resolve it, at a cost).",
        rich_help_panel=REPLAY,
    ),
]


SAFETY = "Safety"
"""Help panel of the options that decide what a replay may write, and where."""
ReadOnly = Annotated[
    bool,
    typer.Option(
        "--read-only",
        help="Send only the statements that cannot write (by pglast's parse of each query "
        "class; the rest are counted as skipped), on connections that start with "
        "default_transaction_read_only=on, so a write the parse cannot see fails with "
        "SQLSTATE 25006. For replaying onto a production replica.",
        rich_help_panel=SAFETY,
    ),
]
AllowWrites = Annotated[
    bool,
    typer.Option(
        "--allow-writes",
        help="Replay the workload's writes onto a server not marked as a replay target "
        "(pgtraffic.replay_target = on) without asking; needed without a terminal.",
        rich_help_panel=SAFETY,
    ),
]
AllowMissingLogins = Annotated[
    bool,
    typer.Option(
        "--allow-missing-logins",
        help="Replay even when users or databases the sessions log in as do not exist "
        "on the target (their statements are recorded as not sent; exit code 6).",
        rich_help_panel=SAFETY,
    ),
]
TargetIsCopy = Annotated[
    bool,
    typer.Option(
        "--target-is-copy",
        help="The target has the capture source's system_identifier because it is a "
        "physical copy of it (a restored base backup): replay onto it anyway.",
        rich_help_panel=SAFETY,
    ),
]


def _mapping_option(flag: str, replaced: str) -> Any:
    """A repeatable ``OLD=NEW`` option (parsed by :func:`mapping`)."""
    return typer.Option(
        flag,
        metavar="OLD=NEW",
        help=f"Replay the sessions of {replaced} (repeatable).",
        rich_help_panel=REPLAY,
    )


MapUser = Annotated[list[str] | None, _mapping_option("--map-user", "user OLD as user NEW")]
MapDatabase = Annotated[
    list[str] | None, _mapping_option("--map-database", "database OLD in database NEW")
]
Progress = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

# ---- compare -------------------------------------------------------------------------

DEFAULT_MIN_RATIO = 1.10
DEFAULT_MIN_DELTA_MS = 0.2
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLES = 10

FailOnOption = Annotated[
    str | None,
    typer.Option(
        "--fail-on",
        metavar="FINDINGS",
        help="Comma-separated findings that make the command fail (exit 16 + flags): "
        "regression, errors, rows, plans.",
        rich_help_panel=COMPARE,
    ),
]
AllowIncomplete = Annotated[
    bool,
    typer.Option(
        "--allow-incomplete",
        help="Accept an incomplete run (interrupted, killed, sessions that could not "
        "connect, statements not sent, sync timeouts) instead of exiting 6; the reports "
        "still say it is incomplete.",
        rich_help_panel=COMPARE,
    ),
]
MinRatio = Annotated[
    float,
    typer.Option(
        "--min-ratio",
        metavar="RATIO",
        help="Smallest ratio of median service times that counts (1.10: 10% slower).",
        rich_help_panel=COMPARE,
    ),
]
MinDeltaMs = Annotated[
    float,
    typer.Option(
        "--min-delta-ms",
        metavar="MS",
        help="Smallest change of the median that counts, in ms.",
        rich_help_panel=COMPARE,
    ),
]
Alpha = Annotated[
    float,
    typer.Option(
        "--alpha",
        metavar="Q",
        help="False-discovery rate of the per-class tests (Benjamini-Hochberg).",
        rich_help_panel=COMPARE,
    ),
]
MinSamples = Annotated[
    int,
    typer.Option(
        "--min-samples",
        metavar="N",
        help="Fewer executions on either side: 'too few samples', no verdict.",
        rich_help_panel=COMPARE,
    ),
]
Html = Annotated[
    Path | None,
    typer.Option("--html", metavar="FILE", help="HTML report path (default: WORKDIR/report.html)."),
]

Rounds = Annotated[
    int,
    typer.Option(
        "--rounds",
        min=1,
        metavar="N",
        help="Replay each server N times in the order A B B A A B ... and judge across the "
        "rounds: each class gets its noise floor on this machine, drift is factored out "
        "(3 is a good start; 1: one replay each, no floor measured).",
        rich_help_panel=COMPARE,
    ),
]

Concurrent = Annotated[
    bool,
    typer.Option(
        "--concurrent/--alternating",
        help="--concurrent: replay each round onto both servers at the same time (both "
        "reset first), so the machine's state during a round falls on both sides alike, "
        "but the two compete for the CPU. --alternating: one server at a time, A B B A ... "
        "(see docs/compare.md, 'Concurrent or alternating').",
        rich_help_panel=COMPARE,
    ),
]

# ---- capture filters -----------------------------------------------------------------


def _keep_only(flag: str, short: str | None, what: str) -> Any:
    """A repeatable capture filter that keeps only the named ``what``."""
    names = (flag, short) if short else (flag,)
    return typer.Option(
        *names, metavar="NAME", help=f"Keep only this {what}.", rich_help_panel=CAPTURE
    )


def _leave_out(flag: str, what: str) -> Any:
    """A repeatable capture filter that leaves out the named ``what``."""
    return typer.Option(
        flag, metavar="NAME", help=f"Leave out this {what}.", rich_help_panel=CAPTURE
    )


Database = Annotated[list[str] | None, _keep_only("--database", "-d", "database")]
ExcludeDatabase = Annotated[list[str] | None, _leave_out("--exclude-database", "database")]
User = Annotated[list[str] | None, _keep_only("--user", "-U", "user")]
ExcludeUser = Annotated[list[str] | None, _leave_out("--exclude-user", "user")]
Application = Annotated[list[str] | None, _keep_only("--application", None, "application_name")]
ExcludeApplication = Annotated[
    list[str] | None, _leave_out("--exclude-application", "application_name")
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="Keep statements starting at or after this time (ISO 8601, UTC if no zone).",
        rich_help_panel=CAPTURE,
    ),
]
Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="TIME",
        help="Keep statements starting before this time.",
        rich_help_panel=CAPTURE,
    ),
]

# ---- parsers -------------------------------------------------------------------------


def mapping(pairs: list[str] | None, option: str) -> dict[str, str]:
    """``OLD=NEW`` pairs into a dict; UsageError for anything else."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise UsageError(
                f"{option} expects OLD=NEW, got {pair!r}", hint=f"{option} app=app_test"
            )
        out[old] = new
    return out


def parse_time(value: str | None, option: str) -> dt.datetime | None:
    """An ISO 8601 option value; no zone means UTC."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise UsageError(
            f"{option} {value!r} is not a date and time",
            hint="use ISO 8601, e.g. '2024-05-06 09:00' or '2024-05-06T09:00:00+02:00' "
            "(no zone means UTC)",
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def fail_on(value: str | None) -> list[FailOn]:
    """``--fail-on regression,errors`` into FailOn values."""
    from pgtraffic.compare import FailOn

    if not value:
        return []
    out = []
    for item in value.split(","):
        item = item.strip()
        try:
            out.append(FailOn(item))
        except ValueError:
            choices = ", ".join(f.value for f in FailOn)
            raise UsageError(f"--fail-on {item!r}: choose from {choices}") from None
    return out


def thresholds(
    min_ratio: float = DEFAULT_MIN_RATIO,
    min_delta_ms: float = DEFAULT_MIN_DELTA_MS,
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Thresholds:
    """The threshold options as compare's Thresholds."""
    from pgtraffic.compare import Thresholds

    if min_ratio < 1 or min_delta_ms < 0 or not 0 < alpha < 1 or min_samples < 1:
        raise UsageError(
            "thresholds out of range",
            hint="--min-ratio >= 1, --min-delta-ms >= 0, 0 < --alpha < 1, --min-samples >= 1",
        )
    return Thresholds(
        min_ratio=min_ratio, min_delta_us=min_delta_ms * 1000, alpha=alpha, min_samples=min_samples
    )


def replay_settings(
    *,
    speed: float = DEFAULT_SPEED,
    max_speed: bool = False,
    jump_idle: bool = False,
    workers: int = 1,
    sync: SyncChoice = DEFAULT_SYNC,
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
    sync_in_blocks: bool = False,
    map_user: list[str] | None = None,
    map_database: list[str] | None = None,
    reconnect_interval: float = 1.0,
    loop: str = "auto",
    via_asyncpg: bool = False,
    read_only: bool = False,
    allow_missing_logins: bool = False,
    target_is_copy: bool = False,
    allow_writes: bool = False,
) -> ReplaySettings:
    """The replay options as the runner's ReplaySettings, checked."""
    from replay.runner import ReplaySettings
    from replay.sync import SyncMode

    settings = ReplaySettings(
        speed=speed,
        max_speed=max_speed,
        jump_idle=jump_idle,
        workers=workers,
        map_user=mapping(map_user, "--map-user"),
        map_database=mapping(map_database, "--map-database"),
        reconnect_interval_s=reconnect_interval,
        event_loop=loop,
        direct_simple=not via_asyncpg,
        sync=SyncMode(sync.value),
        sync_timeout_s=sync_timeout,
        sync_in_blocks=sync_in_blocks,
        read_only=read_only,
        allow_missing_logins=allow_missing_logins,
        target_is_copy=target_is_copy,
        allow_writes=allow_writes,
    )
    settings.check()
    return settings
