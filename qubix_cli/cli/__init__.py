"""The `qubix` command: Typer adapters over the core, one group per concept."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from qubix_cli import __version__
from qubix_cli.cli import accounts, db, demo, installer, jobs, providers, serve, watch, worker
from qubix_cli.errors import QubixError

err_console = Console(stderr=True, soft_wrap=True)  # paths stay whole


def _flag_without_metavar(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """A flag takes no value, so its help shows none (Typer would print `<bool>`)."""
    return "" if self.is_flag else _option_metavar(self, ctx)


_option_metavar = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_without_metavar  # type: ignore[method-assign]

app = typer.Typer(
    name="qubix",
    help="Share a GPU with a compute marketplace: coordinator, worker agent and installers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.add_typer(jobs.app, name="jobs")
app.add_typer(worker.app, name="worker")
app.add_typer(installer.app, name="installer")
app.add_typer(providers.app, name="providers")
app.add_typer(accounts.accounts, name="accounts")
app.add_typer(accounts.keys, name="keys")
app.command("login")(accounts.login)
app.command("earnings")(accounts.earnings)
app.command("watch")(watch.watch)
app.command("demo")(demo.demo)
app.add_typer(db.app, name="db")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qubix {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Qubix: share a GPU with a compute marketplace."""


def main() -> None:
    """Entry point of the `qubix` console script: one red line per error, never a traceback."""
    try:
        app()
    except QubixError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(1)
