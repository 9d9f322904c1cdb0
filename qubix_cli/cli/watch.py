"""`qubix watch`: follow a new provider coming online, with a Rich progress display."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from qubix_cli import config
from qubix_cli.cli.display import (
    JsonOpt,
    ServerOpt,
    duration,
    fleet_table,
    provider_panel,
    safe,
)
from qubix_cli.client import Client
from qubix_cli.watch import Attempt, Watch

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

TROUBLESHOOTING = """\
The worker has not registered with {server} within {waited}.
  - Is the worker running? On Linux and macOS: pgrep -f qubix_worker.pyz
    Its log: ~/.qubix/worker.log (Windows: %USERPROFILE%\\.qubix\\worker.log).
  - Can the GPU machine reach {server}?
    Try: curl {server}/healthz
  - Is this the address the installer used? {address}
  - A firewall or proxy between them must allow HTTP to that port.
Then run the installer again, or wait longer with --attempts."""


def watch(
    server: ServerOpt = None,
    qubic_address: Annotated[
        str | None, typer.Option(help="Only a provider registering with this address.")
    ] = None,
    worker_id: Annotated[str | None, typer.Option(help="Only this worker id.")] = None,
    interval: Annotated[
        float, typer.Option(min=0.5, max=60, help="Seconds per attempt (one request each).")
    ] = 5.0,
    attempts: Annotated[int, typer.Option(min=1, help="How many attempts before giving up.")] = 60,
    as_json: JsonOpt = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Then show the live fleet table until Ctrl+C.")
    ] = False,
) -> None:
    """Wait for a new provider to come online (60 x 5 s by default), then show it."""
    url = config.server_url(server)
    try:
        with Client(url) as client:
            if follow and not (qubic_address or worker_id):
                follow_fleet(client)
            watcher = Watch(client, qubic_address, worker_id, interval, attempts)
            provider, last = run_watch(watcher, quiet=as_json)
            report(provider, last, watcher, as_json)
            if follow:
                follow_fleet(client)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def run_watch(watcher: Watch, quiet: bool) -> tuple[dict[str, Any] | None, Attempt]:
    """Run the watch; unless quiet, with a spinner, progress bar and the last answer."""
    if quiet:
        return watcher.run(lambda attempt: None)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("waiting for a new provider"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("attempts"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    task = progress.add_task("watch", total=watcher.attempts)
    status = Text(f"server: {watcher.client.server}")
    started = time.monotonic()

    def on_attempt(attempt: Attempt) -> None:
        progress.update(task, completed=attempt.number)
        line = attempt.error or f"no new provider yet ({time.monotonic() - started:.0f} s)"
        status.plain = f"server: {watcher.client.server}  last answer: {line}"

    with Live(Group(progress, status), console=console, transient=True):
        return watcher.run(on_attempt)


def report(provider: dict[str, Any] | None, last: Attempt, watcher: Watch, as_json: bool) -> None:
    if provider is not None:
        config.remember_worker(provider["workerId"])
        if as_json:
            typer.echo(json.dumps({"provider": provider, "seconds": round(last.elapsed_s, 1)}))
        else:
            title = f"online after {last.elapsed_s:.1f} s"
            console.print(provider_panel(provider, title))
        return
    waited = duration(watcher.attempts * watcher.interval_s)
    reason = last.error or "no matching registration"
    if as_json:
        typer.echo(
            json.dumps({"error": "timeout", "message": reason, "seconds": round(last.elapsed_s, 1)})
        )
    else:
        address = watcher.qubic_address or "(any address)"
        err.print(
            escape(
                TROUBLESHOOTING.format(server=watcher.client.server, waited=waited, address=address)
            )
        )
        err.print(f"[red]error:[/red] {safe(reason)}")
    raise typer.Exit(1)


def follow_fleet(client: Client) -> None:
    """The live fleet table, fed by /api/events, until Ctrl+C."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    providers = {p["workerId"]: p for p in client.list_providers()}
    ws_url = "ws" + client.server.removeprefix("http") + "/api/events"
    with Live(fleet_table(list(providers.values())), console=console) as live:
        while True:
            try:
                with connect(ws_url, open_timeout=10) as socket:
                    for message in socket:
                        event = json.loads(message)
                        if event["type"].startswith("PROVIDER_"):
                            data = event["data"]
                            if data.get("deleted"):
                                providers.pop(data["workerId"], None)
                            else:
                                providers[data["workerId"]] = data
                            live.update(fleet_table(list(providers.values())))
            except (OSError, WebSocketException) as exc:
                live.console.print(f"events: {safe(str(exc))}; reconnecting")
                time.sleep(2)
