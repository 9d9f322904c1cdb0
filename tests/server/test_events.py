"""WS /api/events among strangers: provider events for anyone, job events (never their
payload) only with a key, and no stream for a foreign page."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import register
from tests.helpers import API_KEY, KEY

SECRET = "s3cr3t-token-of-the-renter"


def _submit_secret(client: TestClient) -> str:
    body = {"type": "command", "payload": {"argv": ["env"], "env": {"TOKEN": SECRET}}}
    answer = client.post("/api/jobs", json=body, headers=KEY)
    assert answer.status_code == 201
    job_id: str = answer.json()["job"]["id"]
    return job_id


def test_without_a_key_only_provider_events_arrive(client: TestClient) -> None:
    with client.websocket_connect("/api/events") as ws:
        _submit_secret(client)
        register(client, "w9")  # a public event after the job's
        event = ws.receive_json()
    assert event["type"] == "PROVIDER_REGISTERED" and event["data"]["workerId"] == "w9"
    assert "tokenHash" not in event["data"]


@pytest.mark.parametrize("how", ["header", "message"])
def test_with_a_key_job_events_carry_no_payload(client: TestClient, how: str) -> None:
    headers = KEY if how == "header" else {}
    with client.websocket_connect("/api/events", headers=headers) as ws:
        if how == "message":
            ws.send_json({"type": "auth", "key": API_KEY})
            assert ws.receive_json()["type"] == "AUTHENTICATED"
        job_id = _submit_secret(client)
        event = ws.receive_json()
    assert event["type"] == "JOB_QUEUED"
    assert event["data"] == {"id": job_id, "status": "queued", "attempt": 0, "workerId": None}
    assert SECRET not in json.dumps(event)


def test_a_wrong_key_in_the_first_message_closes_the_stream(client: TestClient) -> None:
    with client.websocket_connect("/api/events") as ws:
        ws.send_json({"type": "auth", "key": "qbx_not-a-key"})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://testserver", True),  # this server's own pages
        ("https://market.example", True),  # --allow-origin
        ("http://evil.example", False),
        ("http://testserver.evil.example", False),
        ("null", False),
    ],
)
def test_a_foreign_origin_is_refused(make_client: Any, origin: str | None, allowed: bool) -> None:
    client = make_client(allow_origins=("https://market.example",))
    headers = {"Origin": origin} if origin else {}
    if allowed:
        with client.websocket_connect("/api/events", headers=headers) as ws:
            register(client, "w1")
            assert ws.receive_json()["type"] == "PROVIDER_REGISTERED"
    else:
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect("/api/events", headers=headers):
                pass
