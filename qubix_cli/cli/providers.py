"""`qubix providers`: the marketplace list and one provider."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from qubix_cli import config
from qubix_cli.cli.display import (
    ApiKeyOpt,
    JsonOpt,
    ServerOpt,
    fleet_table,
    plural,
    provider_panel,
    safe,
)
from qubix_cli.client import Client, connect

app = typer.Typer(help="List the providers in the marketplace, or show one.")
console = Console(highlight=False)


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="Only providers online, busy or offline.")
    ] = None,
    min_vram_mb: Annotated[
        int | None, typer.Option(min=0, help="Only providers with a GPU of this much VRAM.")
    ] = None,
    outdated: Annotated[
        bool,
        typer.Option("--outdated", help="Only providers whose agent is older than the server's."),
    ] = False,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the providers, oldest registration first, with their agent's version."""
    params = {"status": status, "minVramMb": min_vram_mb}
    with Client(config.server_url(server)) as client:
        providers = client.list_providers(**{k: v for k, v in params.items() if v is not None})
    if outdated:
        providers = [p for p in providers if p.get("outdated")]
    if as_json:
        typer.echo(json.dumps(providers, indent=2))
        return
    console.print(fleet_table(providers))
    console.print(plural(len(providers), "provider"))


@app.command()
def show(
    worker_id: Annotated[
        str | None,
        typer.Argument(help="The worker id \\[default: the last one `qubix watch` saw]."),
    ] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one provider: hardware, status, price, last heartbeat."""
    worker_id = worker_id or config.last_worker()
    if not worker_id:
        raise typer.BadParameter("give a worker id (no `qubix watch` has seen one yet)")
    with Client(config.server_url(server)) as client:
        provider = client.call("GET", f"/api/providers/{worker_id}")["provider"]
    if as_json:
        typer.echo(json.dumps(provider, indent=2))
        return
    console.print(provider_panel(provider, f"provider {worker_id}"))


@app.command()
def why(
    worker_id: Annotated[str, typer.Argument(help="The worker id.")],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why a worker gets no jobs: offline, quarantined, busy, or which requirement of the
    queued jobs leaves it out, with numbers (needs the server's API key)."""
    with connect(server, api_key) as client:
        found = client.call("GET", f"/api/providers/{worker_id}/diagnosis")
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    console.print(safe(f"worker {worker_id}: {found['status']}"))
    for reason in found["reasons"]:
        console.print(safe(f"- {reason}"))
