"""GET /metrics (Prometheus' text format) and `qubix serve --log-format json`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.conftest import auth, register
from tests.helpers import API_KEY, KEY, ServerProcess, register_body
from tests.server.test_jobs import lease, report, submit


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, float]:
    answer = client.get("/metrics", headers=KEY if headers is None else headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_what_happens(make_client: Any) -> None:
    client = make_client(canaries=False)
    token = register(client, capabilities=["sleep"])
    register(client, "worker-2")
    client.post("/api/providers/worker-1/heartbeat", json={"status": "online"}, headers=auth(token))
    job = submit(client)
    queued = submit(client)
    leased = lease(client, "worker-1", token)
    assert leased is not None and leased["job"]["id"] == job["id"]
    report(client, job["id"], token, 1)
    made = client.post("/api/accounts", json={"name": "alice"}, headers=KEY).json()["apiKey"]
    client.post("/api/accounts/alice/quota", json={"maxPerMinute": 0}, headers=KEY)
    refused = client.post(
        "/api/jobs", json={"type": "sleep", "payload": {"seconds": 0}}, headers=auth(made)
    )
    assert refused.status_code == 429

    got: dict[str, Any] = {}
    poll = threading.Thread(target=lambda: got.update(a=lease(client, "worker-2", token, 2)))
    other = register(client, "worker-3", capabilities=["benchmark"])
    poll = threading.Thread(target=lambda: got.update(a=lease(client, "worker-3", other, 2)))
    poll.start()
    time.sleep(0.5)
    samples = scrape(client)
    poll.join(5)

    assert samples["qubix_providers{status=online}"] == 3
    assert samples["qubix_providers{status=offline}"] == 0
    assert samples["qubix_jobs{status=completed}"] == 1
    assert samples["qubix_jobs{status=queued}"] == 1 and queued["status"] == "queued"
    assert samples["qubix_heartbeats_total{}"] == 1
    assert samples["qubix_job_queue_wait_seconds_count{}"] == 1
    assert samples["qubix_dispatch_seconds_count{}"] >= 1
    assert samples["qubix_storage_commit_seconds_count{}"] >= 4
    assert samples["qubix_refusals_total{code=quota_exceeded}"] == 1
    assert samples["qubix_open_long_polls{kind=job}"] == 1
    assert samples["qubix_open_event_streams{}"] == 0


def test_metrics_need_an_operators_key_unless_public(make_client: Any) -> None:
    client = make_client()
    assert client.get("/metrics").status_code == 401
    renter = client.post("/api/accounts", json={"name": "r"}, headers=KEY).json()["apiKey"]
    assert client.get("/metrics", headers=auth(renter)).status_code == 403
    scrape(client)
    public = make_client(metrics_public=True)
    assert "qubix_providers" in scrape(public, {}).__repr__()


def test_the_dashboard_uses_only_metrics_the_server_has(make_client: Any) -> None:
    client = make_client()
    names = {name.split("{")[0] for name in scrape(client)}
    dashboard = json.loads(Path("docs/grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= {word for word in _words(target["expr"]) if word.startswith("qubix_")}
    assert used and used <= names, used - names


def _words(expr: str) -> set[str]:
    for sep in "(){}[],=~\"' ":
        expr = expr.replace(sep, " ")
    return set(expr.split())


def test_json_logs_one_object_a_line_with_the_events_and_no_secret(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", 30.0, "--log-format", "json").start()
    try:
        body = register_body("w-json", capabilities=["sleep"])
        token = httpx.post(f"{server.url}/api/providers/quick-register", json=body).json()[
            "workerToken"
        ]
        env = {"type": "command", "payload": {"argv": ["true"], "env": {"SECRET": "hunter2"}}}
        httpx.post(f"{server.url}/api/jobs", json=env, headers=KEY)
        httpx.post(f"{server.url}/api/jobs", json={"type": "nope"}, headers=KEY)  # a 422
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    events = {line.get("event") for line in lines}
    assert {"START", "PROVIDER_REGISTERED", "JOB_QUEUED"} <= events
    start = next(line for line in lines if line.get("event") == "START")
    assert start["url"].startswith("http://127.0.0.1:") and start["level"] == "info"
    queued = next(line for line in lines if line.get("event") == "JOB_QUEUED")
    assert queued["status"] == "queued" and queued["jobId"].startswith("job_")
    text = server.output()
    for secret in (API_KEY, token, "hunter2"):
        assert secret not in text
