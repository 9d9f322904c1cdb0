"""The job queue through the HTTP API: leases, dispatch, matching, exactly-once reports."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import auth, register
from tests.helpers import API_KEY, KEY


def submit(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("type", "sleep")
    body.setdefault("payload", {"seconds": 0.1} if body["type"] == "sleep" else {})
    response = client.post("/api/jobs", json=body, headers=KEY)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()["job"]
    return job


def lease(client: TestClient, worker: str, token: str, wait: float = 0) -> dict[str, Any] | None:
    response = client.get(f"/api/jobs/pending/{worker}?wait={wait}", headers=auth(token))
    if response.status_code == 204:
        return None
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def report(client: TestClient, job_id: str, token: str, attempt: int, **body: Any) -> Any:
    body = {"attempt": attempt, "status": "completed", "result": {"ok": True}, **body}
    return client.post(f"/api/jobs/{job_id}/complete", json=body, headers=auth(token))


@contextlib.contextmanager
def keep_alive(client: TestClient, worker: str, token: str) -> Iterator[None]:
    """Heartbeat for a worker from a thread, as the real agent does."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.05):
            url = f"/api/providers/{worker}/heartbeat"
            client.post(url, json={"status": "online"}, headers=auth(token))

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_submit_lease_complete_once(client: TestClient) -> None:
    token = register(client)
    job = submit(client)
    assert job["status"] == "queued" and job["attempt"] == 0
    leased = lease(client, "worker-1", token)
    assert leased is not None
    assert leased["job"]["id"] == job["id"] and leased["attempt"] == 1
    assert leased["leaseExpiresAt"] > time.time()
    again_leased = lease(client, "worker-1", token)  # its one lease, answered again
    assert again_leased is not None and again_leased["attempt"] == 1
    first = report(client, job["id"], token, 1, metrics={"durationS": 0.1})
    assert first.status_code == 200 and first.json()["job"]["status"] == "completed"
    again = report(client, job["id"], token, 1, metrics={"durationS": 0.1})
    assert again.status_code == 200
    history = client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]["history"]
    assert [h["event"] for h in history] == ["created", "leased", "reported"]
    assert report(client, job["id"], token, 1, status="failed").status_code == 409
    assert report(client, job["id"], token, 2).status_code == 409


def test_job_endpoints_need_the_api_key(client: TestClient) -> None:
    token = register(client)
    job = submit(client)
    for method, url in [
        ("POST", "/api/jobs"),
        ("GET", "/api/jobs"),
        ("GET", f"/api/jobs/{job['id']}"),
        ("POST", f"/api/jobs/{job['id']}/cancel"),
    ]:
        for headers in ({}, auth(token), auth("wrong")):
            response = client.request(method, url, json={"type": "benchmark"}, headers=headers)
            assert response.status_code == 401, (method, url, headers)
    # worker endpoints refuse the API key
    assert lease(client, "worker-1", token) is not None
    assert client.get("/api/jobs/pending/worker-1", headers=KEY).status_code == 403
    assert report(client, job["id"], API_KEY, 1).status_code == 401
    assert client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]["status"] == "assigned"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "mine-bitcoin"}, "body.type"),
        ({"type": "sleep", "payload": {}}, "body.payload.seconds"),
        ({"type": "sleep", "payload": {"seconds": -1}}, "body.payload.seconds"),
        ({"type": "sleep", "payload": {"seconds": "5"}}, "body.payload.seconds"),
        ({"type": "command", "payload": {"argv": "rm -rf /"}}, "body.payload.argv"),
        ({"type": "command", "payload": {"argv": []}}, "body.payload.argv"),
        ({"type": "command", "payload": {"argv": ["ls"], "env": {"A B": "1"}}}, "body.payload.env"),
        ({"type": "benchmark", "payload": {"shell": "x"}}, "body.payload.shell"),
        ({"type": "benchmark", "maxAttempts": 0}, "body.maxAttempts"),
        ({"type": "benchmark", "timeoutS": 0}, "body.timeoutS"),
        ({"type": "benchmark", "providerId": "a b"}, "body.providerId"),
        ({"type": "benchmark", "requirements": {"minVramMb": -1}}, "body.requirements.minVramMb"),
    ],
)
def test_invalid_jobs_are_422(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/api/jobs", json=body, headers=KEY)
    assert response.status_code == 422, response.text
    assert any(d["field"].startswith(field) for d in response.json()["details"])
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 0


def test_a_long_polling_worker_is_woken_by_the_submission(client: TestClient) -> None:
    token = register(client)
    got: dict[str, Any] = {}

    def poll() -> None:
        got["answer"] = lease(client, "worker-1", token, wait=10)
        got["at"] = time.monotonic()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)
    submitted = time.monotonic()
    job = submit(client)
    thread.join(15)
    assert got["answer"]["job"]["id"] == job["id"]
    assert got["at"] - submitted < 0.5


def test_pending_wait_is_bounded(client: TestClient) -> None:
    token = register(client)
    assert client.get("/api/jobs/pending/worker-1?wait=61", headers=auth(token)).status_code == 422
    started = time.monotonic()
    assert lease(client, "worker-1", token, wait=0.3) is None
    assert time.monotonic() - started >= 0.3


def test_matching_vram_vendor_capabilities_and_pin(client: TestClient) -> None:
    big = register(client, "big")  # RTX 4090, 24564 MB, capabilities benchmark + sleep
    amd_gpu = [{"vendor": "amd", "model": "Radeon RX 6600", "vramMb": 8176}]
    small = register(client, "small", gpus=amd_gpu, capabilities=["sleep", "command"])
    vram = submit(client, requirements={"minVramMb": 16000})
    vendor = submit(client, requirements={"gpuVendor": "amd"})
    command = submit(client, type="command", payload={"argv": ["true"]})
    pinned = submit(client, type="benchmark", providerId="big")

    def run(worker: str, token: str) -> str | None:
        """Lease one job and report it (a worker holds one lease at a time)."""
        leased = lease(client, worker, token)
        if leased is None:
            return None
        assert report(client, leased["job"]["id"], token, leased["attempt"]).status_code == 200
        job_id: str = leased["job"]["id"]
        return job_id

    assert [run("small", small), run("small", small)] == [vendor["id"], command["id"]]
    assert run("small", small) is None  # neither the vram job nor the pinned one
    assert [run("big", big), run("big", big)] == [vram["id"], pinned["id"]]
    assert run("big", big) is None


def test_a_command_job_never_goes_to_a_worker_without_that_capability(client: TestClient) -> None:
    token = register(client)
    submit(client, type="command", payload={"argv": ["id"]})
    assert lease(client, "worker-1", token) is None
    assert client.get("/api/jobs?status=queued", headers=KEY).json()["total"] == 1


def test_a_poll_brings_an_offline_worker_back_and_a_silent_one_gets_no_job(
    make_client: Any,
) -> None:
    client = make_client(heartbeat_interval_s=0.2)
    token = register(client)

    def status() -> str:
        status: str = client.get("/api/providers/worker-1").json()["provider"]["status"]
        return status

    deadline = time.monotonic() + 5
    while status() != "offline":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(a=lease(client, "worker-1", token, 3)))
    thread.start()
    time.sleep(0.1)
    assert status() == "online"  # the poll is a sign of life
    while status() != "offline":  # but no heartbeats follow it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = submit(client)
    thread.join(5)
    assert result["a"] is None  # a waiting worker that went silent is handed nothing
    assert lease(client, "worker-1", token)["job"]["id"] == job["id"]  # its next poll is


def test_cancel_queued_and_assigned_jobs(client: TestClient) -> None:
    token = register(client)
    queued = submit(client)
    cancelled = client.post(f"/api/jobs/{queued['id']}/cancel", headers=KEY).json()["job"]
    assert cancelled["status"] == "cancelled"
    assert lease(client, "worker-1", token) is None
    running = submit(client)
    assert lease(client, "worker-1", token) is not None
    client.post(f"/api/jobs/{running['id']}/cancel", headers=KEY)
    beat = {"status": "busy", "currentJobId": running["id"]}
    url = "/api/providers/worker-1/heartbeat"
    answer = client.post(url, json=beat, headers=auth(token)).json()
    assert answer["cancelJobIds"] == [running["id"]]
    # repeated while the worker still names it, then no more
    assert client.post(url, json=beat, headers=auth(token)).json()["cancelJobIds"] == [
        running["id"]
    ]
    idle = client.post(url, json={"status": "online"}, headers=auth(token)).json()
    assert idle["cancelJobIds"] == [running["id"]]
    assert (
        client.post(url, json={"status": "online"}, headers=auth(token)).json()["cancelJobIds"]
        == []
    )
    assert report(client, running["id"], token, 1, status="failed").status_code == 409
    again = client.post(f"/api/jobs/{running['id']}/cancel", headers=KEY)
    assert again.status_code == 409
    assert client.post("/api/jobs/job_nope/cancel", headers=KEY).status_code == 404


def test_lease_expiry_requeues_then_fails_after_max_attempts(make_client: Any) -> None:
    client = make_client(heartbeat_interval_s=0.2)
    lost = register(client, "lost")
    job = submit(client, maxAttempts=2)
    first = lease(client, "lost", lost)
    assert first is not None and first["attempt"] == 1
    other = register(client, "other")
    events = client.websocket_connect("/api/events", headers=KEY)  # job events need a key
    with keep_alive(client, "other", other), events as ws:
        second = lease(client, "other", other, wait=5)  # waits for the first lease to expire
        types = [ws.receive_json()["type"] for _ in range(3)]
    assert [t for t in types if t.startswith("JOB_")] == ["JOB_REQUEUED", "JOB_ASSIGNED"]
    assert second is not None and second["job"]["id"] == job["id"] and second["attempt"] == 2
    late = report(client, job["id"], lost, 1)
    assert late.status_code == 409
    deadline = time.monotonic() + 5
    while (state := client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"])[
        "status"
    ] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    events = [(h["event"], h.get("reason")) for h in state["history"]]
    assert events == [
        ("created", None),
        ("leased", None),
        ("lease_expired", "agent lost"),
        ("leased", None),
        ("lease_expired", "agent lost"),
    ]
    assert report(client, job["id"], other, 2).status_code == 409


def test_heartbeats_naming_the_job_renew_its_lease(make_client: Any) -> None:
    client = make_client(heartbeat_interval_s=0.2)
    token = register(client)
    job = submit(client)
    leased = lease(client, "worker-1", token)
    assert leased is not None
    for _ in range(15):  # 1.5 s: well past the 0.6 s lease
        beat = {"status": "busy", "currentJobId": job["id"]}
        client.post("/api/providers/worker-1/heartbeat", json=beat, headers=auth(token))
        time.sleep(0.1)
    assert report(client, job["id"], token, 1).status_code == 200


def test_a_result_over_1_mib_is_413(client: TestClient) -> None:
    token = register(client)
    job = submit(client)
    lease(client, "worker-1", token)
    big = report(client, job["id"], token, 1, result="x" * (1024 * 1024 + 1))
    assert big.status_code == 413 and "1 MiB" in big.json()["message"]
    assert report(client, job["id"], token, 1).status_code == 200


def test_listing_is_newest_first_and_paginated(client: TestClient) -> None:
    ids = [submit(client, type="benchmark")["id"] for _ in range(5)]
    page = client.get("/api/jobs?limit=2&offset=1", headers=KEY).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][1:3]
    assert page["total"] == 5
    assert client.get("/api/jobs?status=done", headers=KEY).status_code == 422


def test_job_events(client: TestClient) -> None:
    token = register(client)
    with client.websocket_connect("/api/events", headers=KEY) as ws:
        ws_types = []
        job = submit(client)
        lease(client, "worker-1", token)
        report(client, job["id"], token, 1)
        failed = submit(client)
        lease(client, "worker-1", token)
        own = {"exitCode": 3, "failedBy": "job"}  # its own failure: it ends failed
        report(client, failed["id"], token, 1, status="failed", result=own)
        cancelled = submit(client)
        client.post(f"/api/jobs/{cancelled['id']}/cancel", headers=KEY)
        for _ in range(8):
            ws_types.append(ws.receive_json()["type"])
    assert ws_types == [
        "JOB_QUEUED",
        "JOB_ASSIGNED",
        "JOB_COMPLETED",
        "JOB_QUEUED",
        "JOB_ASSIGNED",
        "JOB_FAILED",
        "JOB_QUEUED",
        "JOB_CANCELLED",
    ]


def test_a_worker_whose_wait_ends_while_its_lease_is_committed_gets_the_job(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission hands its job to the oldest waiting worker, the one about to time out;
    the lease is durable before the worker hears of it, so the worker's wait may run out
    meanwhile. It must still be handed the job, not a 204 for a job leased to it."""
    if client.app.state.settings.database_url:  # type: ignore[attr-defined]
        pytest.skip("it holds the embedded store's fsync; on PostgreSQL there is none to hold")
    token = register(client)
    waiters = client.app.state.jobs._waiters  # type: ignore[attr-defined]
    polled: dict[str, Any] = {}
    poll = threading.Thread(target=lambda: polled.update(a=lease(client, "worker-1", token, 1)))
    poll.start()
    while "worker-1" not in waiters:
        time.sleep(0.01)
    gate, entered = threading.Event(), threading.Event()
    real_fsync = __import__("os").fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        gate.wait(10)
        real_fsync(fd)

    monkeypatch.setattr("qubix_cli.server.store.os.fsync", slow_fsync)
    submitted: dict[str, Any] = {}
    submitter = threading.Thread(target=lambda: submitted.update(job=submit(client)))
    submitter.start()
    assert entered.wait(10)
    time.sleep(1.5)  # the worker's wait of 1 s runs out while the lease is being committed
    gate.set()
    submitter.join(10)
    poll.join(10)
    assert submitted["job"]["status"] == "assigned"
    assert polled["a"] is not None and polled["a"]["job"]["id"] == submitted["job"]["id"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"attempt": 1, "status": "completed", "result": {"x": NaN}}',
        '{"attempt": 1, "status": "completed", "result": [1, -Infinity]}',
        '{"attempt": 1, "status": "completed", "metrics": {"y": Infinity}}',
    ],
)
def test_nan_and_infinity_are_refused(client: TestClient, raw: str) -> None:
    token = register(client)
    job = submit(client)
    assert lease(client, "worker-1", token) is not None
    headers = {**auth(token), "Content-Type": "application/json"}
    answer = client.post(f"/api/jobs/{job['id']}/complete", content=raw, headers=headers)
    assert answer.status_code == 422, answer.text
    assert client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]["status"] == "assigned"
    refused = client.post(
        "/api/jobs",
        content='{"type": "sleep", "payload": {"seconds": NaN}}',
        headers={**KEY, "Content-Type": "application/json"},
    )
    assert refused.status_code == 422


def test_metrics_are_capped_like_results(client: TestClient) -> None:
    token = register(client)
    job = submit(client)
    assert lease(client, "worker-1", token) is not None
    big = {f"m{i}": "x" * 30_000 for i in range(60)}  # 1.8 MB
    answer = report(client, job["id"], token, 1, metrics=big)
    assert answer.status_code == 413 and answer.json()["error"] == "metrics_too_large"
    assert report(client, job["id"], token, 1, metrics={"ok": 1}).status_code == 200


def test_deleting_a_provider_requeues_its_lease_and_its_id_cannot_report_for_it(
    client: TestClient,
) -> None:
    """Deregistration requeues the leases at once, and whoever registers the same workerId
    afterwards holds another token: the old lease's report is refused (no forged results)."""
    token = register(client)
    job = submit(client)
    assert lease(client, "worker-1", token)["attempt"] == 1  # type: ignore[index]
    assert client.delete("/api/providers/worker-1", headers=KEY).status_code == 204
    requeued = client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]
    assert (requeued["status"], requeued["workerId"]) == ("queued", "worker-1")
    assert requeued["history"][-1]["reason"] == "provider removed"
    squatter = register(client)  # the same workerId, a new token
    forged = report(client, job["id"], squatter, 1, result={"forged": True})
    assert forged.status_code == 409 and forged.json()["error"] == "lease_not_held"
    leased = lease(client, "worker-1", squatter)
    assert leased is not None and leased["attempt"] == 2
    assert "leaseHolder" not in leased["job"]  # the fence is never shown
    assert report(client, job["id"], squatter, 1).status_code == 409  # the old attempt
    assert report(client, job["id"], squatter, 2).status_code == 200


def test_a_worker_holds_one_lease_at_a_time(client: TestClient) -> None:
    token = register(client)
    first, second = submit(client), submit(client)
    assert lease(client, "worker-1", token)["job"]["id"] == first["id"]  # type: ignore[index]
    again = lease(client, "worker-1", token, wait=1)
    assert again is not None and (again["job"]["id"], again["attempt"]) == (first["id"], 1)
    queued = client.get(f"/api/jobs/{second['id']}", headers=KEY).json()["job"]
    assert queued["status"] == "queued"  # left for another worker
    other = register(client, "worker-2")
    assert lease(client, "worker-2", other)["job"]["id"] == second["id"]  # type: ignore[index]
    assert report(client, first["id"], token, 1).status_code == 200
    assert lease(client, "worker-1", token) is None  # free again, and nothing is queued


def test_a_job_past_its_timeout_fails_whatever_the_heartbeats_say(make_client: Any) -> None:
    client = make_client(heartbeat_interval_s=0.2)
    token = register(client)
    job = submit(client, timeoutS=1)
    assert lease(client, "worker-1", token) is not None
    beat = {"status": "busy", "currentJobId": job["id"]}
    url = "/api/providers/worker-1/heartbeat"
    deadline = time.monotonic() + 10
    cancels: list[str] = []
    while time.monotonic() < deadline:
        cancels = client.post(url, json=beat, headers=auth(token)).json()["cancelJobIds"]
        if cancels:
            break
        time.sleep(0.05)
    assert cancels == [job["id"]]  # the worker is told to stop it
    failed = client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]
    assert (failed["status"], failed["result"]) == ("failed", {"error": "timeout"})
    assert failed["history"][-1]["workerId"] == "worker-1"
    assert failed["failedBy"] == "job"  # its own timeout: charged, and not the worker's fault
    assert time.monotonic() - deadline + 10 >= 1.2  # not before timeoutS plus an interval


GPU = {"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}


def test_a_worker_leases_as_many_jobs_as_it_runs_at_once(client: TestClient) -> None:
    token = register(client, gpus=[GPU] * 2, concurrency=2)
    two_gpus, one, other = (submit(client, requirements={"gpus": n}) for n in (2, 1, 1))
    first = lease(client, "worker-1", token)
    assert first is not None and first["job"]["id"] == two_gpus["id"]
    assert lease(client, "worker-1", token) is None  # both GPUs are taken: nothing fits
    report(client, two_gpus["id"], token, 1)
    leased = [lease(client, "worker-1", token), lease(client, "worker-1", token)]
    assert [x["job"]["id"] for x in leased if x] == [one["id"], other["id"]]
    third = submit(client, requirements={"gpus": 0})
    again = lease(client, "worker-1", token)  # full: its oldest lease is answered again
    assert again is not None and again["job"]["id"] == one["id"]
    beat = {"status": "busy", "currentJobIds": [one["id"], other["id"]]}
    answer = client.post("/api/providers/worker-1/heartbeat", json=beat, headers=auth(token))
    assert answer.status_code == 200
    shown = client.get("/api/providers/worker-1").json()["provider"]
    assert shown["currentJobIds"] == [one["id"], other["id"]]
    assert shown["currentJobId"] == one["id"]
    report(client, other["id"], token, 1)
    assert lease(client, "worker-1", token)["job"]["id"] == third["id"]  # type: ignore[index]


def test_a_long_poll_waits_for_a_job_that_fits_its_free_gpus(client: TestClient) -> None:
    token = register(client, gpus=[GPU] * 2, concurrency=2)
    held = submit(client, requirements={"gpus": 1})
    assert lease(client, "worker-1", token) is not None
    answers: list[Any] = []
    poll = threading.Thread(target=lambda: answers.append(lease(client, "worker-1", token, 2)))
    poll.start()
    time.sleep(0.3)
    submit(client, requirements={"gpus": 2})  # one GPU is free: not this one
    fits = submit(client, requirements={"gpus": 1})
    poll.join()
    assert answers[0] is not None and answers[0]["job"]["id"] == fits["id"]
    assert held["id"] != fits["id"]


@pytest.mark.parametrize(
    ("requirements", "provider", "leased"),
    [
        ({"gpus": 3}, {"gpus": [GPU] * 2, "concurrency": 2}, False),
        ({"sandbox": True}, {"sandbox": "none"}, False),
        ({"sandbox": True}, {"sandbox": "bubblewrap"}, True),
        ({"network": True}, {"sandbox": "bubblewrap"}, False),
        ({"network": True}, {"networkJobs": True}, True),
    ],
)
def test_requirements_on_gpus_sandbox_and_network(
    client: TestClient, requirements: dict[str, Any], provider: dict[str, Any], leased: bool
) -> None:
    token = register(client, **provider)
    submit(client, requirements=requirements)
    assert (lease(client, "worker-1", token) is not None) is leased


@pytest.mark.parametrize(
    "body",
    [
        {"requirements": {"gpus": -1}},
        {"requirements": {"gpus": 17}},
        {"requirements": {"gpus": "1"}},
        {"requirements": {"sandbox": "yes"}},
        {"requirements": {"network": 1}},
    ],
)
def test_bad_requirements_are_refused(client: TestClient, body: dict[str, Any]) -> None:
    body = {"type": "sleep", "payload": {"seconds": 1}, **body}
    response = client.post("/api/jobs", json=body, headers=KEY)
    assert response.status_code == 422, response.text
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 0


@pytest.mark.parametrize("kind", ["command", "python"])
def test_a_payload_timeout_is_refused_in_favour_of_the_jobs_own(
    client: TestClient, kind: str
) -> None:
    payload = {"argv": ["sleep", "20"]} if kind == "command" else {"script": "pass"}
    body = {"type": kind, "payload": {**payload, "timeoutS": 60}, "timeoutS": 3}
    answer = client.post("/api/jobs", json=body, headers=KEY)
    assert answer.status_code == 422, answer.text
    assert "its own timeoutS" in answer.json()["message"]
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 0
    del body["payload"]["timeoutS"]
    assert client.post("/api/jobs", json=body, headers=KEY).status_code == 201


def test_env_values_are_shown_only_in_the_workers_lease(client: TestClient) -> None:
    token = register(client, capabilities=["command"])
    secret = "hf_" + "s3cr3t" * 6
    payload = {"argv": ["true"], "env": {"HF_TOKEN": secret, "MODE": "fast"}}
    masked = {"HF_TOKEN": "***", "MODE": "***"}
    with client.websocket_connect("/api/events", headers=KEY) as ws:
        body = {"type": "command", "payload": payload, "requirements": {"minReputation": 0}}
        made = client.post("/api/jobs", json=body, headers=KEY)
        leased = lease(client, "worker-1", token)
        assert leased is not None and leased["job"]["payload"]["env"] == payload["env"]
        seen = [
            made.text,
            client.get("/api/jobs", headers=KEY).text,
            client.get(f"/api/jobs/{made.json()['job']['id']}", headers=KEY).text,
            client.post(f"/api/jobs/{made.json()['job']['id']}/cancel", headers=KEY).text,
            *(str(ws.receive_json()) for _ in range(3)),  # queued, assigned, cancelled
        ]
    assert made.json()["job"]["payload"]["env"] == masked
    assert all(secret not in text for text in seen), seen
    assert client.get("/api/jobs", headers=KEY).json()["jobs"][0]["payload"]["env"] == masked


@pytest.mark.parametrize(
    ("body", "extra"),
    [
        ({"status": "preempted", "result": {"reason": "paused"}}, {}),
        ({"status": "failed", "result": {"error": "no disk", "failedBy": "worker"}}, {}),
        ({"status": "completed", "result": {"ok": True}}, {"verify": "replicate"}),
    ],
    ids=["handed-back", "worker-failed", "replica"],
)
def test_a_repeated_report_that_queued_its_job_again_answers_200_and_changes_nothing(
    client: TestClient, body: dict[str, Any], extra: dict[str, Any]
) -> None:
    """A worker whose answer was lost sends its report again (its outbox does): a report
    that handed the job back, failed it by the worker's doing or was one replica of
    several was refused 409 the second time (only `reported` was known as a repeat)."""
    token = register(client)
    job = submit(client, **extra)
    assert lease(client, "worker-1", token) is not None
    first = report(client, job["id"], token, 1, **body)
    assert first.status_code == 200, first.text
    assert first.json()["job"]["status"] == "queued"
    again = report(client, job["id"], token, 1, **body)
    assert again.status_code == 200, again.text
    assert again.json()["job"]["history"] == first.json()["job"]["history"]
    other = {**body, "status": "failed" if body["status"] != "failed" else "completed"}
    assert report(client, job["id"], token, 1, **other).status_code == 409  # not a repeat
