"""A network that stalls or drops between a real worker and the server: the worker
recovers and its result arrives exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, Worker, job, submit, wait_for
from tests.reliability.proxy import DOWN, Proxy


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # A lease (3 intervals, 15 s) outlasts the outages below: the job stays this worker's.
    proc = ServerProcess(tmp_path / "data", heartbeat_interval_s=5).start()
    yield proc
    proc.stop()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[Proxy]:
    p = Proxy(server.port)
    yield p
    p.close()


@pytest.fixture
def worker(tmp_path: Path, proxy: Proxy) -> Iterator[Worker]:
    w = Worker(tmp_path, proxy.url, "flaky")
    yield w
    w.proc.kill()
    w.proc.wait()


def running_job(server: ServerProcess, seconds: float) -> str:
    job_id = submit(server, type="sleep", payload={"seconds": seconds})
    wait_for(lambda: job(server, job_id)["status"] == "assigned")
    return job_id


def reports(done: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for h in done["history"] if h["event"] == "reported"]


def assert_completed_once_and_carries_on(
    server: ServerProcess, worker: Worker, job_id: str
) -> None:
    wait_for(lambda: job(server, job_id)["status"] == "completed", timeout=60)
    done = job(server, job_id)
    assert len(reports(done)) == 1 and done["attempt"] == 1
    wait_for(lambda: not list((worker.home / "outbox").glob("*.json")), timeout=30)
    providers = httpx.get(server.url + "/api/providers").json()["providers"]
    assert [p["workerId"] for p in providers] == ["flaky"]
    after = submit(server, type="sleep", payload={"seconds": 0})
    wait_for(lambda: job(server, after)["status"] == "completed", timeout=60)


def test_connections_dropped_and_refused_while_the_job_runs(
    server: ServerProcess, proxy: Proxy, worker: Worker
) -> None:
    job_id = running_job(server, 1.5)
    proxy.refusing = True
    proxy.cut()
    # The job ends while the server cannot be reached: its result waits in the outbox.
    wait_for(lambda: list((worker.home / "outbox").glob("*.json")), timeout=10)
    time.sleep(1)
    assert job(server, job_id)["status"] == "assigned"
    proxy.refusing = False
    assert_completed_once_and_carries_on(server, worker, job_id)


def test_a_stalled_network_then_dropped(
    server: ServerProcess, proxy: Proxy, worker: Worker
) -> None:
    job_id = running_job(server, 1)
    proxy.stall()  # heartbeats and the report hang in flight
    time.sleep(3)
    assert job(server, job_id)["status"] == "assigned"
    proxy.cut()  # the stalled connections are dropped, as a NAT that forgot them does
    proxy.flow()
    assert_completed_once_and_carries_on(server, worker, job_id)


def test_the_answer_to_a_report_is_lost(
    server: ServerProcess, proxy: Proxy, worker: Worker
) -> None:
    job_id = running_job(server, 1)
    proxy.stall(DOWN)  # requests reach the server; its answers do not come back
    wait_for(lambda: job(server, job_id)["status"] == "completed", timeout=10)
    time.sleep(0.5)
    assert list((worker.home / "outbox").glob("*.json"))  # the worker does not know yet
    proxy.cut()
    proxy.flow()
    # It sends the same report again; the server answers it as the one it already has.
    assert_completed_once_and_carries_on(server, worker, job_id)
