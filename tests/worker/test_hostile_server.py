"""A server that is not what it claims: the worker takes nothing from it on trust."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Worker


class Hostile(BaseHTTPRequestHandler):
    """Registers anyone, then hands out the jobs in `leases`, once each."""

    leases: list[dict[str, Any]] = []
    reports: list[str] = []

    def _answer(self, status: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/quick-register"):
            self._answer(201, {"provider": {}, "workerToken": "t"})
        elif self.path.endswith("/heartbeat"):
            self._answer(
                200,
                {
                    "ok": True,
                    "serverTime": 0,
                    "heartbeatIntervalS": 30,
                    "pollWaitS": 1,
                    "cancelJobIds": [],
                },
            )
        else:
            self.reports.append(self.path)
            self._answer(200, {"job": {}})

    def do_GET(self) -> None:  # noqa: N802
        if self.leases:
            self._answer(200, self.leases.pop(0))
        else:
            self._answer(204)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_job_id_or_attempt_that_would_leave_the_state_dir_is_refused(
    hostile: str, tmp_path: Path
) -> None:
    target = tmp_path / "outside" / "evil"
    target.parent.mkdir()
    sleep = {"type": "sleep", "payload": {"seconds": 0}}
    Hostile.reports = []
    Hostile.leases = [
        {"job": {"id": str(target), **sleep}, "attempt": 1},  # an absolute path
        {"job": {"id": "../../outside/evil", **sleep}, "attempt": 1},
        {"job": {"id": "job_ok", **sleep}, "attempt": "../../outside/evil"},
        {"job": {"id": "job_fine", **sleep}, "attempt": 1},  # and a real one still runs
    ]
    worker = Worker(tmp_path, hostile, "w1", "--burst")
    assert worker.wait(60) == 0, worker.output()
    assert list(target.parent.iterdir()) == []
    assert not list(tmp_path.rglob("*evil*"))
    assert Hostile.reports == ["/api/jobs/job_fine/complete"]
    assert worker.output().count("refused a job whose id or attempt is malformed") == 3
