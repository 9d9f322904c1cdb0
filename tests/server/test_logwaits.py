"""Log long-polls (`GET /api/jobs/{id}/logs?wait=`): capped per client IP like check-new's,
and woken by the job's log appends (on PostgreSQL, across replicas) instead of re-reading
the store on a timer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS, auth
from tests.helpers import API_KEY, KEY, wait_for
from tests.pg import Cluster
from tests.server.test_jobfiles import running


def waiting(client: TestClient) -> int:
    app: Any = client.app
    count: int = app.state.files.log_waiters.waiting()
    return count


def send(client: TestClient, job_id: str, token: str, text: str) -> None:
    body = {"attempt": 1, "text": text}
    answer = client.post(f"/api/jobs/{job_id}/logs", json=body, headers=auth(token))
    assert answer.json() == {"stored": True}, answer.text


def count_log_reads(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reads of the `logs` table that the app makes from now on."""
    app: Any = client.app
    store, reads = app.state.store, []
    scan = store.scan

    async def counted(table: str, *args: Any, **kwargs: Any) -> Any:
        if table == "logs":
            reads.append(table)
        return await scan(table, *args, **kwargs)

    monkeypatch.setattr(store, "scan", counted)
    return reads


def test_log_long_polls_per_ip_are_capped_like_check_new(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qubix_cli.server.routes.LONG_POLLS_PER_IP", 2)
    client = make_client()
    made, token, _ = running(client)
    url = f"/api/jobs/{made['id']}/logs?wait=30"
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(client.get, url, headers=KEY) for _ in range(2)]
        wait_for(lambda: waiting(client) == 2)
        refused = client.get(url, headers=KEY)
        assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
        assert "Retry-After" in refused.headers
        assert client.get(url.replace("wait=30", "wait=0"), headers=KEY).status_code == 200
        send(client, made["id"], token, "hello\n")  # wakes both at once
        for answer in (f.result() for f in held):
            assert answer.json()["chunks"] == [{"seq": 0, "text": "hello\n"}]
    assert client.get(url.replace("wait=30", "wait=0.1"), headers=KEY).status_code == 200


def test_a_waiting_log_poll_reads_the_store_again_only_when_the_job_changes(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, token, _ = running(client)
    url = f"/api/jobs/{made['id']}/logs"
    app: Any = client.app
    wait_for(lambda: getattr(app.state.store, "_listening", True))  # PostgreSQL: caught up
    reads = count_log_reads(client, monkeypatch)
    quiet = client.get(url, params={"wait": 2}, headers=KEY).json()
    assert quiet["chunks"] == [] and quiet["finished"] is False
    assert len(reads) == 1  # nothing changed: read once, not every quarter of a second
    with ThreadPoolExecutor(1) as pool:
        polled = pool.submit(client.get, url, params={"wait": 30, "after": 0}, headers=KEY)
        wait_for(lambda: waiting(client) == 1)
        send(client, made["id"], token, "first\n")  # seq 0: not after 0, still waiting
        send(client, made["id"], token, "second\n")
        assert polled.result().json()["chunks"] == [{"seq": 1, "text": "second\n"}]


def test_a_log_appended_on_one_replica_wakes_a_poll_on_another(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cluster.new_database()

    def replica(name: str) -> TestClient:
        settings = Settings(
            data_dir=tmp_path / name, api_key=API_KEY, database_url=url, **NO_LIMITS
        )  # type: ignore[arg-type]
        return TestClient(create_app(settings))

    with replica("a") as a, replica("b") as b:
        made, token, _ = running(a)
        b_app: Any = b.app
        wait_for(lambda: b_app.state.store._listening)
        reads = count_log_reads(b, monkeypatch)
        logs = f"/api/jobs/{made['id']}/logs"
        with ThreadPoolExecutor(1) as pool:
            polled = pool.submit(b.get, logs, params={"wait": 30}, headers=KEY)
            wait_for(lambda: waiting(b) == 1)
            send(a, made["id"], token, "from a\n")
            assert polled.result().json()["chunks"] == [{"seq": 0, "text": "from a\n"}]
        assert len(reads) == 2  # when it began, and when a's append was told


def test_polls_woken_by_one_log_part_share_one_read(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, token, _ = running(client)
    url = f"/api/jobs/{made['id']}/logs"
    app: Any = client.app
    wait_for(lambda: getattr(app.state.store, "_listening", True))
    with ThreadPoolExecutor(3) as pool:
        polls = [pool.submit(client.get, url, params={"wait": 30}, headers=KEY) for _ in range(3)]
        wait_for(lambda: waiting(client) == 3)
        reads = count_log_reads(client, monkeypatch)
        send(client, made["id"], token, "to all\n")
        for poll in polls:
            assert poll.result().json()["chunks"] == [{"seq": 0, "text": "to all\n"}]
    assert len(reads) == 1  # one read for the three
