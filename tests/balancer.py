"""A real nginx in front of replicas, with the configuration docs/scaling.md gives."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from qubix_cli.demo import free_port
from tests.helpers import wait_until_responds

DOCS = Path(__file__).parent.parent / "docs" / "scaling.md"


def nginx_bin() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def documented_config() -> str:
    """The nginx block of docs/scaling.md."""
    found = re.search(r"```nginx\n(.*?)```", DOCS.read_text(), re.S)
    assert found, "docs/scaling.md has no nginx configuration"
    return found.group(1)


class Nginx:
    """nginx on a free loopback port in front of `upstreams` (the documented configuration,
    with these ports in place of its listen port and replicas); `stop` removes it."""

    def __init__(self, upstreams: list[str], processes: int = 2) -> None:
        binary = nginx_bin()
        if binary is None:
            raise RuntimeError("nginx is not installed: apt-get install nginx")
        self.root = Path(tempfile.mkdtemp(prefix="qubix-nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        listen = f"listen 127.0.0.1:{self.port} reuseport;"  # spread over the processes
        config = documented_config().replace("listen 8000;", listen)
        lines = [line for line in config.splitlines() if not re.match(r"\s*server 127", line)]
        at = next(i for i, line in enumerate(lines) if line.startswith("upstream qubix"))
        lines[at + 1 : at + 1] = [
            f"    server {address} max_fails=1 fail_timeout=5s;" for address in upstreams
        ]
        temp = "\n".join(
            f"    {kind}_temp_path {self.root / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root root;\n" if os.getuid() == 0 else ""
        (self.root / "nginx.conf").write_text(
            f"{user}daemon off;\npid {self.root / 'nginx.pid'};\n"
            f"error_log {self.root / 'error.log'} warn;\n"
            f"worker_processes {processes};\nworker_rlimit_nofile 20000;\n"
            "events { worker_connections 9000; }\n"
            f"http {{\n    access_log off;\n{temp}\n" + "\n".join(lines) + "\n}\n"
        )
        self.proc = subprocess.Popen(
            [
                binary,
                "-p",
                str(self.root),
                "-c",
                str(self.root / "nginx.conf"),
                "-e",
                str(self.root / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_responds(self.url + "/healthz")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        path = self.root / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
