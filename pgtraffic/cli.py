"""The ``pgtraffic`` command line: options in, typed calls to the core, output out.

Each command group lives in ``pgtraffic/commands/<name>.py`` and registers itself on
the root app through its ``register(app)`` function.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import typer
from rich.console import Console

from capture.errors import PgTrafficError
from pgtraffic.commands import capture as capture_commands
from pgtraffic.commands import compare as compare_commands
from pgtraffic.commands import rehearse as rehearse_commands
from pgtraffic.commands import replay as replay_commands
from pgtraffic.commands import servers as server_commands

app = typer.Typer(
    name="pgtraffic",
    help=(
        "Capture PostgreSQL SQL traffic from server logs, replay it against other servers "
        "with the original timing and concurrency, and compare the runs class by class.\n\n"
        "Typical flow: pgtraffic capture postgresql.csv -o work.pgtw; "
        "pgtraffic replay work.pgtw --target DSN -o run.pgtr; "
        "pgtraffic compare base.pgtr cand.pgtr"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

server_commands.register(app)
capture_commands.register(app)
replay_commands.register(app)
compare_commands.register(app)
rehearse_commands.register(app)

err_console = Console(stderr=True, soft_wrap=True)


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
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except typer.TyperException as exc:  # bad options: typer's own click raises these
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
