"""`qubix jobs`: submit, list, show and cancel jobs on a coordinator."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from qubix_cli.cli import display
from qubix_cli.cli.display import ApiKeyOpt, JsonOpt, ServerOpt, safe
from qubix_cli.client import Client, connect
from qubix_cli.server.schemas import FILE_NAME, JOB_TYPES, JobStatus

app = typer.Typer(help="Submit, list, show and cancel jobs (needs the server's API key).")
console = Console(highlight=False)


# The payload options of each job type (the rest of the payload comes from the server's
# defaults); an option given for another type is an error, not ignored.
_PAYLOAD_OPTIONS = {
    "sleep": ("--seconds",),
    "benchmark": ("--seconds",),
    "command": ("--argv",),
    "python": ("--script", "--requirements", "--arg"),
    "matmul": ("--seed", "--size"),
}


def _payload(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """The payload from the options given (`given`: option -> value, None when absent)."""
    allowed = _PAYLOAD_OPTIONS.get(kind, tuple(given))  # an unknown type: the server says
    given = {option: value for option, value in given.items() if value not in (None, [])}
    stray = [o for o in given if o not in allowed]
    if stray:
        raise typer.BadParameter(f"{', '.join(stray)} is not for --type {kind}")
    needed = {
        "sleep": ("--seconds",),
        "command": ("--argv",),
        "python": ("--script",),
        "matmul": ("--seed", "--size"),
    }.get(kind, ())
    missing = [option for option in needed if option not in given]
    if missing:
        raise typer.BadParameter(f"a {kind} job needs {' and '.join(missing)}")
    payload: dict[str, Any] = {
        "seconds": given.get("--seconds"),
        "argv": given.get("--argv"),
        "script": _read(given.get("--script")),
        "requirements": _read(given.get("--requirements")),
        "args": given.get("--arg"),
        "seed": given.get("--seed"),
        "n": given.get("--size"),
    }
    return {k: v for k, v in payload.items() if v is not None}


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc


def _inputs(client: Client, files: list[Path], urls: list[str]) -> list[dict[str, Any]]:
    """Upload each file (by its name); each URL is SHA256:URL."""
    inputs = []
    for path in files:
        if not path.is_file():
            what = "a directory, not a file" if path.is_dir() else "no such file"
            raise typer.BadParameter(f"--input {path}: {what}")
        if not FILE_NAME.match(path.name):
            raise typer.BadParameter(
                f"--input {path}: a job's input is named by its file name, which may hold "
                "letters, digits, '.', '_' and '-' and not start with a dot: rename it"
            )
        inputs.append({"name": path.name, "sha256": client.upload_input(path)["sha256"]})
    for text in urls:
        sha256, _, url = text.partition(":")
        name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        if len(sha256) != 64 or not url:
            raise typer.BadParameter(f"--input-url {text!r}: write it as SHA256:URL")
        inputs.append({"name": name, "sha256": sha256.lower(), "url": url})
    return inputs


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
    script: Annotated[
        Path | None, typer.Option(help="python: the script to run (its text goes with the job).")
    ] = None,
    requirements: Annotated[
        Path | None,
        typer.Option(help="python: pinned requirements (name==version, --hash allowed)."),
    ] = None,
    arg: Annotated[
        list[str] | None, typer.Option(help="python: one argument of the script each time.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, max=2**32 - 1, help="matmul: the seed of its matrices.")
    ] = None,
    size: Annotated[
        int | None, typer.Option(min=8, max=4096, help="matmul: n, for n x n matrices.")
    ] = None,
    input_file: Annotated[
        list[Path] | None,
        typer.Option("--input", help="A file the job finds in $QUBIX_INPUT (uploaded; repeat)."),
    ] = None,
    input_url: Annotated[
        list[str] | None,
        typer.Option(help="SHA256:URL of a file the worker fetches into $QUBIX_INPUT (repeat)."),
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
    max_price: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="The most a worker may ask an hour \\[default: the server's maximum]. The "
            "job holds this price for its whole timeout from your balance while it is open.",
        ),
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(min=1, max=7 * 86_400, help="Seconds it may run \\[default: 3600]."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job; print its id (or, with --wait, its outcome)."""
    given = {
        "--seconds": seconds,
        "--argv": argv,
        "--script": script,
        "--requirements": requirements,
        "--arg": arg,
        "--seed": seed,
        "--size": size,
    }
    body: dict[str, Any] = {"type": type_, "payload": _payload(type_, given)}
    wanted = {"minVramMb": min_vram_mb, "gpus": gpus, "sandbox": sandbox, "network": network}
    body["requirements"] = {k: v for k, v in wanted.items() if v not in (None, 0, False)}
    if max_price is not None:
        body["requirements"]["maxPricePerHour"] = max_price
    if timeout is not None:
        body["timeoutS"] = timeout
    if provider:
        body["providerId"] = provider
    with connect(server, api_key) as client:
        if input_file or input_url:
            body["inputs"] = _inputs(client, input_file or [], input_url or [])
        job = client.submit_job(body)
        if not as_json:
            console.print(safe(f"Submitted {job['id']} ({job['type']}), status {job['status']}"))
        if wait:
            job = _wait(client, job["id"], as_json)
    _show(job, as_json)
    _exit_for(job, wait)


@app.command("list")
def list_(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this state.")] = None,
    provider: Annotated[str | None, typer.Option(help="Only jobs of this worker id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 50,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with connect(server, api_key) as client:
        answer = client.list_jobs(status=status, providerId=provider, limit=limit)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    table = Table(Column("id", overflow="fold"), "type", "status", "attempt", "worker", "created")
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
    with connect(server, api_key) as client:
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
    with connect(server, api_key) as client:
        job = client.cancel_job(job_id)
    _show(job, as_json)


@app.command()
def why(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Why a job is still queued: how many workers are online, how many of them fit each of
    its requirements in turn (type, VRAM, GPUs, sandbox, verified, reputation, price), and
    how many of those are busy."""
    with connect(server, api_key) as client:
        job = client.get_job(job_id)
    if as_json:
        typer.echo(json.dumps(job.get("why"), indent=2))
        return
    if job["status"] != "queued":
        worker = f" on worker {job['workerId']}" if job.get("workerId") else ""
        console.print(safe(f"job {job_id} is not queued: it is {job['status']}{worker}"))
        return
    console.print(safe(f"job {job_id} is queued ({job['type']})"))
    for reason in job["why"]["reasons"]:
        console.print(safe(f"- {reason}"))


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Print a job's output (what its worker has sent so far); --follow prints it live.
    At the end: how many lines were dropped, and the last part of each stream."""
    after = -1
    with connect(server, api_key) as client:
        while True:
            answer = client.logs(job_id, after, 25.0 if follow else 0.0)
            for chunk in answer["chunks"]:
                typer.echo(chunk["text"], nl=False)
                after = chunk["seq"]
            if answer["chunks"]:
                continue
            if answer["finished"] or not follow:
                break
        if answer["finished"]:
            _print_end(client.get_job(job_id), answer["droppedLines"])


def _print_end(job: dict[str, Any], dropped: int) -> None:
    result: dict[str, Any] = job["result"] if isinstance(job.get("result"), dict) else {}
    if dropped:
        sys.stdout.flush()  # what came before the notice is shown before it
        typer.echo(f"... {dropped} lines were dropped; the last part of the output:", err=True)
        typer.echo(result.get("stdoutTail", ""), nl=False)
    if result.get("stderrTail") and dropped:
        typer.echo(result["stderrTail"], nl=False, err=True)
    Console(stderr=True).print(f"job {safe(job['id'])} {display.status(job['status'])}")


@app.command()
def download(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to put the files (made if missing).")
    ] = Path("."),
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download the files a job left in $QUBIX_OUTPUT, each checked against its SHA-256."""
    with connect(server, api_key) as client:
        job = client.get_job(job_id)
        artifacts = job.get("artifacts") or []
        if not artifacts:
            console.print(f"job {safe(job_id)} has no output files ({safe(job['status'])})")
            raise typer.Exit(1)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise typer.BadParameter(f"--dir {directory}: {exc.strerror or exc}") from exc
        for artifact in artifacts:
            target = directory / artifact["name"]
            client.download_artifact(job_id, artifact, target)
            console.print(safe(f"{target}  {artifact['size']} bytes, SHA-256 ok"))


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
    for key in ("account", "pricePerHour", "hold", "cost"):
        if job.get(key) is not None:
            table.add_row(key, _text(job[key]))
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
