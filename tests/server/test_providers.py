"""The provider API through Starlette's TestClient, on TinyDB in tmp_path."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import NO_LIMITS, auth, register
from tests.helpers import ADDRESS, KEY, OTHER_ADDRESS, register_body


def _no_secrets(answer: Any, token: str) -> None:
    text = json.dumps(answer)
    assert token not in text and "tokenHash" not in text


def test_first_registration_gives_a_one_time_token(client: TestClient) -> None:
    response = client.post("/api/providers/quick-register", json=register_body())
    assert response.status_code == 201
    answer = response.json()
    token = answer["workerToken"]
    assert len(token) >= 22  # >= 128 bits of url-safe base64
    provider = answer["provider"]
    assert provider["workerId"] == "worker-1" and provider["status"] == "online"
    assert provider["gpus"][0]["vramMb"] == 24564
    _no_secrets(provider, token)
    _no_secrets(client.get("/api/providers").json(), token)
    _no_secrets(client.get("/api/providers/worker-1").json(), token)
    _no_secrets(client.get("/api/providers/check-new").json(), token)


def test_re_registering_with_the_token_updates_the_same_record(client: TestClient) -> None:
    token = register(client)
    first = client.get("/api/providers/worker-1").json()["provider"]
    body = register_body(name="renamed", ramMb=131072)
    response = client.post("/api/providers/quick-register", json=body, headers=auth(token))
    assert response.status_code == 200
    assert "workerToken" not in response.json()
    again = client.get("/api/providers/worker-1").json()["provider"]
    assert again["name"] == "renamed" and again["ramMb"] == 131072
    assert again["registeredAt"] == first["registeredAt"]
    assert len(client.get("/api/providers").json()["providers"]) == 1
    # the old token still works
    assert (
        client.post(
            "/api/providers/worker-1/heartbeat", json={"status": "online"}, headers=auth(token)
        ).status_code
        == 200
    )


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_taking_an_existing_worker_id_without_its_token_is_409(
    client: TestClient, headers: dict[str, str]
) -> None:
    register(client)
    body = register_body(name="impostor")
    response = client.post("/api/providers/quick-register", json=body, headers=headers)
    assert response.status_code == 409
    assert "worker token" in response.json()["message"]
    assert client.get("/api/providers/worker-1").json()["provider"]["name"] == "test box"


def test_the_seeds_single_gpu_object_is_accepted(client: TestClient) -> None:
    body = register_body()
    body["gpu"] = body.pop("gpus")[0]
    assert client.post("/api/providers/quick-register", json=body).status_code == 201
    gpus = client.get("/api/providers/worker-1").json()["provider"]["gpus"]
    assert [g["model"] for g in gpus] == ["NVIDIA GeForce RTX 4090"]


def test_a_machine_without_gpu_registers_with_an_empty_list(client: TestClient) -> None:
    body = register_body()
    del body["gpus"]
    assert client.post("/api/providers/quick-register", json=body).status_code == 201
    assert client.get("/api/providers/worker-1").json()["provider"]["gpus"] == []


GPU = register_body()["gpus"][0]
JUNK_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("body.workerId", {"workerId": ""}),
    ("body.workerId", {"workerId": "a" * 65}),
    ("body.workerId", {"workerId": "has space"}),
    ("body.workerId", {"workerId": "../etc"}),
    ("body.workerId", {"workerId": 7}),
    ("body.qubicAddress", {"qubicAddress": "QUBIC_ABC123"}),
    ("body.qubicAddress", {"qubicAddress": ADDRESS.lower()}),
    ("body.qubicAddress", {"qubicAddress": ADDRESS[:-1] + "A"}),
    ("body.type", {"type": "gpu"}),
    ("body.cpu.cores", {"cpu": {"model": "x", "cores": 0}}),
    ("body.cpu.cores", {"cpu": {"model": "x", "cores": "16"}}),
    ("body.cpu.cores", {"cpu": {"model": "x", "cores": True}}),
    ("body.cpu.model", {"cpu": {"model": "", "cores": 1}}),
    ("body.cpu", {"cpu": None}),
    ("body.ramMb", {"ramMb": -1}),
    ("body.ramMb", {"ramMb": 1.5}),
    ("body.gpus.0.vramMb", {"gpus": [{**GPU, "vramMb": -5}]}),
    ("body.gpus.0.vendor", {"gpus": [{**GPU, "vendor": "3dfx"}]}),
    ("body.gpus.0.vram", {"gpus": [{**GPU, "vram": 8}]}),
    ("body.gpus", {"gpus": [GPU] * 65}),
    ("body.name", {"name": "x" * 65}),
    ("body.name", {"name": "evil\x1b[31m"}),
    ("body.pricePerHour", {"pricePerHour": -0.1}),
    ("body.capabilities.0", {"capabilities": ["Run Anything"]}),
    ("body.agentVersion", {"agentVersion": ""}),
    ("body.unexpected", {"unexpected": 1}),
    ("body", {"gpu": GPU}),  # both gpu and gpus
]


@pytest.mark.parametrize(("field", "change"), JUNK_FIELDS)
def test_invalid_fields_are_422_naming_the_field(
    client: TestClient, field: str, change: dict[str, Any]
) -> None:
    response = client.post("/api/providers/quick-register", json={**register_body(), **change})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_fields"
    assert any(d["field"].startswith(field) for d in answer["details"]), answer
    assert client.get("/api/providers").json()["providers"] == []


@pytest.mark.parametrize("missing", ["type", "workerId", "qubicAddress", "cpu", "ramMb"])
def test_missing_fields_are_422(client: TestClient, missing: str) -> None:
    body = register_body()
    del body[missing]
    response = client.post("/api/providers/quick-register", json=body)
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == f"body.{missing}"


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe", b'{"a":1}{', b"[1,2", b"\x00"]
)
def test_malformed_json_is_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/providers/quick-register", content=raw)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


@pytest.mark.parametrize("raw", [b"null", b"[]", b"42", b'"text"', b"{}"])
def test_json_that_is_not_a_registration_is_422(client: TestClient, raw: bytes) -> None:
    assert client.post("/api/providers/quick-register", content=raw).status_code == 422


def test_a_body_over_1_mib_is_413(client: TestClient) -> None:
    body = json.dumps({**register_body(), "name": "x" * (1024 * 1024)})
    response = client.post("/api/providers/quick-register", content=body)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_a_streamed_body_is_cut_off_at_1_mib(client: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(2048):
            yield b"x" * 1024

    response = client.post("/api/providers/quick-register", content=chunks())
    assert response.status_code == 413


def test_heartbeat_needs_the_workers_own_token(client: TestClient) -> None:
    token = register(client)
    other = register(client, "worker-2")
    url = "/api/providers/worker-1/heartbeat"
    assert client.post(url, json={"status": "online"}).status_code == 401
    assert client.post(url, json={"status": "online"}, headers=auth("nope")).status_code == 403
    assert client.post(url, json={"status": "online"}, headers=auth(other)).status_code == 403
    unknown = client.post(
        "/api/providers/nobody/heartbeat", json={"status": "online"}, headers=auth(token)
    )
    assert unknown.status_code == 404
    answer = client.post(
        url,
        json={"status": "busy", "usage": {"cpuPercent": 12.5, "ramPercent": 40}},
        headers=auth(token),
    ).json()
    assert answer["ok"] is True and answer["heartbeatIntervalS"] == 30
    assert answer["pollWaitS"] > 0 and answer["cancelJobIds"] == []
    provider = client.get("/api/providers/worker-1").json()["provider"]
    assert provider["status"] == "busy" and provider["usage"]["cpuPercent"] == 12.5


def test_heartbeat_answers_are_json_like_every_other_endpoint(client: TestClient) -> None:
    token = register(client)
    other = register(client, "worker-2")
    url = "/api/providers/worker-1/heartbeat"
    ok = client.post(url, json={"status": "online"}, headers=auth(token))
    assert ok.headers["content-type"] == "application/json"
    assert int(ok.headers["content-length"]) == len(ok.content)
    refused = client.post(url, json={"status": "online"})
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"] == "unauthorized"
    # Of repeated Authorization headers the first one counts, as on every other endpoint.
    first, second = ("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {other}")
    assert client.post(url, json={"status": "online"}, headers=[first, second]).status_code == 200
    assert client.post(url, json={"status": "online"}, headers=[second, first]).status_code == 403
    too_big = client.post(url, content=b" " * (1024 * 1024 + 1), headers=auth(token))
    assert too_big.status_code == 413 and too_big.json()["error"] == "body_too_large"
    other_method = client.get(url)
    assert other_method.status_code == 405 and other_method.json()["error"] == "method_not_allowed"


def test_an_unexpected_error_is_a_logged_500_without_secrets(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = register(client)
    registry = client.app.state.registry  # type: ignore[attr-defined]

    def fail(*args: object) -> None:
        raise RuntimeError("the registry broke")

    monkeypatch.setattr(registry, "heartbeat", fail)
    monkeypatch.setattr(registry, "search", fail)
    client = TestClient(client.app, raise_server_exceptions=False)
    for method, url in (
        ("POST", "/api/providers/worker-1/heartbeat"),
        ("GET", "/api/providers"),
    ):
        response = client.request(method, url, json={"status": "online"}, headers=auth(token))
        assert response.status_code == 500
        assert response.json() == {
            "error": "internal",
            "message": "the server failed; the error is in its log",
        }
        assert f"unexpected error in {method} {url}" in caplog.text
    assert "the registry broke" in caplog.text and token not in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        {"status": "sleeping"},
        {},
        {"status": "online", "usage": {"cpuPercent": 101, "ramPercent": 1}},
    ],
)
def test_bad_heartbeats_are_422(client: TestClient, body: dict[str, Any]) -> None:
    token = register(client)
    response = client.post("/api/providers/worker-1/heartbeat", json=body, headers=auth(token))
    assert response.status_code == 422


def test_a_heartbeat_does_not_write_the_database(client: TestClient) -> None:
    token = register(client)
    store = client.app.state.store  # type: ignore[attr-defined]
    commits: list[float] = []
    store.observe_commit = commits.append  # told of every commit that wrote something
    for _ in range(50):
        client.post(
            "/api/providers/worker-1/heartbeat", json={"status": "online"}, headers=auth(token)
        )
    assert commits == []
    client.post("/api/jobs", json={"type": "sleep", "payload": {"seconds": 1}}, headers=KEY)
    assert len(commits) == 1  # a submission does write


def test_listing_filters(client: TestClient) -> None:
    register(client, "big")
    small_gpu = [{"vendor": "amd", "model": "Radeon RX 6600", "vramMb": 8176}]
    register(client, "small", gpus=small_gpu)
    ids = lambda q: [p["workerId"] for p in client.get(f"/api/providers?{q}").json()["providers"]]  # noqa: E731
    assert ids("") == ["big", "small"]
    assert ids("minVramMb=16000") == ["big"]
    assert ids("gpu=radeon") == ["small"]
    assert ids("status=offline") == []
    assert ids("status=online") == ["big", "small"]
    assert client.get("/api/providers?status=lost").status_code == 422
    assert client.get("/api/providers?minVramMb=lots").status_code == 422


def test_unknown_provider_is_404(client: TestClient) -> None:
    response = client.get("/api/providers/nobody")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_delete_needs_the_workers_token_or_the_api_key(client: TestClient) -> None:
    token = register(client)
    other = register(client, "worker-2")
    assert client.delete("/api/providers/worker-1").status_code == 401
    assert client.delete("/api/providers/worker-1", headers=auth(other)).status_code == 403
    assert client.delete("/api/providers/worker-1", headers=auth(token)).status_code == 204
    assert client.get("/api/providers/worker-1").status_code == 404
    assert client.delete("/api/providers/worker-2", headers=auth("test-api-key")).status_code == 204
    # the id is free again
    assert client.post("/api/providers/quick-register", json=register_body()).status_code == 201


def test_check_new_filters_and_since(client: TestClient) -> None:
    before = time.time()
    register(client, "mine")
    register(client, "theirs", qubicAddress=OTHER_ADDRESS)

    def ids(query: str) -> list[str]:
        answer = client.get(f"/api/providers/check-new?{query}").json()
        assert answer["serverTime"] >= before
        return [p["workerId"] for p in answer["providers"]]

    assert ids("") == ["mine", "theirs"]
    assert ids(f"qubicAddress={ADDRESS}") == ["mine"]
    assert ids("workerId=theirs") == ["theirs"]
    assert ids(f"since={time.time() + 1}") == []
    assert ids(f"since={before - 1}&qubicAddress={OTHER_ADDRESS}") == ["theirs"]
    assert client.get("/api/providers/check-new?wait=61").status_code == 422
    assert client.get("/api/providers/check-new?since=yesterday").status_code == 422


def test_check_new_long_poll_answers_within_a_second_of_a_registration(
    client: TestClient,
) -> None:
    since = time.time()
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        answer = client.get(f"/api/providers/check-new?since={since}&wait=10").json()
        result["elapsed"] = time.monotonic() - started
        result["ids"] = [p["workerId"] for p in answer["providers"]]

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    registered_at = time.monotonic()
    register(client, "late")
    thread.join(15)
    assert result["ids"] == ["late"]
    assert time.monotonic() - registered_at < 1.0
    assert result["elapsed"] < 2.0


def test_check_new_wait_times_out_empty(client: TestClient) -> None:
    started = time.monotonic()
    answer = client.get(f"/api/providers/check-new?since={time.time()}&wait=0.5").json()
    assert answer["providers"] == []
    assert 0.4 < time.monotonic() - started < 3


def test_offline_after_three_missed_heartbeats_and_back(make_client: Any) -> None:
    client = make_client(heartbeat_interval_s=0.2)
    token = register(client)
    with client.websocket_connect("/api/events") as ws:
        deadline = time.monotonic() + 5
        while client.get("/api/providers/worker-1").json()["provider"]["status"] != "offline":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ws.receive_json()["type"] == "PROVIDER_OFFLINE"
        client.post(
            "/api/providers/worker-1/heartbeat", json={"status": "online"}, headers=auth(token)
        )
        event = ws.receive_json()
        assert event["type"] == "PROVIDER_ONLINE"
        assert event["data"]["workerId"] == "worker-1" and "tokenHash" not in event["data"]
    assert client.get("/api/providers/worker-1").json()["provider"]["status"] == "online"


def test_registration_event(client: TestClient) -> None:
    with client.websocket_connect("/api/events") as ws:
        register(client)
        event = ws.receive_json()
    assert event["type"] == "PROVIDER_REGISTERED"
    assert event["data"]["workerId"] == "worker-1" and isinstance(event["at"], float)


def test_healthz_openapi_and_unknown_routes(client: TestClient) -> None:
    assert client.get("/healthz").json()["ok"] is True
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/api/providers/quick-register" in doc["paths"]
    register_schema = doc["components"]["schemas"]["Register"]
    assert "workerId" in register_schema["required"]
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.put("/api/providers").status_code == 405


def test_liveness_is_saved_at_shutdown_and_restored(tmp_path: Any) -> None:
    from qubix_cli.server.app import create_app
    from qubix_cli.server.settings import Settings
    from tests.helpers import API_KEY

    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, **NO_LIMITS)
    usage = {"cpuPercent": 12.5, "ramPercent": 40.0}
    with TestClient(create_app(settings)) as first:
        tokens = [register(first, f"w{i}") for i in range(1200)]  # more than one piece
        beat = {"status": "busy", "usage": usage}
        answer = first.post("/api/providers/w7/heartbeat", json=beat, headers=auth(tokens[7]))
        assert answer.status_code == 200
        before = first.get("/api/providers/w7").json()["provider"]
    saved = json.loads((tmp_path / "data" / "liveness.json").read_text())
    assert len(saved) == 1200
    with TestClient(create_app(settings)) as second:
        after = second.get("/api/providers/w7").json()["provider"]
    assert (after["status"], after["usage"], after["lastSeenAt"]) == (
        "busy",
        usage,
        before["lastSeenAt"],
    )
