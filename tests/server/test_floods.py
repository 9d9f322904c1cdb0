"""A stranger flooding the registry: per-IP limits, bounded registrations, a paged
marketplace, and providers forgotten once long gone."""

from __future__ import annotations

import time
from typing import Any

from starlette.testclient import TestClient

from tests.conftest import auth, register
from tests.helpers import KEY, register_body


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
