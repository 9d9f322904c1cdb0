"""`qubix demo`: the whole product working on this machine, in one command."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from qubix_cli.cli.watch import run_watch
from qubix_cli.client import Client
from qubix_cli.demo import Demo
from qubix_cli.errors import QubixError
from qubix_cli.watch import Watch

console = Console(highlight=False)


def demo() -> None:
    """Start a server, install a worker from its installer, watch it come online, run a
    benchmark job; then remove everything (also on Ctrl+C)."""
    run = Demo()
    try:
        _steps(run)
    except KeyboardInterrupt:
        console.print("interrupted; cleaning up")
        raise typer.Exit(130) from None
    finally:
        run.close()
        console.print("[dim]Stopped the worker and the server; removed the demo files.[/dim]")


def _steps(run: Demo) -> None:
    console.print(f"[bold]1.[/bold] Starting a coordinator on {run.url} (temporary data)")
    run.start_server()
    path = run.build_installer()
    assert run.installer is not None
    console.print(f"[bold]2.[/bold] Built {path.name} (SHA-256 {run.installer.sha256[:16]}...)")
    console.print("[bold]3.[/bold] Running it as a provider would, into a temporary home")
    run.start_install(path)
    with Client(run.url) as client:
        watcher = Watch(client, qubic_address=run.address, interval_s=2, attempts=45)
        provider, attempt = run_watch(watcher, quiet=False)
    if provider is None:
        raise QubixError(f"the worker did not come online: {attempt.error or 'timeout'}")
    run.finish_install()
    gpus = ", ".join(g["model"] for g in provider["gpus"]) or "no GPU found (CPU only)"
    console.print(
        escape(f"    worker {provider['workerId']} online after {attempt.elapsed_s:.1f} s: {gpus}")
    )
    console.print("[bold]4.[/bold] Submitting a benchmark job")
    outcome = run.run_benchmark()
    job = outcome["job"]
    if job["status"] != "completed":
        raise QubixError(f"the benchmark job ended {job['status']}: {job['result']}")
    result = job["result"]
    console.print(f"    completed: CPU score {result['cpuScore']} {result['cpuScoreUnit']}")
    console.print(
        f"    dispatched in {outcome['dispatchS'] * 1000:.0f} ms, ran "
        f"{outcome['runS']:.2f} s, {outcome['totalS']:.2f} s from submit to result"
    )
    console.print("[green]The whole journey works on this machine.[/green]")
