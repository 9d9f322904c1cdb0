"""A failed fsync (a dying disk; a late ENOSPC does the same) under registration, job
submission, lease and report: each answers 503 and nothing of it is visible afterwards,
not through the API and not after a restart; once the disk recovers the same request
succeeds (a registration's retry gets 201, not 409)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS, auth
from tests.helpers import API_KEY, KEY, register_body


class Server:
    """The coordinator on one data directory, restarted at will."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir, api_key=API_KEY, **NO_LIMITS)
        self.client = self._start()

    def _start(self) -> TestClient:
        client = TestClient(create_app(self.settings))
        client.__enter__()
        return client

    def restart(self) -> None:
        self.client.__exit__(None, None, None)
        self.client = self._start()

    def stop(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "data")
    yield server
    server.stop()


@contextlib.contextmanager
def failing_fsync() -> Iterator[None]:
    """Every fsync fails with EIO until the block ends (the disk recovers)."""

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", broken)
        yield


def _refused(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "storage_unavailable"


def test_registration(server: Server) -> None:
    with failing_fsync():
        _refused(server.client.post("/api/providers/quick-register", json=register_body("w1")))
        assert server.client.get("/api/providers/w1").status_code == 404
    server.restart()
    assert server.client.get("/api/providers/w1").status_code == 404
    retry = server.client.post("/api/providers/quick-register", json=register_body("w1"))
    assert retry.status_code == 201, retry.text
    server.restart()
    assert server.client.get("/api/providers/w1").status_code == 200


def test_submission(server: Server) -> None:
    job = {"type": "sleep", "payload": {"seconds": 0}}
    with failing_fsync():
        _refused(server.client.post("/api/jobs", json=job, headers=KEY))
        assert server.client.get("/api/jobs", headers=KEY).json()["total"] == 0
    server.restart()
    assert server.client.get("/api/jobs", headers=KEY).json()["total"] == 0
    assert server.client.post("/api/jobs", json=job, headers=KEY).status_code == 201
    server.restart()
    assert server.client.get("/api/jobs", headers=KEY).json()["total"] == 1


def _registered_with_a_job(server: Server) -> tuple[dict[str, str], str]:
    answer = server.client.post("/api/providers/quick-register", json=register_body("w1"))
    token = auth(answer.json()["workerToken"])
    job = {"type": "sleep", "payload": {"seconds": 0}}
    job_id: str = server.client.post("/api/jobs", json=job, headers=KEY).json()["job"]["id"]
    return token, job_id


def _job(server: Server, job_id: str) -> dict[str, object]:
    answer = server.client.get(f"/api/jobs/{job_id}", headers=KEY)
    assert answer.status_code == 200
    job: dict[str, object] = answer.json()["job"]
    return job


def test_lease(server: Server) -> None:
    token, job_id = _registered_with_a_job(server)
    with failing_fsync():
        _refused(server.client.get("/api/jobs/pending/w1", headers=token))
        assert (_job(server, job_id)["status"], _job(server, job_id)["attempt"]) == ("queued", 0)
    server.restart()
    assert (_job(server, job_id)["status"], _job(server, job_id)["attempt"]) == ("queued", 0)
    leased = server.client.get("/api/jobs/pending/w1", headers=token)
    assert leased.status_code == 200 and leased.json()["attempt"] == 1


def test_report(server: Server) -> None:
    token, job_id = _registered_with_a_job(server)
    assert server.client.get("/api/jobs/pending/w1", headers=token).status_code == 200
    report = {"attempt": 1, "status": "completed", "result": {"ok": True}}
    with failing_fsync():
        _refused(server.client.post(f"/api/jobs/{job_id}/complete", json=report, headers=token))
        assert _job(server, job_id)["status"] == "assigned"
    server.restart()
    assert _job(server, job_id)["status"] == "assigned"
    done = server.client.post(f"/api/jobs/{job_id}/complete", json=report, headers=token)
    assert done.status_code == 200 and done.json()["job"]["status"] == "completed"
    server.restart()
    assert _job(server, job_id)["status"] == "completed"


def test_submission_straight_to_a_waiting_worker(server: Server) -> None:
    """A job handed to a worker that waits in a long-poll is leased in the submission's own
    commit: when that fails, the worker is handed nothing."""
    answer = server.client.post("/api/providers/quick-register", json=register_body("w1"))
    token = auth(answer.json()["workerToken"])
    waiters = server.client.app.state.jobs._waiters  # type: ignore[attr-defined]
    job = {"type": "sleep", "payload": {"seconds": 0}}
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(server.client.get, "/api/jobs/pending/w1?wait=10", headers=token)
        deadline = time.monotonic() + 10
        while "w1" not in waiters and time.monotonic() < deadline:
            time.sleep(0.01)
        with failing_fsync():
            _refused(server.client.post("/api/jobs", json=job, headers=KEY))
        assert poll.result(timeout=20).status_code == 204
    assert server.client.get("/api/jobs", headers=KEY).json()["total"] == 0
    server.restart()
    assert server.client.get("/api/jobs", headers=KEY).json()["total"] == 0
    waiters = server.client.app.state.jobs._waiters  # type: ignore[attr-defined]
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(server.client.get, "/api/jobs/pending/w1?wait=10", headers=token)
        deadline = time.monotonic() + 10
        while "w1" not in waiters and time.monotonic() < deadline:
            time.sleep(0.01)
        submitted = server.client.post("/api/jobs", json=job, headers=KEY).json()["job"]
        leased = poll.result(timeout=20)
    assert submitted["status"] == "assigned" and leased.json()["job"]["id"] == submitted["id"]
