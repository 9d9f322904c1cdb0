"""Whose failure a failed run is (server/failures.py): what it costs the renter, whether the
job runs again, and what it does to the worker's record (docs/billing.md, docs/trust.md)."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from qubix_cli.server import failures
from tests.conftest import auth
from tests.helpers import API_KEY, KEY
from tests.server.conftest import Clock
from tests.server.test_accounts import account, balance, credit, priced_worker, submit
from tests.server.test_jobs import lease, report
from tests.server.test_trust import provider_trust, replicating

OWN_EXIT = {"exitCode": 3, "stdoutTail": "", "stderrTail": "", "failedBy": "job"}
PRICED = {"requirements": {"maxPricePerHour": 10}, "timeoutS": 3600}


def shown(client: TestClient, job_id: str, key: str = API_KEY) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=auth(key)).json()["job"]
    return found


def charges(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    entries = client.get(f"/api/ledger?jobId={job_id}", headers=KEY).json()["entries"]
    return [e for e in entries if e["kind"] == "charge"]


def renter_and_worker(client: TestClient, price: float) -> tuple[str, str]:
    """Alice's key, with 100 on her balance, and the token of `worker-1` asking `price`."""
    alice = account(client, "alice")
    credit(client, "alice", 100)
    return alice, priced_worker(client, "worker-1", price)


def expire(client: TestClient) -> None:
    client.portal.call(client.app.state.jobs.expire_leases)  # type: ignore[attr-defined]


def test_a_job_that_failed_by_its_own_doing_is_charged_like_a_completed_one(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice, token = renter_and_worker(client, 10.0)
    job = submit(client, alice, **PRICED).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 900
    assert report(client, job["id"], token, 1, status="failed", result=OWN_EXIT).status_code == 200
    ended = shown(client, job["id"], alice)
    assert (ended["status"], ended["failedBy"], ended["cost"]) == ("failed", "job", 2.5)
    assert [(c["seconds"], c["amount"]) for c in charges(client, job["id"])] == [(900.0, 2.5)]
    assert (balance(client, "alice")["balance"], balance(client, "alice")["held"]) == (97.5, 0.0)


def test_a_failure_of_the_workers_is_free_and_runs_again_until_max_attempts(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice, token = renter_and_worker(client, 10.0)
    job = submit(client, alice, **PRICED, maxAttempts=2).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 600
    refused = {"error": "input 'data.bin': it could not be fetched", "failedBy": "worker"}
    assert report(client, job["id"], token, 1, status="failed", result=refused).status_code == 200
    again = shown(client, job["id"], alice)
    assert (again["status"], again["attempt"], again.get("failedBy")) == ("queued", 1, None)
    assert again["history"][-1]["event"] == "worker_failed"
    assert again["history"][-1]["error"] == refused["error"]
    assert lease(client, "worker-1", token)["attempt"] == 2  # type: ignore[index]
    clock.now += 600
    old_worker = {"error": "boom"}  # a worker too old to say, and no program ran: its own
    reported = report(client, job["id"], token, 2, status="failed", result=old_worker)
    assert reported.status_code == 200
    ended = shown(client, job["id"], alice)
    assert (ended["status"], ended["failedBy"], ended["cost"]) == ("failed", "worker", 0.0)
    assert ended["result"] == old_worker
    assert charges(client, job["id"]) == []
    assert (balance(client, "alice")["balance"], balance(client, "alice")["held"]) == (100.0, 0.0)


def test_a_job_that_ran_past_its_timeout_is_charged_for_its_timeout(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice, token = renter_and_worker(client, 36.0)
    job = submit(client, alice, requirements={"maxPricePerHour": 36}, timeoutS=60).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 100  # past its 60 s and a heartbeat interval, whatever the heartbeats say
    expire(client)
    ended = shown(client, job["id"], alice)
    assert (ended["status"], ended["failedBy"], ended["result"]) == (
        "failed",
        "job",
        {"error": "timeout"},
    )
    assert [(c["seconds"], c["amount"]) for c in charges(client, job["id"])] == [(60.0, 0.6)]


def test_a_lost_lease_ends_failed_by_the_worker_for_free_after_max_attempts(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice, token = renter_and_worker(client, 10.0)
    job = submit(client, alice, **PRICED, maxAttempts=1).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 200  # its lease (3 intervals) expires long before its timeout
    expire(client)
    ended = shown(client, job["id"], alice)
    assert (ended["status"], ended["failedBy"], ended["cost"]) == ("failed", "worker", 0.0)


def test_what_an_old_worker_does_not_say_is_told_by_whether_its_program_ran() -> None:
    assert failures.failed_by({"exitCode": 1, "stdoutTail": ""}) == "job"
    assert failures.failed_by({"error": "cannot start 'x'"}) == "worker"
    assert failures.failed_by(None) == "worker"
    assert failures.failed_by({"exitCode": 1, "failedBy": "worker"}) == "worker"  # it said so
    assert failures.failed_by({"failedBy": "job"}) == "job"
    assert failures.failed_by({"exitCode": 2, "failedBy": "the renter"}) == "job"  # not a kind


def test_a_renters_failures_leave_the_workers_record_as_it_was(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice, token = renter_and_worker(client, 0.0)
    for _ in range(3):
        job = submit(client, alice).json()["job"]
        lease(client, "worker-1", token)
        report(client, job["id"], token, 1)
    before = provider_trust(client)
    own_timeout = {**OWN_EXIT, "exitCode": -9, "error": "timed out after 3 s"}
    bad_input = {"error": "input 'x': it answered 404", "failedBy": "worker"}
    for result in (OWN_EXIT, own_timeout, bad_input):
        job = submit(client, alice, timeoutS=3, maxAttempts=1).json()["job"]
        lease(client, "worker-1", token)
        reported = report(client, job["id"], token, 1, status="failed", result=result)
        assert reported.status_code == 200
    job = submit(client, alice, timeoutS=3).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 40  # its own timeout, seen by the server
    expire(client)
    after = provider_trust(client)
    counted = ("completed", "failed", "lost", "reputation")
    assert [after[k] for k in counted] == [before[k] for k in counted] == [3, 0, 0, 0.375]
    assert shown(client, job["id"])["failedBy"] == "job"
    # What the worker did counts: a lease it lost.
    job = submit(client, alice).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 200
    expire(client)
    lost = provider_trust(client)
    assert (lost["lost"], lost["failed"]) == (1, 0) and lost["reputation"] < 0.375


def test_replicas_that_agree_on_the_jobs_own_failure_are_charged_and_not_counted(
    make_client: Any,
) -> None:
    client, tokens = replicating(make_client)
    job = submit(client, API_KEY, verify="replicate").json()["job"]
    first = run_replica_failing(client, "w1", tokens["w1"])
    assert first is not None and first["status"] == "queued"
    done = run_replica_failing(client, "w2", tokens["w2"])
    assert done is not None and (done["status"], done["failedBy"]) == ("failed", "job")
    assert done["verified"] is True
    assert [c["workerId"] for c in charges(client, job["id"])] == ["w1", "w2"]
    for name in ("w1", "w2"):
        assert provider_trust(client, name)["failed"] == 0


def run_replica_failing(client: TestClient, name: str, token: str) -> dict[str, Any] | None:
    leased = lease(client, name, token)
    assert leased is not None
    body = {"status": "failed", "result": OWN_EXIT}
    answer = report(client, leased["job"]["id"], token, leased["attempt"], **body)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["job"]
    return found
