"""Canaries cannot be farmed nor told apart: one per renter's job a worker would be handed
(pinned or not), a ceiling per worker per hour, and leases of the same shapes as renters'."""

from __future__ import annotations

import random
from typing import Any

from starlette.testclient import TestClient

from qubix_cli.server import trust
from tests.server.test_jobs import lease, report, submit
from tests.server.test_trust import answer, provider_trust, worker
from tests.server.test_verdicts import is_canary


def matmul(client: TestClient, rng: random.Random, **fields: Any) -> dict[str, Any]:
    payload = {"seed": rng.randrange(2**32), "n": rng.choice([8, 16, 32, 64])}
    return submit(client, type="matmul", payload=payload, **fields)


def test_a_job_pinned_to_its_own_worker_brings_it_one_canary(client: TestClient) -> None:
    token = worker(client)
    job = matmul(client, random.Random(1), providerId="worker-1")
    handed = []
    for _ in range(40):
        leased = lease(client, "worker-1", token)
        if leased is None:
            break
        handed.append(leased["job"]["id"])
        body = answer(leased, honest=True)
        report(client, leased["job"]["id"], token, leased["attempt"], result=body)
    assert handed[1:] == [job["id"]]  # a canary, then the job itself, then nothing
    assert provider_trust(client)["canariesPassed"] == 1


def test_a_quarantined_worker_gets_one_canary_a_job_and_a_ceiling_an_hour(
    client: TestClient,
) -> None:
    token = worker(client)
    rng = random.Random(2)
    for _ in range(trust.CANARIES_PER_HOUR + 10):
        matmul(client, rng)
    canaries = 0
    for _ in range(3 * trust.CANARIES_PER_HOUR):
        leased = lease(client, "worker-1", token)
        if leased is None:
            break
        assert is_canary(client, leased["job"]["id"])  # it forges them all: quarantined
        canaries += 1
        body = answer(leased, honest=False)
        report(client, leased["job"]["id"], token, leased["attempt"], result=body)
    assert canaries == trust.CANARIES_PER_HOUR
    assert provider_trust(client)["quarantined"] is True


def shape(value: Any) -> Any:
    """What a value looks like, less the value: types, and the keys of objects."""
    if isinstance(value, dict):
        return tuple(sorted((k, shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(sorted({repr(shape(v)) for v in value})))
    return type(value).__name__


def test_canary_leases_look_like_renters_pinned_or_not(make_client: Any) -> None:
    client = make_client()
    client.app.state.jobs.rng = random.Random(3)
    rng = random.Random(4)
    tokens = {f"w{i}": worker(client, f"w{i}") for i in range(5)}
    seen: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    while min(len(seen[True]), len(seen[False])) < 100:
        for name, token in tokens.items():
            pinned = {"providerId": name} if rng.random() < 0.5 else {}
            matmul(client, rng, timeoutS=rng.choice([60, 600, 3600]), **pinned)
            for _ in range(2):  # a canary instead, then the job; or the job at once
                leased = lease(client, name, token)
                if leased is None:
                    break
                seen[is_canary(client, leased["job"]["id"])].append(leased)
                body = answer(leased, honest=True)
                report(client, leased["job"]["id"], token, leased["attempt"], result=body)
    canaries, renters = seen[True][:100], seen[False][:100]
    assert {shape(c) for c in canaries} == {shape(r) for r in renters}
    assert {c["job"]["timeoutS"] for c in canaries} <= {60, 600, 3600}
    assert all("createdAt" not in c["job"] and "account" not in c["job"] for c in canaries)
