"""`qubix worker pause` / `resume` on a running worker (real processes): it finishes or
hands back its running job, heartbeats `paused`, takes no jobs, and the marketplace and the
diagnosis say so; a job handed back is not a failure and costs no attempt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import KEY, ServerProcess, Worker, job, submit, wait_for


def qubix_worker(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUBIX_HOME": str(worker.home)}
    return subprocess.run(
        [sys.executable, "-m", "qubix_cli", "worker", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def shown(server: ServerProcess, worker_id: str) -> dict[str, Any]:
    """The provider as listed ({} until it has registered)."""
    found: dict[str, Any] = httpx.get(f"{server.url}/api/providers/{worker_id}").json()
    return dict(found.get("provider") or {"status": None})


def test_pause_lets_the_job_finish_takes_no_new_one_until_resume(
    server: ServerProcess, workers: Callable[..., Worker]
) -> None:
    worker = workers("w1")
    wait_for(lambda: shown(server, "w1")["status"] == "online")
    first = submit(server, type="sleep", payload={"seconds": 2})
    wait_for(lambda: job(server, first)["status"] == "assigned")
    paused = qubix_worker(worker, "pause", "--for", "1h")
    assert paused.returncode == 0 and "finishes its running jobs" in paused.stdout
    wait_for(lambda: job(server, first)["status"] == "completed", timeout=15)
    wait_for(lambda: shown(server, "w1")["status"] == "paused", timeout=10)
    provider = shown(server, "w1")
    assert provider["pausedReason"] == "by the provider"
    assert provider["pausedUntil"] > time.time() + 3000
    second = submit(server, type="sleep", payload={"seconds": 0})
    time.sleep(2)
    assert job(server, second)["status"] == "queued"  # no new job while paused
    why = httpx.get(f"{server.url}/api/providers/w1/diagnosis", headers=KEY).json()
    assert why["reasons"][0].startswith("It is paused by the provider until 20")
    queued_why = job(server, second)["why"]["reasons"][0]
    assert "1 more are paused by their providers" in queued_why
    resumed = qubix_worker(worker, "resume")
    assert "takes jobs again" in resumed.stdout
    wait_for(lambda: job(server, second)["status"] == "completed", timeout=15)
    assert shown(server, "w1")["status"] in ("online", "busy")


def test_pause_with_hand_back_requeues_the_job_for_another_worker_without_an_attempt(
    server: ServerProcess, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    worker = workers("w1")
    wait_for(lambda: shown(server, "w1")["status"] == "online")
    job_id = submit(server, type="sleep", payload={"seconds": 30}, maxAttempts=1)
    wait_for(lambda: job(server, job_id)["status"] == "assigned")
    assert qubix_worker(worker, "pause", "--hand-back").returncode == 0
    wait_for(lambda: job(server, job_id)["status"] == "queued", timeout=10)
    history = job(server, job_id)["history"]
    assert [e for e in history if e["event"] == "preempted"][0]["reason"] == "by the provider"
    assert shown(server, "w1")["trust"]["preempted"] == 1
    assert shown(server, "w1")["trust"]["failed"] == 0
    workers("w2")  # another worker takes it: maxAttempts 1, and the first did not count
    wait_for(lambda: job(server, job_id)["status"] == "assigned", timeout=15)
    assert job(server, job_id)["workerId"] == "w2"
    httpx.post(f"{server.url}/api/jobs/{job_id}/cancel", headers=KEY)
