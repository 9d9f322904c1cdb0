"""Every state-changing endpoint, tried with every wrong credential: refused, nothing changed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import auth, register
from tests.helpers import KEY, register_body


def snapshot(client: TestClient) -> str:
    providers = client.get("/api/providers").json()["providers"]
    for p in providers:
        p.pop("lastSeenAt"), p.pop("usage"), p.pop("status")
    jobs = client.get("/api/jobs?limit=500", headers=KEY).json()["jobs"]
    return json.dumps([providers, jobs], sort_keys=True)


@pytest.fixture
def world(client: TestClient) -> dict[str, Any]:
    mine, other = register(client, "mine"), register(client, "other")
    queued = client.post("/api/jobs", json={"type": "benchmark"}, headers=KEY).json()["job"]
    leased = client.post("/api/jobs", json={"type": "benchmark"}, headers=KEY).json()["job"]
    client.get("/api/jobs/pending/mine", headers=auth(mine))  # leases the first
    return {"mine": mine, "other": other, "queued": queued["id"], "leased": leased["id"]}


def attempts(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None, list[str]]]:
    """(method, path, body, credentials that must be refused)."""
    lease_job = w["queued"]  # leased to "mine" by the fixture (oldest first)
    beat = {"status": "online"}
    report = {"attempt": 1, "status": "completed", "result": None}
    return [
        ("POST", "/api/providers/mine/heartbeat", beat, ["none", "other", "api_key", "junk"]),
        ("DELETE", "/api/providers/mine", None, ["none", "other", "junk"]),
        ("GET", "/api/jobs/pending/mine", None, ["none", "other", "api_key", "junk"]),
        ("POST", f"/api/jobs/{lease_job}/complete", report, ["none", "other", "api_key", "junk"]),
        ("POST", "/api/jobs", {"type": "benchmark"}, ["none", "mine", "other", "junk"]),
        ("POST", f"/api/jobs/{w['leased']}/cancel", None, ["none", "mine", "other", "junk"]),
        ("POST", "/api/providers/quick-register", None, ["none", "other", "api_key", "junk"]),
    ]


def test_every_wrong_credential_is_refused_and_changes_nothing(
    client: TestClient, world: dict[str, Any]
) -> None:
    credentials = {
        "none": {},
        "mine": auth(world["mine"]),
        "other": auth(world["other"]),
        "api_key": KEY,
        "junk": auth("x" * 43),
    }
    before = snapshot(client)
    for method, path, body, refused in attempts(world):
        if path.endswith("quick-register"):  # taking over "mine" without its token
            body = register_body("mine", name="hijacked")
        for who in refused:
            answer = client.request(method, path, json=body, headers=credentials[who])
            assert answer.status_code in (401, 403, 409), (method, path, who, answer.text)
            assert answer.json()["error"] in (
                "unauthorized",
                "forbidden",
                "worker_id_taken",
                "lease_not_held",
            )
    assert snapshot(client) == before
