"""Accounts and keys: who may call what (a matrix over every endpoint), renters kept
apart, revocation, quotas, budgets and holds, prices, fair shares and the ledger."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.accounts import totals
from qubix_cli.server.app import create_app
from qubix_cli.server.routes import ENDPOINTS
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS, auth, register
from tests.helpers import API_KEY, KEY, register_body
from tests.server.conftest import Clock
from tests.server.test_jobs import lease, report


def account(client: TestClient, name: str, role: str = "renter") -> str:
    """Create an account; return its first key."""
    answer = client.post("/api/accounts", json={"name": name, "role": role}, headers=KEY)
    assert answer.status_code == 201, answer.text
    key: str = answer.json()["apiKey"]
    return key


def submit(client: TestClient, key: str, **body: Any) -> Any:
    """Submit a job; unless it says otherwise, one for free workers only (nothing held)."""
    body = {
        "type": "sleep",
        "payload": {"seconds": 0.1},
        "requirements": {"maxPricePerHour": 0},
        **body,
    }
    return client.post("/api/jobs", json=body, headers=auth(key))


def credit(client: TestClient, name: str, amount: float) -> dict[str, Any]:
    answer = client.post(f"/api/accounts/{name}/credit", json={"amount": amount}, headers=KEY)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["account"]
    return found


def balance(client: TestClient, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/accounts/{name}", headers=KEY).json()["account"]
    return found


# -- the matrix -------------------------------------------------------------------------


def world(client: TestClient) -> dict[str, Any]:
    """Two renters with a job each (A's is leased to worker-1), an operator, a worker."""
    w: dict[str, Any] = {"worker": register(client, capabilities=["sleep"])}
    w["alice"], w["bob"] = account(client, "alice"), account(client, "bob")
    w["operator"] = API_KEY
    w["job"] = submit(client, w["alice"]).json()["job"]
    w["bobs"] = submit(client, w["bob"]).json()["job"]
    leased = lease(client, "worker-1", w["worker"])
    assert leased is not None and leased["job"]["id"] == w["job"]["id"]
    keys = client.get("/api/keys", headers=auth(w["bob"])).json()["keys"]
    w["bobKeyId"] = keys[0]["id"]
    return w


def request(client: TestClient, w: dict[str, Any], handler: str, key: str | None) -> int:
    """Call one endpoint as the holder of `key` (None: no key), on alice's job."""
    job, headers = w["job"]["id"], auth(key) if key else {}
    calls: dict[str, tuple[str, str, Any]] = {
        "heartbeats": ("POST", "/api/providers/worker-1/heartbeat", {"status": "online"}),
        "pending_job": ("GET", "/api/jobs/pending/worker-1", None),
        "healthz": ("GET", "/healthz", None),
        "quick_register": ("POST", "/api/providers/quick-register", register_body("w-new")),
        "check_new": ("GET", "/api/providers/check-new", None),
        "list_providers": ("GET", "/api/providers", None),
        "get_provider": ("GET", "/api/providers/worker-1", None),
        "diagnosis": ("GET", "/api/providers/worker-1/diagnosis", None),
        "delete_provider": ("DELETE", "/api/providers/nobody", None),
        "submit_job": ("POST", "/api/jobs", {"type": "sleep", "payload": {"seconds": 0}}),
        "list_jobs": ("GET", "/api/jobs", None),
        "get_job": ("GET", f"/api/jobs/{job}", None),
        "cancel_job": ("POST", f"/api/jobs/{w['bobs']['id']}/cancel", None),
        "complete_job": (
            "POST",
            f"/api/jobs/{job}/complete",
            {"attempt": 9, "status": "completed"},
        ),
        "upload_input": ("POST", "/api/inputs", b"data"),
        "job_input": ("GET", f"/api/jobs/{job}/inputs/data.txt", None),
        "put_artifact": ("PUT", f"/api/jobs/{job}/artifacts/out.txt?attempt=9", b"x"),
        "get_artifact": ("GET", f"/api/jobs/{job}/artifacts/out.txt", None),
        "post_log": ("POST", f"/api/jobs/{job}/logs", {"attempt": 9, "seq": 0, "text": "x"}),
        "get_logs": ("GET", f"/api/jobs/{job}/logs", None),
        "my_account": ("GET", "/api/account", None),
        "create_account": ("POST", "/api/accounts", {"name": "carol"}),
        "list_accounts": ("GET", "/api/accounts", None),
        "get_account": ("GET", "/api/accounts/alice", None),
        "set_quota": ("POST", "/api/accounts/alice/quota", {"maxQueued": 5}),
        "credit_account": ("POST", "/api/accounts/alice/credit", {"amount": 1}),
        "create_key": ("POST", "/api/keys", {"account": "alice"}),
        "list_keys": ("GET", "/api/keys", None),
        "revoke_key": ("DELETE", f"/api/keys/{w['bobKeyId']}", None),  # bob's key
        "ledger": ("GET", "/api/ledger", None),
        "metrics_text": ("GET", "/metrics", None),
        "worker_jobs": ("GET", "/api/providers/worker-1/jobs", None),
        "worker_update": ("GET", "/api/worker/qubix_worker.pyz", None),
        "earnings": ("GET", f"/api/earnings/{register_body()['qubicAddress']}", None),
        "installer": ("GET", "/api/installer/linux", None),
    }
    method, path, body = calls[handler]
    if isinstance(body, bytes):
        answer = client.request(method, path, content=body, headers=headers)
    else:
        answer = client.request(method, path, json=body, headers=headers)
    return answer.status_code


# What each caller gets from each endpoint (on alice's job, where it names one): "ok" is
# any answer that is not 401, 403 or 404 (the endpoint did its work or refused the input).
# Columns: no key, the worker's token, alice (whose job it is), bob (another renter),
# the operator.
MATRIX: dict[str, tuple[object, object, object, object, object]] = {
    "heartbeats": (401, "ok", 403, 403, 403),
    "pending_job": (401, "ok", 403, 403, 403),
    "healthz": ("ok", "ok", "ok", "ok", "ok"),
    "quick_register": ("ok", "ok", "ok", "ok", "ok"),
    "check_new": ("ok", "ok", "ok", "ok", "ok"),
    "list_providers": ("ok", "ok", "ok", "ok", "ok"),
    "get_provider": ("ok", "ok", "ok", "ok", "ok"),
    "diagnosis": (401, "ok", 403, 403, "ok"),
    "delete_provider": (401, 404, 403, 403, 404),
    "submit_job": (401, 401, "ok", "ok", "ok"),
    "list_jobs": (401, 401, "ok", "ok", "ok"),
    "get_job": (401, 401, "ok", 404, "ok"),
    "cancel_job": (401, 401, 404, "ok", "ok"),  # bob's job: alice may not cancel it
    "complete_job": (401, "ok", 401, 401, 401),
    "upload_input": (401, 401, "ok", "ok", "ok"),
    "job_input": (401, 404, 401, 401, 401),
    "put_artifact": (401, "ok", 401, 401, 401),
    "get_artifact": (401, 401, 404, 404, 404),
    "post_log": (401, "ok", 401, 401, 401),
    "get_logs": (401, 401, "ok", 404, "ok"),
    "my_account": (401, 401, "ok", "ok", "ok"),
    "create_account": (401, 401, 403, 403, "ok"),
    "list_accounts": (401, 401, 403, 403, "ok"),
    "get_account": (401, 401, "ok", 404, "ok"),
    "set_quota": (401, 401, 403, 403, "ok"),
    "credit_account": (401, 401, 403, 403, "ok"),
    "create_key": (401, 401, "ok", 404, "ok"),
    "list_keys": (401, 401, "ok", "ok", "ok"),
    "revoke_key": (401, 401, 404, "ok", "ok"),  # alice may not revoke bob's key
    "ledger": (401, 401, "ok", "ok", "ok"),
    "earnings": ("ok", "ok", "ok", "ok", "ok"),
    "metrics_text": (401, 401, 403, 403, "ok"),
    "worker_jobs": ("ok", "ok", "ok", "ok", "ok"),
    "worker_update": ("ok", "ok", "ok", "ok", "ok"),
    "installer": ("ok", "ok", "ok", "ok", "ok"),
}


def test_the_matrix_covers_every_endpoint() -> None:
    assert set(MATRIX) == {e.handler for e in ENDPOINTS}


@pytest.mark.parametrize("handler", sorted(MATRIX))
def test_who_may_call_what(client: TestClient, handler: str) -> None:
    w = world(client)
    callers = (None, w["worker"], w["alice"], w["bob"], w["operator"])
    got = []
    for key in callers:
        status = request(client, w, handler, key)
        got.append(status if status in (401, 403, 404) else "ok")
    assert tuple(got) == MATRIX[handler]


# -- renters kept apart ---------------------------------------------------------------


def job_events(socket: Any, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < count:
        event = socket.receive_json()
        if event["type"].startswith("JOB_"):
            found.append(event["data"])
    return found


def test_two_renters_each_see_exactly_their_own(app_client: TestClient) -> None:
    client = app_client
    alice, bob = account(client, "alice"), account(client, "bob")
    with (
        client.websocket_connect("/api/events", headers=auth(alice)) as alices,
        client.websocket_connect("/api/events", headers=auth(bob)) as bobs,
    ):
        results: dict[str, Any] = {}
        threads = [
            threading.Thread(target=lambda: results.update(a=submit(client, alice))),
            threading.Thread(target=lambda: results.update(b=submit(client, bob))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        mine, theirs = results["a"].json()["job"], results["b"].json()["job"]
        later = submit(client, alice).json()["job"]  # after bob's, in alice's stream
        assert [e["id"] for e in job_events(alices, 2)] == [mine["id"], later["id"]]
        assert [e["id"] for e in job_events(bobs, 1)] == [theirs["id"]]

    listed = client.get("/api/jobs", headers=auth(alice)).json()
    assert {j["id"] for j in listed["jobs"]} == {mine["id"], later["id"]}
    assert listed["total"] == 2
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 3  # the operator: all
    for path in (
        f"/api/jobs/{theirs['id']}",
        f"/api/jobs/{theirs['id']}/logs",
        f"/api/jobs/{theirs['id']}/artifacts/out.txt",
    ):
        refused = client.get(path, headers=auth(alice))
        assert refused.status_code == 404
        assert refused.json() == {
            "error": "not_found",
            "message": f"job {theirs['id']!r} does not exist",
        }
    cancel = client.post(f"/api/jobs/{theirs['id']}/cancel", headers=auth(alice))
    assert cancel.status_code == 404
    assert client.get(f"/api/jobs/{theirs['id']}", headers=auth(bob)).json()["job"]["status"] == (
        "queued"
    )  # unchanged


def test_a_revoked_key_is_refused_by_the_next_request(app_client: TestClient) -> None:
    client = app_client
    alice = account(client, "alice")
    second = client.post("/api/keys", json={"name": "ci"}, headers=auth(alice)).json()
    assert second["apiKey"].startswith("qbx_") and len(second["apiKey"]) >= 4 + 22
    assert second["key"]["id"] == second["apiKey"][:12]
    assert client.get("/api/account", headers=auth(second["apiKey"])).status_code == 200
    listed = client.get("/api/keys", headers=auth(alice)).json()["keys"]
    assert [k["name"] for k in listed] == ["first", "ci"]
    assert "hash" not in str(listed) and second["apiKey"] not in str(listed)
    assert listed[1]["lastUsedAt"] is not None  # just used
    gone = client.delete(f"/api/keys/{second['key']['id']}", headers=auth(alice))
    assert gone.status_code == 200 and gone.json()["key"]["revokedAt"] is not None
    refused = client.get("/api/account", headers=auth(second["apiKey"]))
    assert refused.status_code == 401
    assert client.get("/api/account", headers=auth(alice)).status_code == 200  # the other


def test_a_renter_cannot_revoke_anothers_key_nor_make_keys_for_it(app_client: TestClient) -> None:
    client = app_client
    alice, bob = account(client, "alice"), account(client, "bob")
    bobs_id = client.get("/api/keys", headers=auth(bob)).json()["keys"][0]["id"]
    assert client.delete(f"/api/keys/{bobs_id}", headers=auth(alice)).status_code == 404
    made = client.post("/api/keys", json={"account": "bob"}, headers=auth(alice))
    assert made.status_code == 404
    assert client.get("/api/account", headers=auth(bob)).status_code == 200


def test_the_start_key_is_the_first_operators_and_a_revoked_one_stays_refused(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, **NO_LIMITS)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        me = client.get("/api/account", headers=KEY).json()["account"]
        assert (me["name"], me["role"]) == ("operator", "operator")
        spare = client.post("/api/keys", json={"name": "spare"}, headers=KEY).json()["apiKey"]
        assert client.delete(f"/api/keys/{API_KEY[:12]}", headers=auth(spare)).status_code == 200
        assert client.get("/api/account", headers=KEY).status_code == 401
    with TestClient(create_app(settings)) as client:  # started again with the same key
        assert client.get("/api/account", headers=KEY).status_code == 401
        assert client.get("/api/account", headers=auth(spare)).status_code == 200


def test_chosen_keys_that_begin_alike_keep_their_own_records_and_a_whole_key_revokes_itself(
    tmp_path: Path,
) -> None:
    """Two keys an operator chose, alike in their first 12 characters: the second start's
    key does not take the record of the first, and revoking a whole key revokes that key,
    not whichever has its first characters as id."""
    first, second = "qbx-operator-key-" + "a" * 30, "qbx-operator-NEW-" + "b" * 30
    data = tmp_path / "data"
    with TestClient(create_app(Settings(data_dir=data, api_key=first, **NO_LIMITS))) as client:  # type: ignore[arg-type]
        spare = client.post("/api/keys", json={"name": "spare"}, headers=auth(first)).json()
    with TestClient(create_app(Settings(data_dir=data, api_key=second, **NO_LIMITS))) as client:  # type: ignore[arg-type]
        keys = client.get("/api/keys", headers=auth(second)).json()["keys"]
        starts = [k for k in keys if k["name"] == "start"]
        assert len(starts) == 2 and starts[0]["id"] != starts[1]["id"]
        assert starts[0]["revokedAt"] is not None and starts[1]["revokedAt"] is None
        assert client.get("/api/account", headers=auth(first)).status_code == 401
        assert client.get("/api/account", headers=auth(second)).status_code == 200
        like = "qbx-operator-XYZ-" + "c" * 30  # no key, but begins like both
        missed = client.delete(f"/api/keys/{like}", headers=auth(spare["apiKey"]))
        assert missed.status_code == 404 and like[:12] not in missed.text
        assert client.get("/api/account", headers=auth(second)).status_code == 200
        gone = client.delete(f"/api/keys/{second}", headers=auth(spare["apiKey"]))
        assert gone.status_code == 200 and gone.json()["key"]["id"] == starts[1]["id"]
        assert second not in gone.text
        assert client.get("/api/account", headers=auth(second)).status_code == 401
        keys = client.get("/api/keys", headers=auth(spare["apiKey"])).json()["keys"]
        assert [k["revokedAt"] is None for k in keys] == [False, True, False]


# -- quotas -----------------------------------------------------------------------------


def test_past_the_queued_quota_a_submission_is_429_and_nothing_is_stored(
    app_client: TestClient,
) -> None:
    client = app_client
    alice = account(client, "alice")
    set_quota = client.post("/api/accounts/alice/quota", json={"maxQueued": 2}, headers=KEY)
    assert set_quota.json()["account"]["quota"] == {
        "maxQueued": 2,
        "maxPerMinute": None,
        "maxRunning": None,
        "maxStorageMb": None,
    }
    assert submit(client, alice).status_code == 201
    assert submit(client, alice).status_code == 201
    refused = submit(client, alice)
    assert refused.status_code == 429
    assert refused.json()["error"] == "quota_exceeded"
    assert refused.json()["details"]["quota"] == "maxQueued"
    assert "maxQueued is 2" in refused.json()["message"]
    assert client.get("/api/jobs", headers=auth(alice)).json()["total"] == 2
    assert submit(client, API_KEY).status_code == 201  # another account's quota is its own


def test_past_the_per_minute_quota_a_submission_is_429_with_retry_after(
    app_client: TestClient,
) -> None:
    client = app_client
    alice = account(client, "alice")
    client.post("/api/accounts/alice/quota", json={"maxPerMinute": 1}, headers=KEY)
    assert submit(client, alice).status_code == 201
    refused = submit(client, alice)
    assert refused.status_code == 429 and refused.json()["details"]["quota"] == "maxPerMinute"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert client.get("/api/jobs", headers=auth(alice)).json()["total"] == 1
    client.post("/api/accounts/alice/quota", json={"maxPerMinute": 0}, headers=KEY)
    none = submit(client, alice)
    assert none.status_code == 429 and "Retry-After" not in none.headers  # waiting won't help
    assert "it may submit no jobs" in none.json()["message"]


def test_the_running_quota_keeps_the_rest_queued(app_client: TestClient) -> None:
    client = app_client
    alice = account(client, "alice")
    client.post("/api/accounts/alice/quota", json={"maxRunning": 1}, headers=KEY)
    first, second = register(client, capabilities=["sleep"]), register(client, "worker-2")
    ids = [submit(client, alice).json()["job"]["id"] for _ in range(2)]
    assert lease(client, "worker-1", first)["job"]["id"] == ids[0]  # type: ignore[index]
    assert lease(client, "worker-2", second) is None  # alice runs one already
    report(client, ids[0], first, 1)
    assert lease(client, "worker-2", second)["job"]["id"] == ids[1]  # type: ignore[index]


# -- prices, holds, charges, the ledger -----------------------------------------------


def priced_worker(client: TestClient, name: str, price: float, address: str | None = None) -> str:
    body: dict[str, Any] = {"capabilities": ["sleep"], "pricePerHour": price}
    if address:
        body["qubicAddress"] = address
    return register(client, name, **body)


def test_a_job_that_may_cost_more_than_the_balance_is_402_and_nothing_is_stored(
    app_client: TestClient,
) -> None:
    client = app_client
    alice = account(client, "alice")
    credit(client, "alice", 10)
    # 20 an hour for 3600 s: up to 20, more than the 10 there is
    refused = submit(client, alice, requirements={"maxPricePerHour": 20}, timeoutS=3600)
    assert refused.status_code == 402 and refused.json()["error"] == "insufficient_funds"
    assert refused.json()["details"] == {"worstCase": 20.0, "available": 10.0}
    assert client.get("/api/jobs", headers=auth(alice)).json()["total"] == 0
    assert balance(client, "alice")["held"] == 0
    # no limit given: the server's maximum price (1000) for the whole timeout is held
    assert submit(client, alice, requirements={}, timeoutS=60).status_code == 402
    assert (
        submit(client, alice, requirements={"maxPricePerHour": 20}, timeoutS=1800).status_code
        == 201
    )
    assert balance(client, "alice")["held"] == 10.0
    assert (
        submit(client, alice, requirements={"maxPricePerHour": 1}, timeoutS=60).status_code == 402
    )


def test_the_charge_is_the_lease_price_times_the_servers_time_and_the_hold_is_released(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice = account(client, "alice")
    credit(client, "alice", 100)
    token = priced_worker(client, "worker-1", 12.0)
    job = submit(client, alice, requirements={"maxPricePerHour": 30}, timeoutS=7200).json()["job"]
    assert balance(client, "alice")["held"] == 60.0  # 30 an hour x 2 h
    leased = lease(client, "worker-1", token)
    assert leased is not None and leased["job"]["pricePerHour"] == 12.0  # fixed by the lease
    # the worker changes its price meanwhile: the lease's price holds
    client.post(
        "/api/providers/quick-register",
        json=register_body("worker-1", capabilities=["sleep"], pricePerHour=50),
        headers=auth(token),
    )
    clock.now += 900  # 15 minutes, as the server measures them
    done = report(client, job["id"], token, 1, metrics={"seconds": 1})  # the worker's word
    assert done.status_code == 200
    after = balance(client, "alice")
    assert after["held"] == 0 and after["balance"] == 97.0  # 100 - 12 x 0.25
    entries = client.get("/api/ledger", headers=auth(alice)).json()["entries"]
    charge = entries[-1]
    assert (charge["kind"], charge["amount"], charge["seconds"]) == ("charge", 3.0, 900.0)
    assert (charge["jobId"], charge["workerId"], charge["pricePerHour"]) == (
        job["id"],
        "worker-1",
        12.0,
    )
    assert charge["qubicAddress"] == register_body()["qubicAddress"]


def test_the_workers_failures_lost_and_cancelled_work_cost_nothing(
    app_client: TestClient, clock: Clock
) -> None:
    client = app_client
    alice = account(client, "alice")
    credit(client, "alice", 100)
    token = priced_worker(client, "worker-1", 10.0)
    limit = {"requirements": {"maxPricePerHour": 10}, "timeoutS": 3600, "maxAttempts": 1}
    failed = submit(client, alice, **limit).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 600
    # No program ran (no exit code): the worker's failure (tests/server/test_failures.py).
    report(client, failed["id"], token, 1, status="failed", result={"error": "boom"})
    cancelled = submit(client, alice, **limit).json()["job"]
    client.post(f"/api/jobs/{cancelled['id']}/cancel", headers=auth(alice))
    lost = submit(client, alice, **limit).json()["job"]
    lease(client, "worker-1", token)
    clock.now += 200  # its lease expires (3 intervals), well before its timeout
    client.portal.call(client.app.state.jobs.expire_leases)  # type: ignore[attr-defined]
    shown = client.get(f"/api/jobs/{lost['id']}", headers=auth(alice)).json()["job"]
    assert (shown["status"], shown["failedBy"]) == ("failed", "worker")
    after = balance(client, "alice")
    assert (after["balance"], after["held"]) == (100.0, 0.0)
    kinds = [e["kind"] for e in client.get("/api/ledger", headers=KEY).json()["entries"]]
    assert kinds == ["credit"]


def test_prices_a_job_never_goes_to_a_worker_that_asks_more(app_client: TestClient) -> None:
    client = app_client
    alice = account(client, "alice")
    credit(client, "alice", 100)
    token = priced_worker(client, "worker-1", 5.0)
    job = submit(client, alice, requirements={"maxPricePerHour": 4}, timeoutS=60).json()["job"]
    assert lease(client, "worker-1", token) is None
    found = client.get("/api/providers/worker-1/diagnosis", headers=KEY).json()
    assert "1 of the 1 queued jobs allow a lower price per hour than it asks." in found["reasons"]
    shown = client.get(f"/api/jobs/{job['id']}", headers=auth(alice)).json()["job"]
    assert shown["status"] == "queued"
    assert (
        "None of the online workers ask at most its maxPricePerHour: it waits until one does."
        in shown["why"]["reasons"]
    )
    too_dear = client.post(
        "/api/providers/quick-register",
        json=register_body("worker-2", pricePerHour=5000),
    )
    assert too_dear.status_code == 422 and too_dear.json()["error"] == "price_too_high"


def test_the_ledger_replays_to_the_balances_and_earnings(
    app_client: TestClient, clock: Clock
) -> None:
    from tests.helpers import OTHER_ADDRESS

    client = app_client
    keys = {name: account(client, name) for name in ("alice", "bob")}
    credit(client, "alice", 50)
    credit(client, "bob", 30)
    credit(client, "bob", -5)
    workers = {
        "worker-1": priced_worker(client, "worker-1", 3.0),
        "worker-2": priced_worker(client, "worker-2", 7.0, OTHER_ADDRESS),
    }
    for round_ in range(3):
        for key in keys.values():
            submit(client, key, requirements={"maxPricePerHour": 10}, timeoutS=600)
        for worker, token in workers.items():
            leased = lease(client, worker, token)
            assert leased is not None
            clock.now += 60 * (round_ + 1)
            report(client, leased["job"]["id"], token, 1)
    entries = client.get("/api/ledger", headers=KEY).json()["entries"]
    balances, earned = totals(entries)
    accounts = client.get("/api/accounts", headers=KEY).json()["accounts"]
    assert {a["name"]: a["balance"] for a in accounts if a["name"] in keys} == balances
    charges = [e for e in entries if e["kind"] == "charge"]
    assert len(charges) == 6
    assert sum(earned.values()) == pytest.approx(sum(e["amount"] for e in charges))
    assert set(earned) == {register_body()["qubicAddress"], OTHER_ADDRESS}
    bobs = client.get("/api/ledger", headers=auth(keys["bob"])).json()["entries"]
    assert {e["account"] for e in bobs} == {"bob"}  # a renter sees its own lines only


# -- fair shares ------------------------------------------------------------------------


def test_accounts_take_turns_so_a_batch_does_not_starve_a_single_job(
    app_client: TestClient,
) -> None:
    client = app_client
    alice, bob = account(client, "alice"), account(client, "bob")
    token = register(client, capabilities=["sleep"])
    batch = [submit(client, alice).json()["job"]["id"] for _ in range(20)]
    single = submit(client, bob).json()["job"]["id"]
    order = []
    for _ in range(3):
        leased = lease(client, "worker-1", token)
        assert leased is not None
        order.append(leased["job"]["id"])
        report(client, leased["job"]["id"], token, 1)
    assert order == [batch[0], single, batch[1]]


def test_work_reported_before_a_failed_check_is_refunded(tmp_path: Path, clock: Clock) -> None:
    from tests.server.test_trust import A40, answer, next_renter_job

    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, **NO_LIMITS)  # type: ignore[arg-type]
    with TestClient(create_app(settings, clock)) as client:
        alice = account(client, "alice")
        credit(client, "alice", 100)
        token = register(client, capabilities=["sleep", "matmul"], gpus=A40, pricePerHour=36.0)
        job = submit(client, alice, requirements={"maxPricePerHour": 36}, timeoutS=600)
        leased = next_renter_job(client, token)
        assert leased["job"]["id"] == job.json()["job"]["id"]
        clock.now += 100
        report(client, leased["job"]["id"], token, 1)
        assert balance(client, "alice")["balance"] == 99.0  # 36 an hour for 100 s
        for _ in range(200):  # renters' jobs until the next canary, answered wrongly
            submit(client, alice, requirements={"maxPricePerHour": 36}, timeoutS=600)
            got = lease(client, "worker-1", token)
            assert got is not None
            if got["job"]["type"] == "matmul":
                break
            report(client, got["job"]["id"], token, 1)
        report(client, got["job"]["id"], token, 1, result=answer(got, honest=False))
        assert balance(client, "alice")["balance"] == 100.0  # every charge since given back
        entries = client.get("/api/ledger", headers=KEY).json()["entries"]
        kinds = [e["kind"] for e in entries]
        assert kinds.count("charge") == kinds.count("refund") >= 1
        balances, earned = totals(entries)
        assert balances["alice"] == 100.0 and set(earned.values()) == {0.0}


def test_earnings_public_totals_and_lines_for_the_address_or_an_operator(
    app_client: TestClient, clock: Clock
) -> None:
    from tests.helpers import OTHER_ADDRESS

    client = app_client
    alice = account(client, "alice")
    credit(client, "alice", 100)
    mine = priced_worker(client, "worker-1", 36.0)
    other = priced_worker(client, "worker-2", 36.0, OTHER_ADDRESS)
    address = register_body()["qubicAddress"]
    for days_later in (0, 8):
        clock.now += days_later * 86_400
        job = submit(client, alice, requirements={"maxPricePerHour": 36}, timeoutS=600)
        lease(client, "worker-1", mine)
        clock.now += 100
        report(client, job.json()["job"]["id"], mine, 1)
    public = client.get(f"/api/earnings/{address}").json()
    assert (public["today"], public["last7Days"], public["last30Days"]) == (1.0, 1.0, 2.0)
    assert (public["allTime"], public["jobs"]) == (2.0, 2)
    assert "lines" not in public
    shown = client.get(f"/api/jobs/{job.json()['job']['id']}", headers=auth(alice)).json()
    assert shown["job"]["cost"] == 1.0
    assert balance(client, "alice")["spent"] == 2.0
    for key, sees in ((mine, True), (API_KEY, True), (other, False), (alice, False)):
        found = client.get(f"/api/earnings/{address}", headers=auth(key)).json()
        assert ("lines" in found) is sees
    lines = client.get(f"/api/earnings/{address}", headers=KEY).json()["lines"]
    assert [(e["kind"], e["amount"], e["seconds"]) for e in lines] == [
        ("charge", 1.0, 100.0),
        ("charge", 1.0, 100.0),
    ]
    since = client.get(f"/api/earnings/{address}?since={clock.now - 86_400}").json()
    assert since["allTime"] == 1.0
    assert client.get(f"/api/earnings/{address}", headers=auth("junk")).status_code == 401
    assert client.get("/api/earnings/NOTANADDRESS").status_code == 422


def test_the_last_operator_key_cannot_be_revoked_and_a_credit_of_0_is_refused(
    app_client: TestClient,
) -> None:
    client = app_client
    refused = client.delete(f"/api/keys/{API_KEY[:12]}", headers=KEY)
    assert refused.status_code == 409 and refused.json()["error"] == "last_operator_key"
    assert client.get("/api/account", headers=KEY).status_code == 200
    spare = client.post("/api/keys", json={"name": "spare"}, headers=KEY).json()["apiKey"]
    other = client.post("/api/keys", json={"name": "other"}, headers=KEY).json()["apiKey"]
    whole = client.delete(f"/api/keys/{other}", headers=auth(spare))  # the whole key works
    assert whole.status_code == 200 and other not in whole.text  # and is never echoed
    assert client.get("/api/account", headers=auth(other)).status_code == 401
    account(client, "alice")
    zero = client.post("/api/accounts/alice/credit", json={"amount": 0}, headers=auth(spare))
    assert zero.status_code == 422 and zero.json()["error"] == "zero_credit"


def test_a_key_from_before_accounts_becomes_the_operators(tmp_path: Path) -> None:
    import asyncio

    from qubix_cli.server.http import token_hash
    from qubix_cli.server.store import JournalStore

    async def old_setup() -> None:
        store = JournalStore(tmp_path / "data")
        async with store.transaction() as tx:
            old = {"id": "old-key-1234", "hash": token_hash("old-key-12345"), "startKey": True}
            tx.put("keys", {**old, "createdAt": 1.0})
        await store.close()

    asyncio.run(old_setup())
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, **NO_LIMITS)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        listed = {k["id"]: k for k in client.get("/api/keys", headers=KEY).json()["keys"]}
        assert listed["old-key-1234"]["account"] == "operator"  # not null
        assert listed["old-key-1234"]["revokedAt"] is not None  # another key started it
