"""Whose failure a failed run is, with real worker processes against a real `qubix serve`:
a program that ran and failed is the job's (charged, its outputs delivered); what failed
before it ran is the worker's (free, and the job runs again); one timeout, the job's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qubix_cli.demo import free_port
from qubix_cli.worker import jobs
from tests.helpers import KEY, ServerProcess, Worker, job, wait_for


def renter(server: ServerProcess, name: str = "alice", amount: float = 100.0) -> dict[str, str]:
    """A renter account with money; its key's headers."""
    body = {"name": name, "role": "renter"}
    made = httpx.post(f"{server.url}/api/accounts", json=body, headers=KEY)
    assert made.status_code == 201, made.text
    credit = {"amount": amount}
    assert httpx.post(f"{server.url}/api/accounts/{name}/credit", json=credit, headers=KEY)
    return {"Authorization": f"Bearer {made.json()['apiKey']}"}


def run(server: ServerProcess, key: dict[str, str], **body: Any) -> dict[str, Any]:
    """Submit a command job as the renter and wait for its end."""
    made = httpx.post(f"{server.url}/api/jobs", json={"type": "command", **body}, headers=key)
    assert made.status_code == 201, made.text
    job_id = made.json()["job"]["id"]
    wait_for(lambda: job(server, job_id)["status"] in ("completed", "failed"), timeout=60)
    return job(server, job_id)


def test_a_program_that_exits_3_is_charged_and_delivers_its_outputs(
    server: ServerProcess, workers: Any
) -> None:
    workers("w1", "--price", "36")
    key = renter(server)
    script = 'echo 42 > "$QUBIX_OUTPUT/answer.txt"; sleep 1; exit 3'
    done = run(
        server,
        key,
        payload={"argv": ["/bin/sh", "-c", script]},
        requirements={"maxPricePerHour": 36},
        timeoutS=60,
    )
    assert (done["status"], done["failedBy"], done["result"]["exitCode"]) == ("failed", "job", 3)
    assert done["cost"] >= 0.01  # 36 an hour for at least the second it slept
    answer = httpx.get(f"{server.url}/api/jobs/{done['id']}/artifacts/answer.txt", headers=key)
    assert (answer.status_code, answer.text) == (200, "42\n")  # paid for: delivered


@pytest.fixture
def fetching_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that lets inputs come from loopback URLs (where nothing answers here)."""
    data = tmp_path / "data"
    proc = ServerProcess(data, 0.5, "--allow-input-network", "127.0.0.0/8").start()
    yield proc
    proc.stop()


def test_an_input_the_worker_cannot_fetch_is_free_and_tried_again(
    tmp_path: Path, fetching_server: ServerProcess
) -> None:
    server = fetching_server
    # Two workers: the retry goes at once to one that did not just fail it.
    started = [Worker(tmp_path, server.url, name, "--price", "36") for name in ("w1", "w2")]
    try:
        key = renter(server)
        url = f"http://127.0.0.1:{free_port()}/data.bin"  # refused: nothing listens
        done = run(
            server,
            key,
            payload={"argv": ["true"]},
            inputs=[{"name": "data.bin", "sha256": "0" * 64, "url": url}],
            requirements={"maxPricePerHour": 36},
            maxAttempts=2,
        )
    finally:
        for worker in started:
            worker.proc.kill()
            worker.proc.wait()
    assert (done["status"], done["failedBy"], done["cost"], done["attempt"]) == (
        "failed",
        "worker",
        0.0,
        2,
    )
    events = [h["event"] for h in done["history"]]
    assert events.count("worker_failed") == 2 and events.count("leased") == 2
    assert "could not be fetched" in done["result"]["error"]


def test_the_worker_keeps_to_the_jobs_own_timeout_whatever_the_payload_says() -> None:
    """A lease from an older server may still carry `payload.timeoutS`: it is not read."""
    payload = {"argv": ["sleep", "20"], "timeoutS": 60}
    job_doc = {"id": "j1", "type": "command", "payload": payload, "timeoutS": 1}
    started = time.monotonic()
    status, result, _ = jobs.run_job(jobs.Run(job_doc, lambda: False))
    assert time.monotonic() - started < 10
    assert (status, result["failedBy"]) == ("failed", "job")
    assert result["error"] == "timed out after 1 s"
