"""Inputs, outputs, logs and retention through the HTTP API: who may do what, the caps, the
fence, and what is forgotten when."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.jobfiles import LOG_LIMIT_BYTES
from qubix_cli.server.openapi import openapi_document
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS, auth, register
from tests.helpers import API_KEY, KEY
from tests.server.test_jobs import lease, report, submit


def upload(client: TestClient, data: bytes) -> str:
    answer = client.post("/api/inputs", content=data, headers=KEY)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    sha: str = answer.json()["sha256"]
    return sha


def running(client: TestClient, **job: Any) -> tuple[dict[str, Any], str, str]:
    """A command job leased to worker-1 (and a second registered worker's token)."""
    token = register(client, capabilities=["command"])
    other = register(client, "worker-2", capabilities=["command"])
    made = submit(client, type="command", payload={"argv": ["true"]}, **job)
    assert lease(client, "worker-1", token) is not None
    return made, token, other


def put_artifact(client: TestClient, job_id: str, token: str, name: str, data: bytes, attempt=1):  # type: ignore[no-untyped-def]
    url = f"/api/jobs/{job_id}/artifacts/{name}?attempt={attempt}"
    return client.put(url, content=data, headers=auth(token))


def test_an_uploaded_input_reaches_only_the_lease_holder(client: TestClient) -> None:
    sha = upload(client, b"1,2,3")
    made, token, other = running(client, inputs=[{"name": "data.csv", "sha256": sha}])
    url = f"/api/jobs/{made['id']}/inputs/data.csv"
    got = client.get(url, headers=auth(token))
    assert got.status_code == 200 and got.content == b"1,2,3"
    assert client.get(url, headers=auth(other)).json()["error"] == "lease_not_held"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=KEY).status_code == 401  # a renter's key is not a worker
    assert client.get(f"/api/jobs/{made['id']}/inputs/nope", headers=auth(token)).status_code == 404


def test_inputs_must_be_uploaded_and_well_named(client: TestClient) -> None:
    def post(inputs: list[dict[str, Any]]) -> Any:
        body = {"type": "command", "payload": {"argv": ["true"]}, "inputs": inputs}
        return client.post("/api/jobs", json=body, headers=KEY)

    missing = post([{"name": "a.csv", "sha256": "a" * 64}])
    assert missing.status_code == 422 and missing.json()["error"] == "input_not_uploaded"
    sha = upload(client, b"x")
    for bad in [".hidden", "../x", "a/b", "", "x" * 129]:
        assert post([{"name": bad, "sha256": sha}]).status_code == 422, bad
    assert post([{"name": "a", "sha256": sha}, {"name": "a", "sha256": sha}]).status_code == 422
    assert post([{"name": "a", "sha256": "not-hex"}]).status_code == 422
    assert post([{"name": "a", "sha256": sha, "url": "file:///etc/passwd"}]).status_code == 422
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 0
    assert client.post("/api/inputs", content=b"x").status_code == 401


def test_an_input_over_the_cap_is_refused_and_nothing_kept(make_client: Any, tmp_path: Any) -> None:
    client = make_client(max_input_bytes=1000)
    answer = client.post("/api/inputs", content=b"x" * 1001, headers=KEY)
    assert answer.status_code == 413 and answer.json()["error"] == "upload_too_large"
    blobs = tmp_path / "data" / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


def test_outputs_are_fenced_by_the_lease_and_capped(make_client: Any) -> None:
    client = make_client(max_output_bytes=100, max_job_outputs_bytes=150)
    made, token, other = running(client)
    job_id = made["id"]
    assert put_artifact(client, job_id, token, "a.txt", b"a" * 100).status_code == 200
    assert put_artifact(client, job_id, other, "b.txt", b"b").json()["error"] == "lease_not_held"
    stale = put_artifact(client, job_id, token, "b.txt", b"b", attempt=2)
    assert stale.json()["error"] == "lease_not_held"
    too_big = put_artifact(client, job_id, token, "c.txt", b"c" * 101)
    assert too_big.status_code == 413
    over_job = put_artifact(client, job_id, token, "d.txt", b"d" * 60)  # 100 + 60 > 150
    assert over_job.status_code == 413
    assert put_artifact(client, job_id, token, "a.txt", b"A" * 10).status_code == 200  # replaced
    assert put_artifact(client, job_id, token, ".x", b"x").status_code == 422
    report(client, job_id, token, 1)
    late = put_artifact(client, job_id, token, "e.txt", b"e")
    assert late.json()["error"] == "lease_not_held"
    shown = client.get(f"/api/jobs/{job_id}", headers=KEY).json()["job"]
    assert [(a["name"], a["size"]) for a in shown["artifacts"]] == [("a.txt", 10)]
    got = client.get(f"/api/jobs/{job_id}/artifacts/a.txt", headers=KEY)
    assert got.content == b"A" * 10
    assert got.headers["x-checksum-sha256"] == hashlib.sha256(b"A" * 10).hexdigest()
    assert client.get(f"/api/jobs/{job_id}/artifacts/a.txt").status_code == 401
    assert client.get(f"/api/jobs/{job_id}/artifacts/zz", headers=KEY).status_code == 404


def test_logs_are_fenced_capped_and_counted(client: TestClient) -> None:
    made, token, other = running(client)
    url = f"/api/jobs/{made['id']}/logs"

    def send(text: str, who: str = token, attempt: int = 1, dropped: int = 0) -> Any:
        body = {"attempt": attempt, "text": text, "droppedLines": dropped}
        return client.post(url, json=body, headers=auth(who))

    assert send("line 1\nline 2\n").json() == {"stored": True}
    assert send("x", who=other).json()["error"] == "lease_not_held"
    assert send("x", attempt=2).json()["error"] == "lease_not_held"
    assert send("y" * (64 * 1024 + 1)).status_code == 422
    chunk = "z" * 1000 + "\n"
    sent = 1
    while send(chunk * 60, dropped=1).json()["stored"]:
        sent += 1
    got = client.get(url, headers=KEY, params={"after": -1}).json()
    assert got["chunks"][0] == {"seq": 0, "text": "line 1\nline 2\n"}
    assert got["finished"] is False and got["droppedLines"] == sent + 60
    shown = client.get(f"/api/jobs/{made['id']}", headers=KEY).json()["job"]["log"]
    assert shown["storedBytes"] <= LOG_LIMIT_BYTES
    later = client.get(url, headers=KEY, params={"after": got["chunks"][-1]["seq"]}).json()
    assert [c["seq"] for c in later["chunks"]] == list(range(64, sent))
    report(client, made["id"], token, 1)
    assert client.get(url, headers=KEY, params={"after": sent}).json()["finished"] is True
    assert client.get(url).status_code == 401


def test_retention_forgets_finished_jobs_their_logs_and_unreferenced_files(
    tmp_path: Path,
) -> None:
    now = [time.time()]
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, retention_s=100.0, **NO_LIMITS)
    with TestClient(create_app(settings, clock=lambda: now[0])) as client:
        kept, lost, stray = (upload(client, data) for data in (b"kept", b"lost", b"stray"))
        old, token, _ = running(client, inputs=[{"name": "in", "sha256": lost}])
        line = {"attempt": 1, "text": "hi\n"}
        client.post(f"/api/jobs/{old['id']}/logs", json=line, headers=auth(token))
        report(client, old["id"], token, 1)
        queued = {"type": "command", "payload": {"argv": ["true"]}}
        fresh = submit(client, **queued, inputs=[{"name": "in", "sha256": kept}])
        now[0] += 4000  # past the retention, and past the grace of an upload never used
        app: Any = client.app
        client.portal.call(app.state.files.forget_old)  # type: ignore[union-attr]
        assert client.get(f"/api/jobs/{old['id']}", headers=KEY).status_code == 404
        assert client.get(f"/api/jobs/{fresh['id']}", headers=KEY).status_code == 200
        blobs = {p.name for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()}
        assert kept in blobs and lost not in blobs and stray not in blobs
        assert client.portal.call(app.state.store.count, "logs") == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/inputs"),
        ("get", "/api/jobs/{jobId}/inputs/{name}"),
        ("put", "/api/jobs/{jobId}/artifacts/{name}"),
        ("get", "/api/jobs/{jobId}/artifacts/{name}"),
        ("post", "/api/jobs/{jobId}/logs"),
        ("get", "/api/jobs/{jobId}/logs"),
    ],
)
def test_every_new_endpoint_is_in_openapi(method: str, path: str) -> None:
    assert method in openapi_document()["paths"][path]


def test_stored_inputs_are_private(client: Any, tmp_path: Path) -> None:
    uploaded = client.post("/api/inputs", content=b"secret-ish data", headers=KEY)
    assert uploaded.status_code == 201
    blobs = tmp_path / "data" / "blobs"
    sha = uploaded.json()["sha256"]
    assert blobs.stat().st_mode & 0o777 == 0o700
    assert (blobs / sha[:2]).stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "url", ["http://[::1/x", "http://h:99999/x", "http://h:abc/x", "http:///x", "https://h:0/x"]
)
def test_an_input_url_whose_host_or_port_cannot_be_read_is_a_422(
    client: TestClient, url: str
) -> None:
    body = {
        "type": "command",
        "payload": {"argv": ["true"]},
        "inputs": [{"name": "a", "sha256": "a" * 64, "url": url}],
    }
    answer = client.post("/api/jobs", json=body, headers=KEY)
    assert answer.status_code == 422, answer.text
    assert answer.json()["details"][0]["field"] == "body.inputs.0.url"
    assert "not a valid URL" in answer.json()["message"]
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 0
