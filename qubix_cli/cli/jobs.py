"""`qubix jobs`: submit, list, show and cancel jobs on a coordinator."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qubix_cli import config
from qubix_cli.cli import display
from qubix_cli.cli.display import ApiKeyOpt, JsonOpt, ServerOpt, safe
from qubix_cli.client import Client
from qubix_cli.server.schemas import JOB_STATUSES, JOB_TYPES

app = typer.Typer(help="Submit, list, show and cancel jobs (needs the server's API key).")
console = Console(highlight=False)


def _client(server: str | None, api_key: str | None) -> Client:
    return Client(config.server_url(server), config.api_key(api_key))


def _payload(kind: str, seconds: float | None, argv: list[str] | None) -> dict[str, Any]:
    if kind == "command":
        if not argv:
            raise typer.BadParameter("a command job needs --argv (repeat it per argument)")
        return {"argv": argv}
    if argv:
        raise typer.BadParameter("--argv is only for --type command")
    if kind == "sleep" and seconds is None:
        raise typer.BadParameter("a sleep job needs --seconds")
    return {} if seconds is None else {"seconds": seconds}


@app.command()
def submit(
    type_: Annotated[
        str,
        typer.Option("--type", help=f"Job type: {', '.join(JOB_TYPES)}."),
    ],
    seconds: Annotated[
        float | None, typer.Option(help="sleep: how long; benchmark: how long to measure.")
    ] = None,
    argv: Annotated[
        list[str] | None,
        typer.Option(help="command: one argument each time (--argv python --argv -V)."),
    ] = None,
    min_vram_mb: Annotated[int | None, typer.Option(help="Least VRAM of one GPU, in MB.")] = None,
    gpus: Annotated[
        int, typer.Option(min=0, max=16, help="GPUs of its own while it runs (default none).")
    ] = 0,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="Only on workers that run it in a sandbox.")
    ] = False,
    network: Annotated[
        bool,
        typer.Option("--network", help="It needs the network (only workers that allow it)."),
    ] = False,
    provider: Annotated[str | None, typer.Option(help="Run only on this worker id.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job; print its id (or, with --wait, its outcome)."""
    body: dict[str, Any] = {"type": type_, "payload": _payload(type_, seconds, argv)}
    wanted = {"minVramMb": min_vram_mb, "gpus": gpus, "sandbox": sandbox, "network": network}
    body["requirements"] = {k: v for k, v in wanted.items() if v not in (None, 0, False)}
    if provider:
        body["providerId"] = provider
    with _client(server, api_key) as client:
        job = client.submit_job(body)
        if not as_json:
            console.print(safe(f"Submitted {job['id']} ({job['type']}), status {job['status']}"))
        if wait:
            job = _wait(client, job["id"], as_json)
    _show(job, as_json)
    _exit_for(job, wait)


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help=f"Only jobs in this state: {', '.join(JOB_STATUSES)}.")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Only jobs of this worker id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 50,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with _client(server, api_key) as client:
        answer = client.list_jobs(status=status, providerId=provider, limit=limit)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    table = Table("id", "type", "status", "attempt", "worker", "created")
    for job in answer["jobs"]:
        table.add_row(
            safe(job["id"]),
            safe(job["type"]),
            display.status(job["status"]),
            str(job["attempt"]),
            safe(job["workerId"] or "-"),
            _time(job["createdAt"]),
        )
    console.print(table)
    console.print(f"{len(answer['jobs'])} of {answer['total']} jobs")


@app.command()
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one job with its history; --wait follows it until it ends."""
    with _client(server, api_key) as client:
        job = _wait(client, job_id, as_json) if wait else client.get_job(job_id)
    _show(job, as_json)
    _exit_for(job, wait)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a queued or running job (its worker stops it at its next heartbeat)."""
    with _client(server, api_key) as client:
        job = client.cancel_job(job_id)
    _show(job, as_json)


def _wait(client: Client, job_id: str, quiet: bool) -> dict[str, Any]:
    if quiet:
        return client.wait_job(job_id)
    with console.status(f"Waiting for {job_id} to finish..."):
        return client.wait_job(job_id)


def _exit_for(job: dict[str, Any], waited: bool) -> None:
    if waited and job["status"] != "completed":
        raise typer.Exit(1)


def _show(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    table = Table(show_header=False, title=f"job {job['id']}")
    for key in ("type", "status", "attempt", "workerId", "payload", "result", "metrics"):
        value = job.get(key)
        text = display.status(str(value)) if key == "status" else _text(value)
        table.add_row(key, text)
    for entry in job["history"]:
        detail = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("event", "at"))
        table.add_row(_time(entry["at"]), safe(f"{entry['event']} {detail}"))
    console.print(table)


def _text(value: Any) -> str:
    """A value as table text; never read as Rich markup (it comes from elsewhere)."""
    if value is None:
        return "-"
    return safe(value if isinstance(value, str) else json.dumps(value))


def _time(at: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")
