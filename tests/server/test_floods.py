"""A stranger flooding the registry: per-IP limits, bounded registrations, a paged
marketplace, and providers forgotten once long gone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import auth, register
from tests.helpers import API_KEY, KEY, register_body
from tests.server.conftest import Clock


def _register(client: TestClient, worker_id: str, **headers: str) -> Any:
    return client.post(
        "/api/providers/quick-register", json=register_body(worker_id), headers=headers
    )


def test_new_registrations_per_minute_per_ip(make_client: Any) -> None:
    client = make_client(max_registrations_per_minute=3)
    tokens = [_register(client, f"w{i}").json()["workerToken"] for i in range(3)]
    refused = _register(client, "w3")
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert client.get("/api/providers/w3").status_code == 404
    again = client.post(
        "/api/providers/quick-register", json=register_body("w0"), headers=auth(tokens[0])
    )
    assert again.status_code == 200  # re-registering with the token is not counted
    # X-Forwarded-For from a peer that is not a trusted proxy changes nothing
    assert _register(client, "w4", **{"X-Forwarded-For": "127.0.0.9"}).status_code == 429


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(make_client: Any) -> None:
    client = make_client(max_registrations_per_minute=1, trusted_proxies=("testclient",))
    for i, ip in enumerate(("127.0.0.2", "127.0.0.3")):
        assert _register(client, f"w{i}", **{"X-Forwarded-For": ip}).status_code == 201
    chained = {"X-Forwarded-For": "127.0.0.2, testclient"}  # the nearest untrusted hop counts
    assert _register(client, "w9", **chained).status_code == 429


def test_providers_per_ip(make_client: Any) -> None:
    client = make_client(max_providers_per_ip=2)
    register(client, "w1")
    register(client, "w2")
    refused = _register(client, "w3")
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_providers"
    assert "--max-providers-per-ip" in refused.json()["message"]
    assert client.delete("/api/providers/w1", headers=KEY).status_code == 204
    assert _register(client, "w3").status_code == 201
    assert "clientIp" not in client.get("/api/providers/w3").json()["provider"]


def test_a_registration_is_bounded(client: TestClient) -> None:
    gpu = {"vendor": "nvidia", "model": "RTX 4090", "vramMb": 24564}
    many = client.post("/api/providers/quick-register", json=register_body("w1", gpus=[gpu] * 17))
    assert many.status_code == 422 and many.json()["details"][0]["field"] == "body.gpus"
    cpu = {"model": "x" * 129, "cores": 8}
    long = client.post("/api/providers/quick-register", json=register_body("w1", cpu=cpu))
    assert long.status_code == 422 and long.json()["details"][0]["field"] == "body.cpu.model"
    huge = client.post(
        "/api/providers/quick-register",
        json=register_body("w1", capabilities=["sleep"] * 10, name="n" * 64)
        | {"padding": " " * 17_000},
    )
    assert huge.status_code == 413
    assert client.get("/api/providers/w1").status_code == 404


def test_the_marketplace_comes_in_pages(client: TestClient) -> None:
    for i in range(250):
        register(client, f"w{i:03d}")
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        query = "limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/providers?{query}").json()
        sizes.append(len(page["providers"]))
        seen += [p["workerId"] for p in page["providers"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sizes == [100, 100, 50]
    assert seen == [f"w{i:03d}" for i in range(250)]  # oldest first, each once
    assert len(client.get("/api/providers").json()["providers"]) == 100  # the default
    assert client.get("/api/providers?limit=1001").status_code == 422
    bad = client.get("/api/providers?cursor=not-a-cursor")
    assert bad.status_code == 422 and "cursor" in bad.json()["message"]


def test_providers_offline_too_long_are_forgotten(make_client: Any) -> None:
    client = make_client(heartbeat_interval_s=0.2, forget_offline_after_s=1.0)
    token = register(client, "gone")
    job = client.post(
        "/api/jobs", json={"type": "sleep", "payload": {"seconds": 1}}, headers=KEY
    ).json()["job"]
    assert client.get("/api/jobs/pending/gone", headers=auth(token)).status_code == 200
    with client.websocket_connect("/api/events") as ws:
        deadline = time.monotonic() + 15
        while client.get("/api/providers/gone").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        types = []
        while "PROVIDER_REMOVED" not in types:
            types.append(ws.receive_json()["type"])
    requeued = client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]
    assert requeued["status"] == "queued"  # its lease requeued (expired, or by the removal)
    assert requeued["history"][-1]["reason"] in ("agent lost", "provider removed")


def test_open_long_polls_and_event_streams_per_ip_are_capped(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qubix_cli.server.routes.LONG_POLLS_PER_IP", 2)
    monkeypatch.setattr("qubix_cli.server.routes.STREAMS_PER_IP", 1)
    client = make_client()
    url = "/api/providers/check-new?workerId=nobody&wait=3"
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(client.get, url) for _ in range(2)]
        time.sleep(0.5)
        refused = client.get(url)
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        assert client.get("/api/providers/check-new?wait=0").status_code == 200  # no wait
        assert [f.result().status_code for f in held] == [200, 200]
    assert client.get(url.replace("wait=3", "wait=0.1")).status_code == 200  # freed again
    with client.websocket_connect("/api/events"):
        with client.websocket_connect("/api/events") as second:
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
    assert closed.value.code == 1013


def test_a_registration_wakes_only_the_check_new_waiters_it_matches(client: TestClient) -> None:
    with ThreadPoolExecutor(1) as pool:
        since = time.time()
        waiting = pool.submit(
            client.get, f"/api/providers/check-new?workerId=wanted&since={since}&wait=5"
        )
        time.sleep(0.3)
        register(client, "other")
        time.sleep(0.3)
        assert not waiting.done()  # not woken by a registration it does not match
        register(client, "wanted")
        answer = waiting.result(timeout=5).json()
    assert [p["workerId"] for p in answer["providers"]] == ["wanted"]


def test_ended_registration_windows_are_dropped(tmp_path: Path) -> None:
    """One entry per client IP ever seen would grow without end (IPv6 has many)."""
    now = [1_800_000_000.0]
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, max_providers_per_ip=0)
    app = create_app(settings, clock=lambda: now[0])
    with TestClient(app) as client:
        register(client, "w1")
        store = app.state.store
        assert client.portal.call(store.recall, "registrations", "testclient") is not None
        now[0] += 61
        client.portal.call(app.state.registry.forget)
        assert client.portal.call(store.recall, "registrations", "testclient") is None


def test_check_new_answers_the_time_of_the_clock_it_compares_with(
    app_client: TestClient, clock: Clock
) -> None:
    """`serverTime` came from the wall clock while registrations were stamped by the
    coordinator's own: with another clock, `since=serverTime` found 0 of 1 new providers.
    Heartbeats and events tell that same time."""
    since = app_client.get("/api/providers/check-new?wait=0").json()["serverTime"]
    assert abs(since - clock.now) < 1
    clock.now += 5
    register(app_client, "newcomer")
    found = app_client.get(f"/api/providers/check-new?since={since}&wait=0").json()
    assert [p["workerId"] for p in found["providers"]] == ["newcomer"]
    assert abs(found["serverTime"] - clock.now) < 1
