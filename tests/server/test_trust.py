"""Trust through the HTTP API: canaries, quarantine and release, flagged results, the
hardware claim, and renters who ask for verified workers. The worker here is the test,
answering as an honest or a lying worker would."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from starlette.testclient import TestClient

from qubix_cli.qubic import identity_from_public_key
from qubix_cli.server import trust
from qubix_cli.worker.engine import expected_digest
from tests.conftest import auth, register
from tests.helpers import KEY
from tests.server.test_jobs import lease, report, submit

A40 = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}]


def worker(client: TestClient, name: str = "worker-1", **body: Any) -> str:
    return register(client, name, capabilities=["sleep", "matmul"], gpus=A40, **body)


def answer(
    leased: dict[str, Any], *, honest: bool, engine: str = "none", seconds: float = 0.01
) -> dict[str, Any]:
    payload = leased["job"]["payload"]
    digest = expected_digest(payload["seed"], payload["n"]) if honest else "0" * 64
    return {"digest": digest, "engine": engine, "computeS": seconds, "n": payload["n"]}


def provider_trust(client: TestClient, name: str = "worker-1") -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/providers/{name}").json()["provider"]["trust"]
    return found


def queued(client: TestClient) -> int:
    found: int = client.get("/api/jobs?status=queued", headers=KEY).json()["total"]
    return found


def run_canary(
    client: TestClient, token: str, name: str = "worker-1", *, honest: bool, **result: Any
) -> dict[str, Any]:
    """A canary comes instead of a renter's job: queue one if there is none."""
    if not queued(client):
        submit(client)
    leased = lease(client, name, token)
    assert leased is not None and leased["job"]["type"] == "matmul"
    assert "canary" not in leased["job"]  # a canary looks like any matmul job
    body = answer(leased, honest=honest, **result)
    assert report(client, leased["job"]["id"], token, 1, result=body).status_code == 200
    return leased


def next_renter_job(
    client: TestClient, token: str, name: str = "worker-1", **result: Any
) -> dict[str, Any]:
    """Poll as an honest worker: answer the canaries that come, return the first renter job."""
    for _ in range(200):
        leased = lease(client, name, token)
        if leased is None:
            continue
        if leased["job"]["type"] != "matmul":
            return leased
        body = answer(leased, honest=True, **result)
        report(client, leased["job"]["id"], token, 1, result=body)
    raise AssertionError("no renter job came")


def test_a_liar_is_quarantined_gets_only_canaries_and_is_released_after_a_run(
    client: TestClient,
) -> None:
    client.app.state.jobs.rng = random.Random(1)  # type: ignore[attr-defined]
    token = worker(client)
    renter = submit(client)
    run_canary(client, token, honest=True)  # a new worker's first job is a canary
    assert provider_trust(client)["canariesPassed"] == 1
    # then renters' work, and canaries now and then
    assert next_renter_job(client, token)["job"]["id"] == renter["id"]
    report(client, renter["id"], token, 1, result={"forged": True})

    failed_before = provider_trust(client)["canariesFailed"]
    for _ in range(200):  # renters' jobs until the next canary, answered wrongly
        if not queued(client):
            submit(client)
        leased = lease(client, "worker-1", token)
        assert leased is not None
        if leased["job"]["type"] == "matmul":
            break
        report(client, leased["job"]["id"], token, 1)
    assert leased["job"]["type"] == "matmul"
    waiting = client.get("/api/jobs?status=queued", headers=KEY).json()["jobs"][0]
    report(client, leased["job"]["id"], token, 1, result=answer(leased, honest=False))
    after = provider_trust(client)
    assert after["quarantined"] and after["reputation"] == 0.0
    assert after["canariesFailed"] == failed_before + 1
    flagged = client.get(f"/api/jobs/{renter['id']}", headers=KEY).json()["job"]
    assert flagged["unverified"] == "its worker failed a check after this"

    for _ in range(trust.RELEASE_STREAK):  # only canaries, one for each renter's job
        submit(client)
        leased = run_canary(client, token, honest=True)
        assert leased["job"]["id"] != waiting["id"]
    assert provider_trust(client)["quarantined"] is False
    assert next_renter_job(client, token)["job"]["id"] == waiting["id"]  # renters' jobs again


def test_a_canary_comes_only_instead_of_a_renters_job(client: TestClient) -> None:
    token = worker(client)  # new: every job it would be handed is a canary
    assert lease(client, "worker-1", token) is None  # nothing queued: nothing to check
    renter = submit(client)
    leased = lease(client, "worker-1", token)
    assert leased is not None and leased["job"]["id"] != renter["id"]
    assert leased["job"]["type"] == "matmul" and queued(client) == 1  # the renter's waits


def test_a_waiting_worker_gets_a_canary_and_the_job_goes_to_the_next(client: TestClient) -> None:
    first, second = worker(client), worker(client, "worker-2")
    got: dict[str, Any] = {}
    polls = [
        threading.Thread(target=lambda: got.update(w1=lease(client, "worker-1", first, 10))),
        threading.Thread(target=lambda: got.update(w2=lease(client, "worker-2", second, 10))),
    ]
    for poll in polls:
        poll.start()
        time.sleep(0.3)  # worker-1 has waited longest
    renter = submit(client)
    for poll in polls:
        poll.join(15)
    assert got["w1"]["job"]["type"] == "matmul" and got["w1"]["job"]["id"] != renter["id"]
    assert got["w2"]["job"]["id"] == renter["id"]  # one canary per job, not one per waiter
    body = answer(got["w1"], honest=True)
    assert report(client, got["w1"]["job"]["id"], first, 1, result=body).status_code == 200
    assert provider_trust(client)["canariesPassed"] == 1


def test_an_a40_without_a_gpu_engine_is_unverified_and_not_penalised(client: TestClient) -> None:
    token = worker(client)
    run_canary(client, token, honest=True, engine="none", seconds=0.015)
    shown = provider_trust(client)
    assert shown["claim"] == "unverified" and not shown["quarantined"]
    assert shown["reputation"] > 0


def test_a_gpu_engine_at_cpu_speed_is_a_mismatch_and_a_fast_one_verified(
    client: TestClient,
) -> None:
    token = worker(client)
    run_canary(client, token, honest=True, engine="cuda", seconds=0.013)  # plain Python speed
    assert provider_trust(client)["claim"] == "mismatch"
    other = worker(client, "worker-2")
    run_canary(client, other, "worker-2", honest=True, engine="cuda", seconds=0.00005)
    assert provider_trust(client, "worker-2")["claim"] == "verified"


def test_verified_jobs_go_only_to_verified_workers(client: TestClient) -> None:
    fast, slow = worker(client), worker(client, "worker-2")
    gpu = {"engine": "cuda", "seconds": 5e-5}
    filler = submit(client)  # each worker's first canary comes instead of it
    for name, token, result in (("worker-1", fast, gpu), ("worker-2", slow, {})):
        run_canary(client, token, name, honest=True, **result)
    client.post(f"/api/jobs/{filler['id']}/cancel", headers=KEY)
    job = submit(client, requirements={"verified": True})
    for _ in range(30):  # the unverified worker is never handed it
        got = lease(client, "worker-2", slow)
        if got is not None:
            assert got["job"]["id"] != job["id"]
            report(client, got["job"]["id"], slow, 1, result=answer(got, honest=True))
    assert next_renter_job(client, fast, **gpu)["job"]["id"] == job["id"]
    report(client, job["id"], fast, 1)
    picky = submit(client, requirements={"minReputation": 0.99})
    for _ in range(30):
        got = lease(client, "worker-1", fast)
        if got is not None:
            assert got["job"]["id"] != picky["id"]
            report(client, got["job"]["id"], fast, 1, result=answer(got, honest=True, **gpu))


def test_a_registrant_cannot_set_its_own_trust(client: TestClient) -> None:
    response = client.post(
        "/api/providers/quick-register",
        json={**_body(), "trust": {"claim": "verified", "reputation": 1.0}},
    )
    assert response.status_code == 422


def test_reregistering_keeps_the_record(client: TestClient) -> None:
    token = worker(client)
    run_canary(client, token, honest=False)
    again = client.post("/api/providers/quick-register", json=_body(), headers=auth(token))
    assert again.status_code == 200
    assert provider_trust(client)["quarantined"] is True


def _body() -> dict[str, Any]:
    from tests.helpers import register_body

    return register_body("worker-1", capabilities=["sleep", "matmul"], gpus=A40)


def test_secrets_go_only_to_workers_with_a_record_unless_the_renter_says_otherwise(
    make_client: Any,
) -> None:
    client = make_client(canaries=False)
    token = register(client, capabilities=["command"])
    secret = {"type": "command", "payload": {"argv": ["true"], "env": {"TOKEN": "s3cret"}}}
    guarded = submit(client, **secret)
    assert guarded["requirements"]["minReputation"] == 0.5  # the operator's floor
    assert lease(client, "worker-1", token) is None  # a new worker has no record
    chosen = submit(client, **secret, requirements={"minReputation": 0})
    leased = lease(client, "worker-1", token)
    assert leased is not None and leased["job"]["id"] == chosen["id"]


def replicating(make_client: Any) -> tuple[TestClient, dict[str, str]]:
    """A server that believes X-Forwarded-For from the test client, and four workers: w1,
    w2 and w3 of different addresses and networks, w4 of w1's address on another network."""
    from tests.helpers import OTHER_ADDRESS, register_body

    client = make_client(canaries=False, trusted_proxies=("testclient",))
    third = identity_from_public_key(bytes([3] * 32))
    tokens = {}
    for name, address, ip in (
        ("w1", OTHER_ADDRESS, "10.1.0.2"),
        ("w2", register_body()["qubicAddress"], "10.2.0.3"),
        ("w3", third, "10.3.0.4"),
        ("w4", OTHER_ADDRESS, "10.4.0.5"),
    ):
        body = register_body(name, qubicAddress=address, capabilities=["sleep"])
        answer = client.post(
            "/api/providers/quick-register", json=body, headers={"X-Forwarded-For": ip}
        )
        assert answer.status_code == 201, answer.text
        tokens[name] = answer.json()["workerToken"]
    return client, tokens


def run_replica(client: TestClient, name: str, token: str, result: Any) -> dict[str, Any] | None:
    leased = lease(client, name, token)
    if leased is None:
        return None
    answer = report(client, leased["job"]["id"], token, leased["attempt"], result=result)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["job"]
    return found


def test_two_honest_replicas_agree_and_the_job_completes_verified(make_client: Any) -> None:
    client, tokens = replicating(make_client)
    job = submit(client, verify="replicate")
    first = run_replica(client, "w1", tokens["w1"], {"sum": 10})
    assert first is not None and first["status"] == "queued"
    assert run_replica(client, "w1", tokens["w1"], {"sum": 10}) is None  # not twice
    assert run_replica(client, "w4", tokens["w4"], {"sum": 10}) is None  # not its address
    done = run_replica(client, "w2", tokens["w2"], {"sum": 10})
    assert done is not None and done["status"] == "completed" and done["verified"] is True
    assert done["result"] == {"sum": 10} and done["id"] == job["id"]
    assert [r["workerId"] for r in done["replicas"]] == ["w1", "w2"]
    assert "10.1.0" not in str(done["replicas"])  # an IP is never shown


def test_without_canaries_a_forger_among_three_is_outvoted_and_nobody_is_punished(
    make_client: Any,
) -> None:
    client, tokens = replicating(make_client)
    submit(client, verify="replicate")
    run_replica(client, "w1", tokens["w1"], {"sum": 10})
    disputed = run_replica(client, "w2", tokens["w2"], {"sum": 99})  # the forger
    assert disputed is not None and disputed["status"] == "queued"
    done = run_replica(client, "w3", tokens["w3"], {"sum": 10})
    assert done is not None and done["status"] == "completed" and done["verified"]
    assert done["result"] == {"sum": 10}
    # A disagreement is evidence for a check, and without canaries there is none to make.
    assert provider_trust(client, "w2")["quarantined"] is False
    assert provider_trust(client, "w2")["completed"] == 0  # nor is its run paid or counted
    assert provider_trust(client, "w3")["completed"] == 1


def test_workers_of_one_ip_never_check_each_other(make_client: Any) -> None:
    from tests.helpers import register_body

    client, tokens = replicating(make_client)
    fifth = identity_from_public_key(bytes([5] * 32))
    body = register_body("w5", qubicAddress=fifth, capabilities=["sleep"])
    same_ip = client.post(
        "/api/providers/quick-register", json=body, headers={"X-Forwarded-For": "10.1.0.2"}
    ).json()["workerToken"]
    submit(client, verify="replicate")
    run_replica(client, "w1", tokens["w1"], {"sum": 10})
    assert run_replica(client, "w5", same_ip, {"sum": 10}) is None  # w1's IP
    found = why(client, "w5")
    why_not = "are replicas that it, its address, its IP or its network ran already."
    assert f"1 of the 1 queued jobs {why_not}" in found["reasons"]


def why(client: TestClient, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/providers/{name}/diagnosis", headers=KEY).json()
    return found


def test_a_trusted_workers_replicas_are_sampled_never_below_the_floor(make_client: Any) -> None:
    client, tokens = replicating(make_client)
    app: Any = client.app
    record = {**trust.new_trust(), "passStreak": 12, "canariesPassed": 200, "completed": 800}
    worker = client.portal.call(app.state.store.get, "providers", "w1")

    async def make_trusted() -> None:
        async with app.state.store.transaction() as tx:
            tx.put("providers", {**worker, trust.TRUST: record})

    client.portal.call(make_trusted)
    assert trust.replicate_rate(record, 0.05) == 0.05  # 10 / 1000, raised to the floor
    assert trust.replicate_rate({**record, "passStreak": 9}, 0.05) == 1.0  # not yet trusted
    app.state.jobs.rng = random.Random(3)
    outcomes = []
    for _ in range(40):
        job = submit(client, verify="replicate")
        done = run_replica(client, "w1", tokens["w1"], {"sum": 10})
        assert done is not None and done["id"] == job["id"]
        outcomes.append(done["status"])
        if done["status"] == "queued":  # sampled: a second worker checks it
            checked = run_replica(client, "w2", tokens["w2"], {"sum": 10})
            assert checked is not None and checked["verified"] is True
        else:
            assert done["verified"] is False  # taken at a trusted worker's word
    sampled = outcomes.count("queued")
    assert 1 <= sampled <= 8  # about 5 % of 40, the floor


def test_a_worker_that_found_an_engine_but_ran_without_one_is_a_mismatch(
    client: TestClient,
) -> None:
    token = worker(client, gpuEngine="cuda")
    run_canary(client, token, honest=True, engine="none", seconds=0.015)
    assert provider_trust(client)["claim"] == "mismatch"
    bad = client.post(
        "/api/providers/quick-register", json={**_body(), "workerId": "w9", "gpuEngine": "tpu"}
    )
    assert bad.status_code == 422


def test_hand_backs_past_the_operators_share_count_as_failures() -> None:
    record = trust.new_trust()
    record = trust.after_preemption(record, 0.2)  # the first is free
    assert (record["preempted"], record["failed"]) == (1, 0)
    for _ in range(8):
        record = trust.after_job(record, "completed")
    record = trust.after_preemption(record, 0.2)  # 2 of 10 given: within the share
    assert (record["preempted"], record["failed"]) == (2, 0)
    record = trust.after_preemption(record, 0.2)  # 3 of 11: past it
    assert (record["preempted"], record["failed"]) == (3, 1)
    assert record["reputation"] < trust.after_job(record, "completed")["reputation"]


def test_a_job_handed_back_twice_waits_for_a_worker_that_is_not_idle_only(
    make_client: Any,
) -> None:
    client = make_client(canaries=False, preempt_share=1.0)
    idle = register(client, "idle-1", capabilities=["sleep"], idleOnly=True)
    steady = register(client, "steady-1", capabilities=["sleep"])
    assert client.get("/api/providers/idle-1").json()["provider"]["idleOnly"] is True
    job = submit(client)
    for _ in range(2):
        leased = lease(client, "idle-1", idle)
        assert leased is not None and leased["job"]["id"] == job["id"]
        handed = {"status": "preempted", "result": {"reason": "the computer is in use"}}
        assert (
            report(client, job["id"], idle, leased["job"]["attempt"], **handed).status_code == 200
        )
    shown = client.get(f"/api/jobs/{job['id']}", headers=KEY).json()["job"]
    assert shown["status"] == "queued" and shown["preemptions"] == 2
    assert lease(client, "idle-1", idle) is None  # a third hand-back is likely: not to it
    why = client.get("/api/providers/idle-1/diagnosis", headers=auth(idle)).json()
    assert any("not idle-only" in reason for reason in why["reasons"]), why
    leased = lease(client, "steady-1", steady)
    assert leased is not None and leased["job"]["id"] == job["id"]
    assert provider_trust(client, "idle-1")["failed"] == 0  # within the share: no failure
