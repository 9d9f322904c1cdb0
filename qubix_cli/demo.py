"""`qubix demo`: the whole journey on this machine, with throwaway data.

A server on a free loopback port with a temporary data dir; the installer for this OS,
run as a provider would run it, into a temporary home; then a benchmark job. `close()`
undoes all of it, also after a failure or Ctrl+C."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qubix_cli.client import Client
from qubix_cli.errors import QubixError
from qubix_cli.installer.render import Installer, render, this_os
from qubix_cli.qubic import identity_from_public_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self) -> None:
        if this_os() == "windows":
            raise QubixError("qubix demo runs on Linux and macOS; on Windows, use the .bat")
        self.root = Path(tempfile.mkdtemp(prefix="qubix-demo-"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.api_key = secrets.token_urlsafe(16)
        self.address = identity_from_public_key(secrets.token_bytes(32))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.server: subprocess.Popen[bytes] | None = None
        self.install: subprocess.Popen[bytes] | None = None
        self.installer: Installer | None = None

    def start_server(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "qubix_cli",
            "serve",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--data-dir",
            str(self.root / "data"),
            "--heartbeat-interval",
            "5",
        ]
        env = {**os.environ, "QUBIX_API_KEY": self.api_key}
        with open(self.root / "server.log", "wb") as log:
            self.server = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 30
        with Client(self.url) as client:
            while time.monotonic() < deadline:
                try:
                    client.call("GET", "/healthz")
                    return
                except QubixError:
                    if self.server.poll() is not None:
                        break
                    time.sleep(0.1)
        raise QubixError(f"the demo server did not start; see {self.root / 'server.log'}")

    def build_installer(self) -> Path:
        self.installer = render(this_os(), self.url, self.address)
        path = self.root / self.installer.filename
        path.write_bytes(self.installer.content)
        return path

    def start_install(self, path: Path) -> None:
        """Run the installer as a provider would, in the background, into the demo home."""
        # A throwaway home, removed afterwards: the installer may run there as root too.
        env = {**os.environ, "HOME": str(self.home), "QUBIX_ALLOW_ROOT": "1"}
        env.pop("QUBIX_HOME", None)
        with open(self.root / "installer.log", "wb") as log:
            self.install = subprocess.Popen(
                ["/bin/sh", str(path)], stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )

    def finish_install(self) -> None:
        assert self.install is not None
        if self.install.wait(120) != 0:
            raise QubixError(f"the installer failed; see {self.root / 'installer.log'}")

    def run_benchmark(self) -> dict[str, Any]:
        """Submit a benchmark job and wait for it: the job and its timings in seconds."""
        with Client(self.url, self.api_key) as client:
            submitted = time.monotonic()
            job = client.submit_job({"type": "benchmark", "payload": {"seconds": 1}})
            job = client.wait_job(job["id"], poll_s=0.1)
        leased = next(h["at"] for h in job["history"] if h["event"] == "leased")
        return {
            "job": job,
            "dispatchS": leased - job["createdAt"],
            "runS": job["metrics"].get("durationS", 0.0),
            "totalS": time.monotonic() - submitted,
        }

    def close(self) -> None:
        """Stop the worker, the installer and the server; remove every file."""
        if self.installer is not None:
            path = self.root / self.installer.filename
            env = {**os.environ, "HOME": str(self.home)}
            env.pop("QUBIX_HOME", None)
            subprocess.run(
                ["/bin/sh", str(path), "--uninstall"],
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
        for proc in (self.install, self.server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
