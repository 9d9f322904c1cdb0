"""`qubix worker`: the agent that runs on a GPU machine (a thin adapter over qubix_cli.worker).

Its commands and options are the worker's own (`qubix_cli.worker.__main__.parser`): the
same parser reads the installers' `qubix_worker.pyz` command line, so the two never differ.
"""

from __future__ import annotations

import typer

from qubix_cli.worker.__main__ import main as worker_main

app = typer.Typer(help="The worker agent: detect this machine's hardware, run jobs.")
_PASS_THROUGH = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": [],  # --help goes to the worker's parser, which knows the options
}


def _command(name: str, summary: str) -> None:
    def command(ctx: typer.Context) -> None:
        raise typer.Exit(worker_main([name, *ctx.args], prog="qubix worker"))

    command.__doc__ = f"{summary} Options: qubix worker {name} --help."
    app.command(name, context_settings=_PASS_THROUGH, add_help_option=False)(command)


_command("detect", "Print the GPUs, CPU, RAM, disk and OS that this machine reports.")
_command("run", "Register with the server, heartbeat, and run jobs until stopped.")
_command("deregister", "Remove this worker's record from its server, with its own token.")
_command("pause", "Take no new jobs until resumed (or for a while), on the running worker.")
_command("resume", "Take jobs again after `qubix worker pause`.")
_command("preferences", "Show or set when the worker may work; the running worker applies them.")
