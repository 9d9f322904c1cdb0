"""Shared test helpers: addresses, registration bodies and a real `qubix serve` process."""

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

from qubix_cli.client import Client
from qubix_cli.demo import free_port
from qubix_cli.qubic import identity_from_public_key
from tests.worker.fakes import nvidia, path_with

ADDRESS = identity_from_public_key(bytes(32))
OTHER_ADDRESS = identity_from_public_key(bytes(range(32)))
API_KEY = "test-api-key"
KEY = {"Authorization": f"Bearer {API_KEY}"}


def register_body(worker_id: str = "worker-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "native",
        "workerId": worker_id,
        "qubicAddress": ADDRESS,
        "name": "test box",
        "cpu": {"model": "AMD Ryzen 9 7950X 16-Core Processor", "cores": 16, "threads": 32},
        "ramMb": 65536,
        "gpus": [
            {"vendor": "nvidia", "model": "NVIDIA GeForce RTX 4090", "vramMb": 24564},
        ],
        "capabilities": ["benchmark", "sleep"],
        "agentVersion": "0.1.0",
    }
    body.update(overrides)
    return body


def wait_until_responds(url: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not respond within {timeout_s} s")


class ServerProcess:
    """A real `qubix serve` subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, heartbeat_interval_s: float = 30.0, *options: str) -> None:
        self.data_dir = data_dir
        self.heartbeat_interval_s = heartbeat_interval_s
        self.options = options  # more `qubix serve` options (they win over the defaults here)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> ServerProcess:
        env = {**os.environ, "QUBIX_API_KEY": API_KEY}
        argv = [sys.executable, "-m", "qubix_cli", "serve", "--port", str(self.port)]
        argv.append("--no-canaries")  # tests of trust turn them on (a later --canaries)
        argv += ["--data-dir", str(self.data_dir)]
        argv += ["--heartbeat-interval", str(self.heartbeat_interval_s)]
        # Tests register many providers from one address; the limits have tests of their own.
        argv += ["--max-registrations-per-minute", "0", "--max-providers-per-ip", "0"]
        argv += self.options
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, text=True, env=env)
        wait_until_responds(self.url + "/healthz")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text()


class Worker:
    """A real worker process with its own QUBIX_HOME and a fake nvidia-smi on PATH:
    `qubix worker run`, or the zipapp the installers ship when `pyz` is given."""

    def __init__(
        self,
        tmp: Path,
        server_url: str,
        worker_id: str,
        *flags: str,
        pyz: Path | None = None,
        home: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        """`home` is its state dir (default: in `tmp`); `env` is added to its environment
        (a PATH there replaces the one with the fake nvidia-smi); `user` runs it as that
        user (the suite runs as root), with the system's Python."""
        self.home = home or tmp / f"home-{worker_id}"
        self.log = tmp / f"{worker_id}.stderr"
        bin_dir = tmp / "bin"
        if not bin_dir.exists():
            nvidia(bin_dir, "nvidia-smi-2gpu.csv")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("QUBIX")}
        environ.update(QUBIX_HOME=str(self.home), PATH=path_with(bin_dir), QUBIX_SECRET_PROBE="x")
        environ.update(env or {})
        command = [str(pyz)] if pyz else ["-m", "qubix_cli", "worker"]
        python = (
            ["/usr/sbin/runuser", "-p", "-u", user, "--", "/usr/bin/python3"]
            if user
            else [sys.executable]
        )
        argv = [*python, *command, "run", "--server", server_url]
        argv += ["--qubic-address", ADDRESS, "--worker-id", worker_id, *flags]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=err, stderr=err, env=environ)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text()


def wait_for(what: Callable[[], Any], timeout: float = 20, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def submit(server: ServerProcess, **body: Any) -> str:
    """Submit a job with the API key; return its id."""
    answer = httpx.post(server.url + "/api/jobs", json=body, headers=KEY)
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job"]["id"]
    return job_id


def job(server: ServerProcess, job_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=KEY).json()["job"]
    return answer


def all_providers(url: str) -> list[dict[str, Any]]:
    """Every provider, page after page, as `qubix providers list` reads them."""
    with Client(url) as client:
        return client.list_providers()
