"""`qubix worker`: the agent that runs on a GPU machine (a thin adapter over qubix_cli.worker)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qubix_cli.worker import hardware
from qubix_cli.worker.__main__ import detect_text, run_worker
from qubix_cli.worker.agent import Config

app = typer.Typer(help="The worker agent: detect this machine's hardware, run jobs.")


@app.command()
def detect(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Print the GPUs, CPU, RAM, disk and OS that this machine reports, with any warnings."""
    report = hardware.detect()
    typer.echo(json.dumps(report, indent=2) if as_json else detect_text(report))


@app.command()
def run(
    server: Annotated[str, typer.Option(envvar="QUBIX_SERVER", help="The coordinator's URL.")],
    qubic_address: Annotated[
        str, typer.Option(envvar="QUBIC_ADDRESS", help="Your 60-letter Qubic address.")
    ],
    name: Annotated[str | None, typer.Option(help="A name shown in the marketplace.")] = None,
    location: Annotated[str | None, typer.Option(help="Where the machine is.")] = None,
    price: Annotated[float | None, typer.Option(help="Price per hour.")] = None,
    worker_id: Annotated[
        str | None, typer.Option(help="Override the worker id (default: from the MAC address).")
    ] = None,
    allow_command: Annotated[
        bool, typer.Option("--allow-command", help="Accept `command` jobs (runs programs).")
    ] = False,
    burst: Annotated[bool, typer.Option("--burst", help="Run what is queued, then exit.")] = False,
    max_jobs: Annotated[int | None, typer.Option(min=1, help="Exit after this many jobs.")] = None,
) -> None:
    """Register with the server, heartbeat, and run jobs until stopped (Ctrl+C drains)."""
    config = Config(
        server=server,
        qubic_address=qubic_address,
        name=name,
        location=location,
        price_per_hour=price,
        worker_id=worker_id,
        allow_command=allow_command,
        burst=burst,
        max_jobs=max_jobs,
    )
    raise typer.Exit(run_worker(config))
