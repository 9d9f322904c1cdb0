"""A real `qubix serve` subprocess, driven over HTTP: durability, crashes, concurrency."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    KEY,
    ServerProcess,
    all_providers,
    free_port,
    register_body,
    wait_until_responds,
)


def test_serve_prints_where_data_lives_and_creates_a_private_api_key(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "QUBIX_API_KEY"}
    env["QUBIX_DATA_DIR"] = str(tmp_path / "qd")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qubix_cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_until_responds(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0]
    key_file = tmp_path / "qd" / "api-key"
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert f"Data directory: {tmp_path / 'qd'}" in output
    assert f"http://127.0.0.1:{port}" in output
    assert str(key_file) in output
    assert key not in output  # stderr is not a terminal: the key stays out of logs
    assert "Host" in output and "--public-url" in output  # where installers point
    assert "Application shutdown complete" in output  # SIGTERM shuts down cleanly


def test_sigterm_answers_waiting_long_polls_at_once_and_logs_no_error(tmp_path: Path) -> None:
    """A stopping server answers its long-polls (a worker's job poll: 204, a check-new:
    nothing new) instead of cutting them off with a 500 when the grace ends; the worker asks
    again, of another replica or of this one restarted."""
    server = ServerProcess(tmp_path / "data").start()
    token = httpx.post(
        server.url + "/api/providers/quick-register", json=register_body("w1")
    ).json()["workerToken"]
    answers: dict[str, tuple[float, int, str]] = {}

    def wait(name: str, path: str, **headers: str) -> None:
        started = time.monotonic()
        answer = httpx.get(server.url + path, headers=headers, timeout=40)
        answers[name] = (time.monotonic() - started, answer.status_code, answer.text)

    polls = [
        threading.Thread(
            target=wait,
            args=("job", "/api/jobs/pending/w1?wait=30"),
            kwargs={"Authorization": f"Bearer {token}"},
        ),
        threading.Thread(target=wait, args=("new", "/api/providers/check-new?workerId=w2&wait=30")),
    ]
    for poll in polls:
        poll.start()
    time.sleep(1)  # both are waiting
    assert server.proc is not None
    stopping = time.monotonic()
    assert server.stop() in (0, -15)
    stopped = time.monotonic() - stopping
    for poll in polls:
        poll.join()
    assert answers["job"][1:] == (204, "")
    assert answers["new"][1] == 200 and '"providers":[]' in answers["new"][2]
    assert answers["job"][0] < 3 and answers["new"][0] < 3 and stopped < 3  # not the 5 s grace
    output = server.output()
    assert "Traceback" not in output and "graceful shutdown exceeded" not in output


def test_register_and_heartbeat_over_http(server: ServerProcess) -> None:
    answer = httpx.post(server.url + "/api/providers/quick-register", json=register_body())
    assert answer.status_code == 201
    token = answer.json()["workerToken"]
    beat = httpx.post(
        server.url + "/api/providers/worker-1/heartbeat",
        json={"status": "online"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert beat.json()["ok"] is True
    assert token not in server.output()  # tokens never reach the log


@pytest.mark.parametrize("kill_after", [1, 25, 150, 400])
def test_every_acknowledged_registration_survives_sigkill(tmp_path: Path, kill_after: int) -> None:
    """Kill the server mid-stream once `kill_after` registrations were acknowledged."""
    server = ServerProcess(tmp_path / "data").start()
    acknowledged: list[str] = []

    def register_forever(prefix: str) -> None:
        with httpx.Client(base_url=server.url, timeout=5) as http:
            for i in range(100_000):
                worker_id = f"{prefix}-{i}"
                try:
                    r = http.post("/api/providers/quick-register", json=register_body(worker_id))
                except httpx.HTTPError:
                    return
                if r.status_code == 201:
                    acknowledged.append(worker_id)

    threads = [threading.Thread(target=register_forever, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < kill_after and time.monotonic() < deadline:
        time.sleep(0.001)
    server.kill()
    for t in threads:
        t.join()
    server.start()
    listed = all_providers(server.url)
    stored = {p["workerId"] for p in listed}
    assert len(acknowledged) >= kill_after
    assert set(acknowledged) <= stored
    server.stop()


def test_a_submitted_job_survives_sigkill_before_its_lease(server: ServerProcess) -> None:
    job = httpx.post(server.url + "/api/jobs", json={"type": "benchmark"}, headers=KEY).json()
    server.kill()
    server.start()
    again = httpx.get(f"{server.url}/api/jobs/{job['job']['id']}", headers=KEY).json()["job"]
    assert again["status"] == "queued" and again["history"][0]["event"] == "created"


def test_20_workers_and_500_jobs_each_completed_exactly_once(server: ServerProcess) -> None:
    tokens = {}
    for n in range(20):
        body = register_body(f"w{n}")
        tokens[f"w{n}"] = httpx.post(
            server.url + "/api/providers/quick-register", json=body
        ).json()["workerToken"]
    leases: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    done = threading.Event()
    lock = threading.Lock()

    def worker(worker_id: str) -> None:
        headers = {"Authorization": f"Bearer {tokens[worker_id]}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
            while not done.is_set():
                r = http.get(f"/api/jobs/pending/{worker_id}?wait=1")
                if r.status_code == 204:
                    continue
                job, attempt = r.json()["job"], r.json()["attempt"]
                body = {"attempt": attempt, "status": "completed", "result": worker_id}
                c = http.post(f"/api/jobs/{job['id']}/complete", json=body)
                with lock:
                    leases[job["id"]] += 1
                    if c.status_code == 200:
                        completed[job["id"]] += 1

    with ThreadPoolExecutor(20) as pool:
        for worker_id in tokens:
            pool.submit(worker, worker_id)
        with httpx.Client(base_url=server.url, headers=KEY) as http:
            ids = [
                http.post("/api/jobs", json={"type": "sleep", "payload": {"seconds": 0}}).json()[
                    "job"
                ]["id"]
                for _ in range(500)
            ]
            deadline = time.monotonic() + 60
            while len(completed) < 500 and time.monotonic() < deadline:
                time.sleep(0.1)
        done.set()
    assert set(completed) == set(ids)
    assert set(leases.values()) == {1} and set(completed.values()) == {1}
    jobs = httpx.get(server.url + "/api/jobs?status=completed&limit=500", headers=KEY).json()
    assert jobs["total"] == 500
    assert all(len(j["history"]) == 3 for j in jobs["jobs"])


def test_a_vanished_long_poll_is_handed_no_job(server: ServerProcess) -> None:
    token = httpx.post(server.url + "/api/providers/quick-register", json=register_body()).json()[
        "workerToken"
    ]
    request = (
        f"GET /api/jobs/pending/worker-1?wait=20 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request.encode())
        time.sleep(0.3)
    time.sleep(0.3)  # the worker went away mid-poll
    job = httpx.post(server.url + "/api/jobs", json={"type": "benchmark"}, headers=KEY).json()
    again = httpx.get(f"{server.url}/api/jobs/{job['job']['id']}", headers=KEY).json()["job"]
    assert again["status"] == "queued"


def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """1,100 idle sockets exhausted a soft limit of 1,024 and /healthz was refused."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip("the hard open-file limit is too low to tell")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    port = free_port()
    env = {**os.environ, "QUBIX_API_KEY": "k" * 20}
    argv = [sys.executable, "-m", "qubix_cli", "serve", "--port", str(port)]
    argv += ["--data-dir", str(tmp_path / "d")]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=low_soft_limit,
    )
    try:
        wait_until_responds(f"http://127.0.0.1:{port}/healthz")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3] == str(hard)  # the soft limit is now the hard one
    finally:
        proc.terminate()
        proc.wait(10)
