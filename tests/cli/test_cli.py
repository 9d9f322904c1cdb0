"""The `qubix` command, run as a real process against a real `qubix serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import typer

from qubix_cli import __version__
from qubix_cli.cli import app
from tests.helpers import API_KEY, ServerProcess, free_port, register_body

DOCS = Path(__file__).parents[2] / "docs" / "cli.md"


def qubix(
    *args: str, server: str | None = None, key: str | None = API_KEY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUBIX_")}
    if server:
        env["QUBIX_SERVER"] = server
    if key:
        env["QUBIX_API_KEY"] = key
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "qubix_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_every_command_has_help_and_is_in_the_docs() -> None:
    docs = DOCS.read_text()
    commands = _commands(typer.main.get_command(app))
    assert ("jobs", "submit") in commands and ("serve",) in commands
    for path in commands:
        result = qubix(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert "Usage:" in result.stdout
        if path:
            assert f"qubix {' '.join(path)}" in docs, f"docs/cli.md does not describe {path}"


def test_version() -> None:
    assert qubix("--version").stdout.strip() == f"qubix {__version__}"


def _fake_worker(server: ServerProcess, count: int) -> threading.Thread:
    token = httpx.post(server.url + "/api/providers/quick-register", json=register_body()).json()[
        "workerToken"
    ]

    def run() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            for _ in range(count):
                answer = http.get("/api/jobs/pending/worker-1?wait=20").json()
                body = {"attempt": answer["attempt"], "status": "completed", "result": {"x": 1}}
                http.post(f"/api/jobs/{answer['job']['id']}/complete", json=body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_jobs_submit_wait_list_show_cancel(server: ServerProcess) -> None:
    worker = _fake_worker(server, 1)
    done = qubix(
        "jobs",
        "submit",
        "--type",
        "sleep",
        "--seconds",
        "0.1",
        "--wait",
        "--json",
        server=server.url,
    )
    worker.join(30)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "completed" and job["result"] == {"x": 1}

    queued = qubix(
        "jobs",
        "submit",
        "--type",
        "command",
        "--argv",
        "echo",
        "--argv",
        "hi",
        "--json",
        server=server.url,
    )
    queued_job = json.loads(queued.stdout)
    assert queued_job["payload"]["argv"] == ["echo", "hi"]

    listed = qubix("jobs", "list", server=server.url)
    assert listed.returncode == 0 and job["id"] in listed.stdout and "2 of 2 jobs" in listed.stdout
    shown = qubix("jobs", "show", job["id"], server=server.url)
    assert "completed" in shown.stdout and "leased" in shown.stdout
    cancelled = qubix("jobs", "cancel", queued_job["id"], "--json", server=server.url)
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    waited = qubix("jobs", "show", queued_job["id"], "--wait", server=server.url)
    assert waited.returncode == 1 and "cancelled" in waited.stdout


def test_errors_are_one_line_without_traceback(server: ServerProcess) -> None:
    cases = [
        (qubix("jobs", "list", server=server.url, key="wrong"), "401"),
        (qubix("jobs", "show", "job_missing", server=server.url), "404"),
        (qubix("jobs", "list", server=f"http://127.0.0.1:{free_port()}"), "cannot reach"),
        (qubix("jobs", "submit", "--type", "sleep", server=server.url), "--seconds"),
        (qubix("jobs", "submit", "--type", "dance", "--seconds", "1", server=server.url), "422"),
    ]
    for result, text in cases:
        assert result.returncode != 0
        assert text in result.stderr, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert API_KEY not in "".join(r.stderr for r, _ in cases)


def test_serve_refuses_a_damaged_database_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "qubix.json").write_text("{torn")
    result = qubix("serve", "--data-dir", str(data), "--port", str(free_port()))
    assert result.returncode == 1
    assert "qubix.json is damaged" in result.stderr and "Traceback" not in result.stderr
    assert (data / "qubix.json").read_text() == "{torn"


def test_help_texts_keep_their_defaults() -> None:
    """Help is rendered as Rich markup: a bracketed default must not vanish as a tag."""
    serve_help = qubix("serve", "--help").stdout
    assert "[default: the" in serve_help and "platform's user data dir" in serve_help
    assert "[default: QUBIX_SERVER" in qubix("watch", "--help").stdout


HOSTILE = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;owned\x07\x1b[2J\x9b31m\u202etxt.exe"


def test_remote_text_reaches_the_terminal_as_visible_escapes(server: ServerProcess) -> None:
    """A worker's result and a provider's fields cannot write the clipboard (OSC 52), retitle
    the window, move the cursor or reorder text in `jobs show`, `jobs list` or `providers`."""
    token = httpx.post(
        server.url + "/api/providers/quick-register", json=register_body("w1")
    ).json()["workerToken"]
    auth = {"Authorization": f"Bearer {token}"}
    submitted = qubix(
        "jobs", "submit", "--type", "sleep", "--seconds", "0", "--json", server=server.url
    )
    job = json.loads(submitted.stdout)
    assert httpx.get(server.url + "/api/jobs/pending/w1", headers=auth).status_code == 200
    report = {"attempt": 1, "status": "completed", "result": HOSTILE, "metrics": {HOSTILE: 1}}
    assert (
        httpx.post(
            server.url + f"/api/jobs/{job['id']}/complete", json=report, headers=auth
        ).status_code
        == 200
    )
    shown = qubix("jobs", "show", job["id"], server=server.url)
    assert shown.returncode == 0, shown.stderr
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in shown.stdout
    assert "\\x1b]52;c;cm0gLXJmIH4=\\x07" in shown.stdout and "\\u202etxt.exe" in shown.stdout
    exact = json.loads(qubix("jobs", "show", job["id"], "--json", server=server.url).stdout)
    assert exact["result"] == HOSTILE  # --json stays exact JSON


def test_registration_text_refuses_c1_and_bidi_controls(server: ServerProcess) -> None:
    for text in ("\x9b31m", "invoice\u202etxt.exe", "a\u2066b", "\x85"):
        body = register_body("w2", name=text)
        answer = httpx.post(server.url + "/api/providers/quick-register", json=body)
        assert answer.status_code == 422, (text, answer.text)
        assert answer.json()["details"][0]["field"] == "body.name"
    assert httpx.get(server.url + "/api/providers/w2").status_code == 404


def test_jobs_list_and_show_give_the_names_of_env_variables_never_their_values(
    server: ServerProcess,
) -> None:
    secret = "hf_" + "t0ken" * 8
    payload = {"argv": ["env"], "env": {"HF_TOKEN": secret}}
    body = {"type": "command", "payload": payload, "requirements": {"minReputation": 0}}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    made = httpx.post(f"{server.url}/api/jobs", json=body, headers=headers)
    assert made.status_code == 201, made.text
    listed = qubix("jobs", "list", "--json", server=server.url)
    shown = qubix("jobs", "show", made.json()["job"]["id"], "--json", server=server.url)
    for done in (listed, shown):
        assert done.returncode == 0, done.stderr
        assert secret not in done.stdout + done.stderr
    assert json.loads(shown.stdout)["payload"]["env"] == {"HF_TOKEN": "***"}
    assert secret not in made.text + server.output()
