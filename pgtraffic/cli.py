"""The ``pgtraffic`` command line: options in, typed calls to the core, output out.

Each command group lives in ``pgtraffic/commands/<name>.py`` and registers itself on
the root app through its ``register(app)`` function; the options several commands
share are declared once in :mod:`pgtraffic.commands.options`. Building the app
imports only typer and those declarations: each handler imports what it runs
(numpy, psycopg, asyncpg, pglast, ...) when it runs, so ``pgtraffic --help`` is fast.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import typer

from capture.errors import PgTrafficError
from pgtraffic.commands import capacity as capacity_commands
from pgtraffic.commands import capture as capture_commands
from pgtraffic.commands import compare as compare_commands
from pgtraffic.commands import rehearse as rehearse_commands
from pgtraffic.commands import replay as replay_commands
from pgtraffic.commands import servers as server_commands


def build_app() -> typer.Typer:
    """The root ``pgtraffic`` app with every command registered."""
    root = typer.Typer(
        name="pgtraffic",
        help=(
            "Capture PostgreSQL SQL traffic from server logs, replay it against other servers "
            "with the original timing and concurrency, and compare the runs class by class.\n\n"
            "\b\nTypical flow:\n"
            "  pgtraffic capture postgresql.csv -o work.pgtw\n"
            "  pgtraffic replay work.pgtw --target DSN -o run.pgtr   (once per server)\n"
            "  pgtraffic compare base.pgtr cand.pgtr\n\n"
            "Or all of it in one command: pgtraffic rehearse (your logs and servers), "
            "pgtraffic demo (bundled scenario, embedded PostgreSQL 16 and 18).\n\n"
            "'pgtraffic COMMAND --help' explains each command, with examples."
        ),
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Plain help: typer's rich help renderer costs more than the rest of --help.
        rich_markup_mode=None,
    )
    for commands in (
        server_commands,
        capture_commands,
        replay_commands,
        compare_commands,
        rehearse_commands,
        capacity_commands,
    ):
        commands.register(root)
    return root


app = build_app()


def _error(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(text, highlight=False)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning pgtraffic errors into a message and an exit code."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except PgTrafficError as exc:
        _error(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            _error(f"[yellow]hint:[/] {exc.hint}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _error("aborted")
        sys.exit(1)
    except typer.TyperException as exc:  # bad options: typer's own click raises these
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            _error(f"[bold red]error:[/] {exc.format_message()}")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
