"""`qubix installer build`: write a one-file installer for a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from qubix_cli.errors import QubixError
from qubix_cli.installer.render import (
    OS_CHOICES,
    OSES,
    normalize_os,
    render,
    this_os,
    validate_server_url,
)
from qubix_cli.qubic import validate_identity

OS_METAVAR = "<linux|macos|windows>"

app = typer.Typer(help="Build one-file installers that set up and start a worker.")
console = Console(highlight=False, soft_wrap=True)  # paths stay whole


def _update_key(server: str) -> str:
    """The coordinator's public update key, which the installer embeds so that its worker
    can check the updates it is offered; none (with a warning) if it cannot be asked."""
    try:
        key = str(httpx.get(server.rstrip("/") + "/healthz", timeout=10).json()["updateKey"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        console.print(
            escape(
                f"warning: {server} did not tell its update key, so this installer's worker "
                "will not update itself; build it while the server runs to fix that."
            )
        )
        return ""
    return key


@app.command()
def build(
    server: Annotated[
        str, typer.Option(envvar="QUBIX_SERVER", help="The coordinator URL the worker joins.")
    ],
    os_arg: Annotated[
        str | None,
        typer.Argument(
            metavar="OS",
            help=f"{OS_CHOICES} \\[default: this machine's]; the same as --os.",
            show_default=False,
        ),
    ] = None,
    os_name: Annotated[
        str | None,
        typer.Option("--os", metavar=OS_METAVAR, help=f"{OS_CHOICES} \\[default: this machine's]."),
    ] = None,
    qubic_address: Annotated[
        str | None,
        typer.Option(help="The Qubic address to pay \\[default: asked for when it runs]."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write it \\[default: qubix-installer-<os>.sh or .bat]."),
    ] = None,
) -> None:
    """Write the installer; print its path, its SHA-256 and how to run it."""
    if os_arg and os_name and os_arg != os_name:
        raise typer.BadParameter(f"give the OS once: {os_arg!r} and --os {os_name!r} differ")
    target = normalize_os(os_arg or os_name or this_os())
    url = validate_server_url(server)  # a bad URL is refused before any request to it
    if qubic_address:
        validate_identity(qubic_address)
    built = render(target, url, qubic_address, _update_key(url))
    path = output or Path(built.filename)
    try:
        path.write_bytes(built.content)
        path.chmod(0o755 if built.filename.endswith(".sh") else 0o644)
    except OSError as exc:
        raise QubixError(f"cannot write {path}: {exc.strerror}") from exc
    console.print(escape(f"Wrote {path} ({built.os}, {len(built.content):,} bytes)"))
    console.print(f"SHA-256: {built.sha256}")
    run = OSES[built.os].how_to_run.format(file=path if output else path.name)
    console.print(escape(f"Run it on the GPU machine: {run}"))
