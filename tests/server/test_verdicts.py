"""Replicated jobs through the HTTP API: what a replica's lease shows, where replicas go,
and how disagreements are settled (checks, then one more run, then `disputed`). The
workers here are the test, answering as honest, lazy or colluding workers would."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.qubic import identity_from_public_key
from qubix_cli.server import trust, verdicts
from tests.helpers import KEY, register_body
from tests.server.test_jobs import lease, report, submit
from tests.server.test_trust import answer, provider_trust, run_replica

LEASE_FIELDS = ("id", "type", "payload", "inputs", "timeoutS", "attempt", "pricePerHour")
LEASE_FIELDS += ("requirements",)
WORKERS = {  # name: client IP; each of its own address, each on a network of its own
    "victim": "10.1.0.2",
    "colluder-a": "10.2.0.2",
    "colluder-b": "10.3.0.2",
    "honest-1": "10.4.0.2",
    "honest-2": "10.5.0.2",
    "neighbour": "10.1.0.77",  # the victim's /24
}


def fleet(make_client: Any, **settings: Any) -> tuple[TestClient, dict[str, str]]:
    """A server that believes X-Forwarded-For from the test client, and the workers of
    `WORKERS`, which run `sleep` and `matmul` (so canaries can check them)."""
    client = make_client(trusted_proxies=("testclient",), **settings)
    tokens = {}
    for i, (name, ip) in enumerate(WORKERS.items()):
        address = identity_from_public_key(bytes([i + 10] * 32))
        body = register_body(name, qubicAddress=address, capabilities=["sleep", "matmul"])
        answered = client.post(
            "/api/providers/quick-register", json=body, headers={"X-Forwarded-For": ip}
        )
        assert answered.status_code == 201, answered.text
        tokens[name] = answered.json()["workerToken"]
    return client, tokens


def is_canary(client: TestClient, job_id: str) -> bool:
    """Only the test looks in the store: nothing that a worker sees tells it."""
    app: Any = client.app
    stored = client.portal.call(app.state.store.get, "jobs", job_id)
    return trust.CANARY in stored


def onboard(client: TestClient, tokens: dict[str, str]) -> None:
    """Each worker passes its first canary (it comes instead of a job pinned to it)."""
    for name, token in tokens.items():
        filler = submit(client, type="sleep", payload={"seconds": 0}, providerId=name)
        leased = lease(client, name, token)
        assert leased is not None and is_canary(client, leased["job"]["id"])
        body = answer(leased, honest=True)
        report(client, leased["job"]["id"], token, leased["attempt"], result=body)
        client.post(f"/api/jobs/{filler['id']}/cancel", headers=KEY)
        assert provider_trust(client, name)["canariesPassed"] == 1


def serve(
    client: TestClient, name: str, token: str, job_id: str, result: Any
) -> dict[str, Any] | None:
    """Poll as a worker would until it is handed `job_id` (None if it is not): answer the
    canaries that come first, then report `result`."""
    for _ in range(100):
        leased = lease(client, name, token)
        if leased is None:
            return None
        if leased["job"]["id"] == job_id:
            answered = report(client, job_id, token, leased["attempt"], result=result)
            assert answered.status_code == 200, answered.text
            found: dict[str, Any] = answered.json()["job"]
            return found
        body = answer(leased, honest=True)
        report(client, leased["job"]["id"], token, leased["attempt"], result=body)
    raise AssertionError(f"{name} was never handed {job_id}")


def check(client: TestClient, name: str, token: str, *, honest: bool) -> None:
    """The worker polls: it is owed a check, and answers the canary that comes."""
    leased = lease(client, name, token)
    assert leased is not None and is_canary(client, leased["job"]["id"])
    body = answer(leased, honest=honest)
    report(client, leased["job"]["id"], token, leased["attempt"], result=body)


def job_of(client: TestClient, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=KEY).json()["job"]
    return found


def test_a_replicas_lease_shows_nothing_of_another_run(make_client: Any) -> None:
    client, tokens = fleet(make_client, canaries=False)
    job = submit(client, verify="replicate", payload={"seconds": 0})
    first = run_replica(client, "victim", tokens["victim"], {"sum": 4242})
    assert first is not None and first["status"] == "queued" and first["replicas"]
    digest = first["replicas"][0]["digest"]
    leased = lease(client, "honest-1", tokens["honest-1"])
    assert leased is not None and leased["job"]["id"] == job["id"]
    shown = set(leased["job"])
    assert shown <= {*LEASE_FIELDS, "leaseExpiresAt"}, shown
    text = str(leased)
    assert "4242" not in text and digest not in text  # nothing of the other run
    assert "victim" not in text and "createdAt" not in text and "history" not in text


@pytest.mark.parametrize(("prefix", "handed"), [((24, 48), False), ((32, 128), True)])
def test_replicas_come_from_different_networks_unless_the_operator_says_otherwise(
    make_client: Any, prefix: tuple[int, int], handed: bool
) -> None:
    lab = {"replica_prefix": prefix} if prefix != (24, 48) else {}  # else the default
    client, tokens = fleet(make_client, canaries=False, **lab)
    job = submit(client, verify="replicate")
    run_replica(client, "victim", tokens["victim"], {"sum": 1})
    leased = lease(client, "neighbour", tokens["neighbour"])  # the victim's /24
    assert (leased is not None and leased["job"]["id"] == job["id"]) is handed


def test_two_colluders_cannot_smear_an_honest_worker(make_client: Any) -> None:
    """The colluders forge one answer, and then the checks that their disagreement with
    the victim brings: they are caught, and an honest worker's run settles the job."""
    client, tokens = fleet(make_client)
    onboard(client, tokens)
    forged, true = {"sum": 666}, {"sum": 10}
    job = submit(client, verify="replicate", payload={"seconds": 0})["id"]
    assert serve(client, "victim", tokens["victim"], job, true)
    assert serve(client, "colluder-a", tokens["colluder-a"], job, forged)
    assert job_of(client, job)["status"] == "queued"
    assert lease(client, "colluder-b", tokens["colluder-b"]) is None  # checks come first
    check(client, "victim", tokens["victim"], honest=True)
    check(client, "colluder-a", tokens["colluder-a"], honest=False)
    assert provider_trust(client, "colluder-a")["quarantined"] is True
    assert serve(client, "colluder-b", tokens["colluder-b"], job, forged)
    check(client, "colluder-b", tokens["colluder-b"], honest=False)
    assert provider_trust(client, "colluder-b")["quarantined"] is True
    assert serve(client, "honest-1", tokens["honest-1"], job, true)
    assert job_of(client, job)["status"] == "queued"  # it disagrees with colluder-b's run
    check(client, "honest-1", tokens["honest-1"], honest=True)
    done = job_of(client, job)
    assert done["status"] == "completed" and done["verified"] is True
    assert done["result"] == true
    victim = provider_trust(client, "victim")
    assert not victim["quarantined"] and victim["canariesFailed"] == 0
    assert victim["reputation"] > 0


def test_colluders_that_pass_their_checks_still_punish_nobody(make_client: Any) -> None:
    """Colluders that answer every canary honestly outvote the victim 2 to 1, but a
    disagreement is no verdict: the victim keeps its record, and nothing it did is refunded."""
    client, tokens = fleet(make_client)
    onboard(client, tokens)
    earlier = submit(client, type="sleep", payload={"seconds": 0}, providerId="victim")["id"]
    assert serve(client, "victim", tokens["victim"], earlier, {"ok": 1})
    job = submit(client, verify="replicate", payload={"seconds": 0})["id"]
    assert serve(client, "victim", tokens["victim"], job, {"sum": 10})
    assert serve(client, "colluder-a", tokens["colluder-a"], job, {"sum": 666})
    for name in ("victim", "colluder-a"):
        check(client, name, tokens[name], honest=True)
    assert serve(client, "colluder-b", tokens["colluder-b"], job, {"sum": 666})
    check(client, "colluder-b", tokens["colluder-b"], honest=True)
    assert job_of(client, job)["status"] == "completed"
    victim = provider_trust(client, "victim")
    assert not victim["quarantined"] and victim["canariesFailed"] == 0
    assert "unverified" not in job_of(client, earlier)  # not flagged, not refunded


def test_five_runs_without_a_majority_end_disputed_and_cost_nothing(make_client: Any) -> None:
    client, tokens = fleet(make_client, canaries=False)
    job = submit(client, verify="replicate", payload={"seconds": 0})["id"]
    names = [n for n in WORKERS if n != "neighbour"]
    for i, name in enumerate(names):
        found = run_replica(client, name, tokens[name], {"sum": i})
        assert found is not None
        assert found["status"] == ("queued" if i < verdicts.MAX_RUNS - 1 else "failed")
    done = job_of(client, job)
    assert done["result"] == {"error": "disputed"} and done.get("cost", 0) == 0
    assert len(done["replicas"]) == verdicts.MAX_RUNS
    for name in names:
        assert provider_trust(client, name)["quarantined"] is False


def test_with_canaries_agreement_counts_only_from_workers_that_passed_one() -> None:
    worker = {"workerId": "w", "capabilities": ["matmul"], trust.TRUST: trust.new_trust()}
    checked = {**worker, trust.TRUST: {**trust.new_trust(), "lastPassedAt": 1.0}}
    runs = [{"workerId": w, "digest": "x"} for w in ("a", "b")]
    job = {"replicas": runs}
    never = verdicts.decide(job, {"a": worker, "b": checked}, canaries=True)
    assert never.outcome == "more" and never.owe == ("a",)  # a owes a canary first
    both = verdicts.decide(job, {"a": checked, "b": checked}, canaries=True)
    assert both.outcome == "verified" and both.agreed == ("a", "b")
    assert verdicts.decide(job, {"a": worker, "b": worker}, canaries=False).outcome == "verified"
