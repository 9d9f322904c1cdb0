"""The network of renters' jobs (real bubblewrap, real workers, a real `qubix serve`):
none unless a job asks and the provider allows it, and then the public internet only,
through the worker's proxy (worker/egress.py). Addresses the operator allows
(`--allow-input-network`) stand in for the public internet, which loopback tests cannot
reach."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubix_cli.installer.pack import build_worker_pyz
from tests.helpers import ServerProcess, Worker, job, submit, wait_for

PYTHON = "/usr/bin/python3"
PUBLIC = "127.0.0.2"  # allowed by the operator below: the stand-in for a public address

# Run in the sandbox: each way out tried, one JSON line each.
PROBE = """
import json, os, socket, sys, urllib.request
here, coordinator = sys.argv[1], sys.argv[2]
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=10).read().decode().strip()
    except Exception as exc:
        return "refused: " + str(getattr(exc, "read", lambda: b"")().decode() or exc).strip()
def tunnel(target):
    try:
        proxy = os.environ["HTTPS_PROXY"].split("//")[1].split(":")
        s = socket.create_connection((proxy[0], int(proxy[1])), timeout=10)
    except (KeyError, OSError):
        return "failed"
    s.sendall(("CONNECT %s HTTP/1.1\\r\\n\\r\\n" % target).encode())
    answer = s.recv(4096).decode()
    if " 200 " not in answer.split("\\r\\n")[0]:
        return "refused: " + answer.split("\\r\\n\\r\\n", 1)[-1].strip()
    s.sendall(b"GET /hello HTTP/1.0\\r\\n\\r\\n")
    got = b"".join(iter(lambda: s.recv(4096), b"")).decode()
    return got.split("\\r\\n\\r\\n", 1)[-1].strip()
def direct(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=5)
        return "connected"
    except OSError as exc:
        return "failed"
host, port = here.split(":")
print(json.dumps({
    "public": get("http://%s/hello" % here),
    "tunnel": tunnel(here),
    "coordinator": get(coordinator + "/healthz"),
    "coordinator tunnel": tunnel(coordinator.split("//")[1]),
    "by name": get(coordinator.replace("127.0.0.1", "localhost") + "/healthz"),
    "lan": get("http://10.0.0.1/"),
    "metadata": get("http://169.254.169.254/latest/meta-data/"),
    "direct": direct(host, port),
    "direct coordinator": direct(*coordinator.split("//")[1].split(":")),
}))
"""


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        body = b"hello from the internet"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def public_site() -> Iterator[str]:
    site = http.server.ThreadingHTTPServer((PUBLIC, 0), Hello)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"{PUBLIC}:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", 30.0, "--allow-input-network", f"{PUBLIC}/32")
    yield proc.start()
    proc.stop()


def finished(server: ServerProcess, job_id: str) -> dict[str, Any]:
    wait_for(lambda: job(server, job_id)["status"] in ("completed", "failed"), timeout=60)
    return job(server, job_id)


def probe(server: ServerProcess, site: str, **body: Any) -> str:
    payload = {"argv": [PYTHON, "-c", PROBE, site, server.url]}
    return submit(server, type="command", payload=payload, **body)


@pytest.mark.parametrize("shipped", [False, True], ids=["module", "zipapp"])
def test_a_network_job_reaches_public_addresses_only_and_only_through_its_proxy(
    operator: ServerProcess, public_site: str, tmp_path: Path, shipped: bool
) -> None:
    """With `--allow-network-jobs` a job once had the provider's whole network: the
    coordinator and every service on loopback, the LAN, the router, a cloud's metadata
    address. Now its only way out is the proxy, which reaches public addresses alone."""
    job_id = probe(operator, public_site, requirements={"network": True})
    pyz = tmp_path / "qubix_worker.pyz"
    pyz.write_bytes(build_worker_pyz())
    flags = ("open", "--allow-network-jobs")
    worker = Worker(tmp_path, operator.url, *flags, pyz=pyz if shipped else None)
    try:
        done = finished(operator, job_id)
    finally:
        worker.proc.kill()
        worker.proc.wait()
    assert done["status"] == "completed", done
    seen = json.loads(done["result"]["stdoutTail"])
    assert seen["public"] == seen["tunnel"] == "hello from the internet", seen
    for name in ("coordinator", "coordinator tunnel", "by name", "lan", "metadata"):
        assert seen[name].startswith("refused: qubix: "), (name, seen[name])
        assert "public addresses only" in seen[name], (name, seen[name])
    assert seen["direct"] == seen["direct coordinator"] == "failed", seen


def test_a_job_has_no_network_unless_it_asks_and_the_provider_allows(
    operator: ServerProcess, public_site: str, tmp_path: Path
) -> None:
    closed = Worker(tmp_path, operator.url, "closed")
    try:
        done = finished(operator, probe(operator, public_site))
        seen = json.loads(done["result"]["stdoutTail"])
        assert all(v in ("failed",) or v.startswith("refused") for v in seen.values()), seen
        assert "qubix" not in json.dumps(seen)  # no proxy at all: nothing answers
        waiting = probe(operator, public_site, requirements={"network": True})
        opened = Worker(tmp_path, operator.url, "open", "--allow-network-jobs")
        try:
            done = finished(operator, waiting)
        finally:
            opened.proc.kill()
            opened.proc.wait()
    finally:
        closed.proc.kill()
        closed.proc.wait()
    assert done["workerId"] == "open"  # never leased to the worker that gives no network
    assert json.loads(done["result"]["stdoutTail"])["public"] == "hello from the internet"
