"""CLI commands for capture (registered on the root app by pgtraffic.cli).

``pgtraffic capture`` turns PostgreSQL logs into a workload file and
``pgtraffic inspect`` summarizes one. The handlers parse options, call
:mod:`capture.pipeline` / :mod:`capture.inspect`, and print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from capture.errors import UsageError
from capture.formats import LogFormat
from capture.settings import capture_recipe
from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from rich.table import Table

    from capture.inspect import WorkloadStats
    from capture.pipeline import CaptureOptions, CaptureSummary


def _indented(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


CAPTURE_HELP = f"""Read PostgreSQL logs (csvlog, jsonlog, stderr, syslog, the exports of RDS,
Cloud SQL, Azure, CloudNativePG and Heroku) or an application stream (appstream,
docs/app-stream.md) and write a workload file.

Give rotated files oldest first; compressed files (gzip, bzip2, xz, zstd) and -
(stdin) work too. The format and, for stderr logs, the log_line_prefix are
detected from the first bytes (--format and --log-line-prefix override them).

\b
Example:
    pgtraffic capture /var/log/postgresql/postgresql-*.csv -o monday.pgtw \\
        --database shop --exclude-application pg_dump --since '2024-05-06 09:00'
    pgtraffic capture app-events.jsonl.zst -o monday.pgtw   # an application stream

Records capture cannot use (garbage lines, a truncated last record, non-UTF-8
bytes) are skipped, counted and listed in the summary; --strict stops at the
first one instead. A file named twice is read once, and the start of a file that
repeats the end of the file before it (overlapping copies of a rotated log) is
skipped as duplicate records (counted in the summary; see docs/capture.md).

An existing output file is replaced only with --force, and never when it is one
of the logs; the workload is written under a temporary name and renamed when
complete.

Exit codes: 0 done (even with skipped records), 2 bad options, 3 unusable input
(missing file, not a PostgreSQL log, no statements in it, --strict stop),
1 anything else.

\b
The server must log with (postgresql.conf):
{_indented(capture_recipe())}
"""

INSPECT_HELP = """Summarize a workload file: time span, sessions, peak concurrent sessions,
statements per second over time, and the top query classes by count and by
total logged time, all counted over the records the file holds. A file whose
records do not match its header (edited by hand, cut short) is refused.

\b
Example:
    pgtraffic inspect monday.pgtw
    pgtraffic inspect monday.pgtw --json | jq '.top_by_time[0]'
"""


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def summary_table(summary: CaptureSummary) -> Table:
    """The end-of-capture summary as a rich table."""
    from rich.table import Table

    table = Table(title=f"capture → {summary.output}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("sources", ", ".join(summary.sources))
    table.add_row("format", ", ".join(sorted(set(summary.formats))) or "-")
    if summary.server_version:
        table.add_row("server version", summary.server_version)
    table.add_row(
        "read",
        f"{_human_bytes(summary.bytes_read)}, {summary.lines:,} lines, {summary.records:,} records",
    )
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.statements_by_kind.items()))
    table.add_row("statements", f"{summary.statements:,}" + (f" ({kinds})" if kinds else ""))
    table.add_row("query classes", f"{summary.classes:,}")
    table.add_row("sessions", f"{summary.sessions:,}")
    table.add_row("failed statements", f"{summary.failed_statements:,}")
    table.add_row("durations logged", f"{summary.statements_with_duration:,}")
    if summary.unparsed_statements:
        table.add_row("unparsable SQL (kept)", f"{summary.unparsed_statements:,}")
    if summary.params_truncated:
        table.add_row(
            "parameters cut",
            f"{summary.params_truncated:,} (log_parameter_max_length; set it to -1)",
        )
    if summary.reordered or summary.late_outcomes:
        table.add_row(
            "order fixes",
            f"{summary.reordered:,} starts moved later, {summary.late_outcomes:,} late outcomes",
        )
    if summary.skipped:
        lines = []
        for reason, count in sorted(summary.skipped.items(), key=lambda kv: -kv[1]):
            where = ", ".join(summary.skipped_examples.get(reason, ()))
            lines.append(f"{count:,} {reason} (e.g. {where})")
        table.add_row("[yellow]skipped records[/]", "\n".join(lines))
    else:
        table.add_row("skipped records", "0")
    if summary.filtered:
        table.add_row("filtered out", ", ".join(f"{v:,} {k}" for k, v in summary.filtered.items()))
    span = f"{summary.header.capture_start} → {summary.header.capture_end}"
    table.add_row("time span", span)
    return table


def stats_tables(stats: WorkloadStats, name: str) -> list[Table]:
    """``inspect`` output as rich tables."""
    from rich.table import Table

    overview = Table(title=name, show_header=False, title_justify="left")
    overview.add_column("what", style="bold")
    overview.add_column("value")
    overview.add_row("time span", f"{stats.capture_start} → {stats.capture_end}")
    overview.add_row("duration", f"{stats.duration_s:,.1f} s")
    if stats.source_server_version:
        overview.add_row("source server", stats.source_server_version)
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.kinds.items()))
    overview.add_row("statements", f"{stats.statements:,} ({kinds})")
    overview.add_row("failed statements", f"{stats.failed_statements:,}")
    overview.add_row("query classes", f"{stats.classes:,}")
    overview.add_row("sessions", f"{stats.sessions:,}")
    overview.add_row("peak concurrent sessions", f"{stats.peak_concurrent_sessions:,}")

    peak = max((b.per_second for b in stats.rate), default=0.0) or 1.0
    rate = Table(title="statements per second", title_justify="left")
    rate.add_column("from (s)", justify="right")
    rate.add_column("stmt/s", justify="right")
    rate.add_column("")
    for bucket in stats.rate:
        bar = "█" * round(30 * bucket.per_second / peak)
        rate.add_row(f"{bucket.start_s:,.0f}", f"{bucket.per_second:,.1f}", bar)

    tables = [overview, rate]
    for title, classes, show_time in (
        ("top classes by count", stats.top_by_count, False),
        ("top classes by total logged time", stats.top_by_time, True),
    ):
        table = Table(title=title, title_justify="left")
        table.add_column("count", justify="right")
        table.add_column("total ms", justify="right")
        table.add_column("fingerprint")
        table.add_column("query")
        for cls in classes:
            text = " ".join(cls.normalized.split())
            table.add_row(
                f"{cls.count:,}",
                f"{cls.total_duration_us / 1000:,.1f}" if cls.total_duration_us else "-",
                cls.fingerprint,
                text[:100] + ("…" if len(text) > 100 else ""),
            )
        if show_time and not classes:
            table.caption = "no durations in this workload (log_min_duration_statement was off)"
        tables.append(table)
    return tables


def capture_command(
    logs: Annotated[
        list[str],
        typer.Argument(
            metavar="LOG...", help="Logs or app streams, oldest first; compressed or - ok."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Workload file to write.")
    ],
    log_format: Annotated[
        LogFormat | None,
        typer.Option("--format", help="Log format (default: detect).", case_sensitive=False),
    ] = None,
    log_line_prefix: Annotated[
        str | None,
        typer.Option(
            "--log-line-prefix",
            metavar="PREFIX",
            help="stderr logs: the server's log_line_prefix (default: detect).",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first unusable record.")
    ] = False,
    database: opt.Database = None,
    exclude_database: opt.ExcludeDatabase = None,
    user: opt.User = None,
    exclude_user: opt.ExcludeUser = None,
    application: opt.Application = None,
    exclude_application: opt.ExcludeApplication = None,
    since: opt.Since = None,
    until: opt.Until = None,
    exclude_sql: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-sql",
            metavar="REGEX",
            help="Leave out statements matching this regular expression.",
            rich_help_panel=opt.CAPTURE,
        ),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", metavar="N", help="Decoding processes (0: one per CPU).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")
    ] = False,
    source_dsn: Annotated[
        str | None,
        typer.Option(
            "--source-dsn",
            metavar="DSN",
            help="The server the logs come from (libpq URI): its system_identifier, version, "
            "host and data directory go into the workload, so replay refuses to write onto "
            "it, e.g. --source-dsn postgresql://postgres@prod-db:5432/postgres.",
        ),
    ] = None,
    force: opt.Force = False,
) -> None:
    import re

    from capture.filters import Filters
    from capture.outputs import check_output
    from capture.pipeline import CaptureOptions

    check_output(output, inputs=logs, force=force)

    for pattern in exclude_sql or ():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--exclude-sql {pattern!r}: {exc}") from exc
    if jobs < 0:
        raise UsageError("--jobs must be 0 (one per CPU) or more")
    filters = Filters(
        databases=tuple(database or ()),
        exclude_databases=tuple(exclude_database or ()),
        users=tuple(user or ()),
        exclude_users=tuple(exclude_user or ()),
        applications=tuple(application or ()),
        exclude_applications=tuple(exclude_application or ()),
        since=opt.parse_time(since, "--since"),
        until=opt.parse_time(until, "--until"),
        exclude_sql=tuple(exclude_sql or ()),
    )
    options = CaptureOptions(
        format=log_format,
        log_line_prefix=log_line_prefix,
        filters=filters,
        strict=strict,
        jobs=jobs,
        source=_source_identity(source_dsn),
    )
    summary = _capture(logs, output, options, quiet)
    if not quiet:
        from rich.console import Console

        Console().print(summary_table(summary))


SOURCE_FIELDS = (
    "system_identifier",
    "server_version",
    "host",
    "port",
    "data_directory",
    "cluster_name",
)
"""The parts of a server's identity a workload header records as its ``source``."""


def _source_identity(dsn: str | None) -> dict[str, Any]:
    """The workload header's ``source``: the identity of the server at ``dsn`` ({}: none)."""
    if dsn is None:
        return {}
    from replay.errors import TargetError
    from replay.safety import server_identity

    try:
        identity = server_identity(dsn).to_json()
    except UsageError:
        raise  # a malformed DSN, named part and all
    except Exception as exc:
        raise TargetError(
            f"cannot read the source server's identity (--source-dsn): {exc}",
            hint="check --source-dsn (a libpq URI such as postgresql://user@host:5432/postgres), "
            "or leave it out: replay then cannot tell the source from a target",
        ) from exc
    return {key: identity[key] for key in SOURCE_FIELDS}


def _capture(logs: list[str], output: Path, options: CaptureOptions, quiet: bool) -> CaptureSummary:
    """Run the capture, with a progress bar on a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from capture.pipeline import capture

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return capture(logs, output, options)
    with Progress(
        TextColumn("reading logs"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("capture", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        return capture(logs, output, options, progress=progress)


def inspect_command(
    workload: Annotated[
        Path, typer.Argument(metavar="WORKLOAD", help="A workload file from pgtraffic capture.")
    ],
    as_json: opt.Json = False,
    top: Annotated[int, typer.Option(metavar="N", help="How many query classes to list.")] = 10,
) -> None:
    from rich.console import Console

    from capture.inspect import workload_stats
    from capture.workload import read_workload

    stats = workload_stats(read_workload(workload), top=top)
    for notice in stats.notices:
        Console(stderr=True).print(f"[yellow]notice:[/] {notice}", highlight=False)
    if as_json:
        typer.echo(json.dumps(stats.to_json(), indent=2, ensure_ascii=False))
        return
    console = Console()
    for table in stats_tables(stats, str(workload)):
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``capture`` and ``inspect`` to the root app."""
    app.command("capture", help=CAPTURE_HELP)(capture_command)
    app.command("inspect", help=INSPECT_HELP)(inspect_command)
