"""The worker agent as a real process against a real `qubix serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import KEY, ServerProcess, job, submit, wait_for


def status_is(server: ServerProcess, job_id: str, *states: str) -> Callable[[], bool]:
    return lambda: job(server, job_id)["status"] in states


def test_register_heartbeat_run_and_report(server: ServerProcess, workers: Any) -> None:
    worker = workers("w1", "--max-jobs", "1")
    provider = wait_for(lambda: httpx.get(server.url + "/api/providers/w1").json().get("provider"))
    assert [g["model"] for g in provider["gpus"]] == [
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 3090",
    ]
    assert provider["capabilities"] == ["benchmark", "sleep", "command", "python", "matmul"]
    assert provider["sandbox"] == "bubblewrap" and provider["concurrency"] == 2
    first_seen = provider["lastSeenAt"]
    wait_for(
        lambda: (
            httpx.get(server.url + "/api/providers/w1").json()["provider"]["lastSeenAt"]
            > first_seen
        )
    )  # heartbeats
    job_id = submit(server, type="sleep", payload={"seconds": 0.2})
    assert worker.wait() == 0
    done = job(server, job_id)
    assert done["status"] == "completed" and done["result"] == {"sleptS": 0.2}
    assert done["metrics"]["durationS"] >= 0.2
    credentials = worker.home / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    token = __import__("json").loads(credentials.read_text())["token"]
    assert token not in worker.output()
    assert token not in (worker.home / "worker.log").read_text()


def test_sigterm_mid_job_finishes_and_reports_it(server: ServerProcess, workers: Any) -> None:
    worker = workers("w1")
    job_id = submit(server, type="sleep", payload={"seconds": 2})
    wait_for(status_is(server, job_id, "assigned"))
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert job(server, job_id)["status"] == "completed"


def test_a_second_signal_cancels_the_job_and_reports_it_failed(
    server: ServerProcess, workers: Any
) -> None:
    worker = workers("w1")
    job_id = submit(server, type="sleep", payload={"seconds": 60})
    wait_for(status_is(server, job_id, "assigned"))
    started = time.monotonic()
    worker.signal(signal.SIGINT)
    time.sleep(0.3)
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0
    assert time.monotonic() - started < 10
    done = job(server, job_id)  # the worker's own doing: free, and queued for another
    assert (done["status"], done["attempt"]) == ("queued", 1)
    assert (done["history"][-1]["event"], done["history"][-1]["error"]) == (
        "worker_failed",
        "cancelled",
    )


def test_an_idle_worker_stops_at_once_on_sigterm(server: ServerProcess, workers: Any) -> None:
    worker = workers("w1")
    wait_for(lambda: httpx.get(server.url + "/api/providers/w1").status_code == 200)
    time.sleep(0.5)  # now in its long-poll
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert time.monotonic() - started < 3
    assert "Traceback" not in worker.output()


def test_a_sigkilled_workers_job_is_completed_by_another(
    server: ServerProcess, workers: Any
) -> None:
    lost = workers("lost")
    job_id = submit(server, type="sleep", payload={"seconds": 1}, maxAttempts=3)
    wait_for(status_is(server, job_id, "assigned"))
    lost.signal(signal.SIGKILL)
    lost.wait()
    workers("rescuer")
    wait_for(status_is(server, job_id, "completed"))
    done = job(server, job_id)
    assert done["attempt"] == 2 and done["workerId"] == "rescuer"
    assert [h.get("reason") for h in done["history"] if h["event"] == "lease_expired"] == [
        "agent lost"
    ]


def test_the_server_restarting_mid_job_loses_nothing(server: ServerProcess, workers: Any) -> None:
    worker = workers("w1")
    job_id = submit(server, type="sleep", payload={"seconds": 2})
    wait_for(status_is(server, job_id, "assigned"))
    server.kill()
    time.sleep(3)  # the job finishes while the server is down: its result waits on disk
    assert list((worker.home / "outbox").glob("*.json"))
    server.start()
    # The worker retries with full-jitter backoff: after a 3 s outage, within about 16 s.
    wait_for(status_is(server, job_id, "completed"), timeout=45)
    providers = httpx.get(server.url + "/api/providers").json()["providers"]
    assert [p["workerId"] for p in providers] == ["w1"]
    wait_for(lambda: not list((worker.home / "outbox").glob("*.json")))
    second = submit(server, type="sleep", payload={"seconds": 0})
    wait_for(status_is(server, second, "completed"))  # and it carries on


def test_a_cancelled_job_is_stopped(server: ServerProcess, workers: Any) -> None:
    worker = workers("w1")
    job_id = submit(server, type="sleep", payload={"seconds": 60})
    wait_for(status_is(server, job_id, "assigned"))
    httpx.post(f"{server.url}/api/jobs/{job_id}/cancel", headers=KEY)
    wait_for(lambda: f"job {job_id} stopped: the server ended it" in worker.output(), timeout=10)
    assert job(server, job_id)["status"] == "cancelled"
    assert "refused the report" not in worker.output()  # it sent none: it knew
    again = submit(server, type="sleep", payload={"seconds": 0})
    wait_for(status_is(server, again, "completed"))


def test_burst_runs_what_is_queued_then_exits(server: ServerProcess, workers: Any) -> None:
    ids = [submit(server, type="sleep", payload={"seconds": 0}) for _ in range(3)]
    ids.append(submit(server, type="benchmark", payload={"seconds": 0.2}))
    worker = workers("w1", "--burst")
    assert worker.wait() == 0
    results = [job(server, i) for i in ids]
    assert [r["status"] for r in results] == ["completed"] * 4
    assert results[-1]["result"]["cpuScore"] > 0 and len(results[-1]["result"]["gpus"]) == 2
    assert results[-1]["result"]["measured"] == "cpu"


def test_a_restarted_worker_keeps_its_identity(server: ServerProcess, workers: Any) -> None:
    assert workers("w1", "--burst").wait() == 0
    assert workers("w1", "--burst").wait() == 0
    providers = httpx.get(server.url + "/api/providers").json()["providers"]
    assert [p["workerId"] for p in providers] == ["w1"]


def test_an_invalid_address_stops_the_worker_with_the_servers_reason(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = {**os.environ, "QUBIX_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qubix_cli",
            "worker",
            "run",
            "--server",
            server.url,
            "--qubic-address",
            "A" * 60,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "checksum" in result.stderr and "Traceback" not in result.stderr


def test_a_worker_the_server_forgot_registers_again(server: ServerProcess, workers: Any) -> None:
    workers("w1")
    wait_for(lambda: httpx.get(server.url + "/api/providers/w1").status_code == 200)
    httpx.delete(server.url + "/api/providers/w1", headers=KEY)
    wait_for(lambda: httpx.get(server.url + "/api/providers/w1").status_code == 200, timeout=10)
    job_id = submit(server, type="sleep", payload={"seconds": 0})
    wait_for(status_is(server, job_id, "completed"))
