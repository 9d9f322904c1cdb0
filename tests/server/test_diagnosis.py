"""'Why no jobs?': each reason set up, and its sentence and numbers asserted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import auth, register
from tests.helpers import API_KEY, KEY
from tests.server.test_jobs import lease, report, submit


def why(client: TestClient, name: str = "worker-1", token: str | None = None) -> dict[str, Any]:
    headers = auth(token) if token else KEY
    response = client.get(f"/api/providers/{name}/diagnosis", headers=headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_nothing_queued_and_a_job_that_fits(client: TestClient) -> None:
    token = register(client)
    assert why(client, token=token)["reasons"] == [
        "Nothing is queued: there is no work for any worker right now."
    ]
    submit(client)
    found = why(client, token=token)
    assert found["eligible"] == 1
    assert found["reasons"] == ["1 queued job(s) fit it: it is handed one at its next poll."]


@pytest.mark.parametrize(
    ("job", "provider", "sentence"),
    [
        (
            {"type": "command", "payload": {"argv": ["true"]}},
            {},
            "are of a type this worker does not run",
        ),
        ({"requirements": {"minVramMb": 80000}}, {}, "need more VRAM than its best GPU has"),
        ({"requirements": {"gpuVendor": "amd"}}, {}, "need a GPU of a vendor it does not have"),
        ({"requirements": {"gpus": 2}}, {}, "need more GPUs than it has"),
        (
            {"requirements": {"sandbox": True}},
            {},
            "need a sandbox for renters' code, which it does not have",
        ),
        (
            {"requirements": {"network": True}},
            {},
            "need the network, which it does not give (--allow-network-jobs)",
        ),
        (
            {"requirements": {"verified": True}},
            {},
            "need a verified GPU claim, and its claim is not verified",
        ),
        ({"requirements": {"minReputation": 0.5}}, {}, "need a higher reputation than it has"),
        ({"providerId": "worker-2"}, {}, "are pinned to other workers"),
    ],
)
def test_each_requirement_that_leaves_it_out_is_named_with_its_count(
    client: TestClient, job: dict[str, Any], provider: dict[str, Any], sentence: str
) -> None:
    token = register(client, **provider)
    register(client, "worker-2")
    submit(client, **job)
    submit(client, **job)
    submit(client)  # one it may take
    found = why(client, token=token)
    assert f"2 of the 3 queued jobs {sentence}." in found["reasons"]
    assert found["eligible"] == 1 and found["excluded"] == {sentence: 2}


def test_busy_and_offline(tmp_path: Path) -> None:
    now = [1_000_000.0]
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, heartbeat_interval_s=1.0)
    with TestClient(create_app(settings, clock=lambda: now[0])) as client:
        token = register(client)
        held = submit(client)
        assert lease(client, "worker-1", token) is not None
        busy = "It holds 1 lease(s), as many as it runs at once (1): it gets more as they end."
        assert busy in why(client)["reasons"]
        report(client, held["id"], token, 1)
        now[0] += 10
        app: Any = client.app
        client.portal.call(app.state.registry.sweep)
        offline = why(client)
        assert offline["status"] == "offline"
        assert offline["reasons"][0].startswith("It is offline since 1970-01-12 13:46:40 UTC")
        assert "no heartbeat for 3 s" in offline["reasons"][0]


def test_quarantined(client: TestClient) -> None:
    token = register(client, capabilities=["sleep", "matmul"])
    submit(client)
    leased = lease(client, "worker-1", token)  # a new worker's first job is a check
    assert leased is not None and leased["job"]["type"] == "matmul"
    report(client, leased["job"]["id"], token, 1, result={"digest": "0" * 64})
    found = why(client, token=token)
    assert found["reasons"][0] == (
        "It is quarantined: it answered a check wrongly (1 failed in all). It gets only checks "
        "until it passes 5 in a row (0 so far); a worker that computes correctly passes them."
    )
    assert "1 of the 1 queued jobs wait while it is quarantined." in found["reasons"]


def test_only_its_own_token_or_an_operator_may_ask(client: TestClient) -> None:
    register(client)
    other = register(client, "worker-2")
    url = "/api/providers/worker-1/diagnosis"
    assert client.get(url).status_code == 401
    refused = client.get(url, headers=auth(other))
    assert refused.status_code == 403
    assert "neither an operator's API key nor the token of 'worker-1'" in refused.json()["message"]
    assert client.get(url, headers=KEY).status_code == 200
    assert client.get("/api/providers/nobody/diagnosis", headers=KEY).status_code == 404


def job_why(client: TestClient, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=KEY).json()["job"]["why"]
    return found


def test_why_a_job_is_queued_no_worker_online(client: TestClient) -> None:
    job = submit(client)
    found = job_why(client, job["id"])
    assert (found["online"], found["fit"]) == (0, 0)
    assert found["reasons"] == [
        "0 worker(s) are online.",
        "No worker is online: it runs when one comes online.",
    ]


def test_why_a_job_is_queued_no_worker_runs_its_type(client: TestClient) -> None:
    register(client, capabilities=["sleep"])
    register(client, "worker-2", capabilities=["sleep"])
    job = submit(client, type="command", payload={"argv": ["true"]})
    found = job_why(client, job["id"])
    assert found["steps"] == [{"rule": "accept `command` jobs", "workers": 0}]
    assert found["reasons"] == [
        "2 worker(s) are online.",
        "0 of those accept `command` jobs.",
        "None of the online workers accept `command` jobs: it waits until one does.",
    ]


def test_why_a_job_is_queued_each_requirement_counted_in_turn(client: TestClient) -> None:
    gpu = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}]
    register(client, "cheap", capabilities=["sleep"], gpus=gpu, pricePerHour=1.0)
    register(client, "dear", capabilities=["sleep"], gpus=gpu, pricePerHour=9.0)
    register(client, "small", capabilities=["sleep"], pricePerHour=1.0)
    job = submit(client, requirements={"minVramMb": 40000, "maxPricePerHour": 5})
    found = job_why(client, job["id"])
    assert found["steps"] == [
        {"rule": "have a GPU with enough VRAM", "workers": 2},
        {"rule": "ask at most its maxPricePerHour", "workers": 1},
    ]
    assert found["reasons"][-2:] == [
        "1 online worker(s) fit it; 0 of them are busy.",
        "It goes to the next of them that asks for work.",
    ]


def test_why_a_job_is_queued_every_fitting_worker_is_busy(client: TestClient) -> None:
    token = register(client, capabilities=["sleep"])
    first, second = submit(client), submit(client)
    assert lease(client, "worker-1", token)["job"]["id"] == first["id"]  # type: ignore[index]
    found = job_why(client, second["id"])
    assert found["reasons"][-2:] == [
        "1 online worker(s) fit it; 1 of them are busy.",
        "It runs when one of them finishes a job.",
    ]
    assert "why" not in client.get(f"/api/jobs/{first['id']}", headers=KEY).json()["job"]
