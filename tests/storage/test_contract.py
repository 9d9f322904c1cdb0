"""The storage contract: what every backend must do, run unchanged against each one
(`backend` in conftest.py). Each issue that stores something new adds its cases here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from qubix_cli.errors import StorageError
from qubix_cli.server.store import Doc, Store

_loop: asyncio.Runner | None = None  # one event loop a test: a store's connections live in it


@pytest.fixture(autouse=True)
def one_loop() -> Iterator[None]:
    global _loop
    with asyncio.Runner() as runner:
        _loop = runner
        yield
        _loop = None


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    assert _loop is not None
    return _loop.run(body())  # type: ignore[arg-type]


def job(i: int, **fields: Any) -> Doc:
    return {"id": f"j{i:03d}", "status": "queued", "createdAt": float(i), **fields}


async def put(store: Store, table: str, *docs: Doc) -> None:
    async with store.transaction() as tx:
        for doc in docs:
            tx.put(table, doc)


# -- durability and atomicity ---------------------------------------------------------


def test_a_committed_transaction_survives_a_crash(backend: Any) -> None:
    store = backend.open()

    async def write() -> None:
        await put(store, "jobs", job(1), job(2))
        async with store.transaction() as tx:
            tx.delete("jobs", "j001")
            tx.put("jobs", job(2, status="assigned"))

    run(write)
    again = backend.open()  # the first was never closed: as after a crash
    assert run(lambda: again.get("jobs", "j001")) is None
    assert run(lambda: again.get("jobs", "j002"))["status"] == "assigned"


def test_a_failed_commit_leaves_nothing_visible_now_or_after_a_restart(backend: Any) -> None:
    store = backend.open()
    run(lambda: put(store, "jobs", job(1)))
    with backend.failing_commits():
        with pytest.raises(StorageError):
            run(lambda: put(store, "jobs", job(2), job(1, status="assigned")))
        assert run(lambda: store.get("jobs", "j002")) is None
        assert run(lambda: store.get("jobs", "j001"))["status"] == "queued"
        assert run(lambda: store.count("jobs")) == 1
    # Inside a transaction too: the failed one left nothing behind.
    assert run(lambda: _tx_get(store, "jobs", "j002")) is None
    again = backend.open()
    assert run(lambda: again.count("jobs")) == 1
    assert run(lambda: again.get("jobs", "j001"))["status"] == "queued"
    # The same change succeeds once commits work again, and lasts.
    run(lambda: put(store, "jobs", job(2)))
    assert run(lambda: backend.open().count("jobs")) == 2


def test_transactions_committed_together_fail_together(backend: Any) -> None:
    store = backend.open()

    async def many() -> list[BaseException | None]:
        async def one(i: int) -> None:
            await put(store, "jobs", job(i))

        return await asyncio.gather(*(one(i) for i in range(20)), return_exceptions=True)

    with backend.failing_commits():
        outcomes = run(many)
    assert all(isinstance(o, StorageError) for o in outcomes)
    assert run(lambda: store.count("jobs")) == 0
    assert run(lambda: backend.open().count("jobs")) == 0


def test_an_error_inside_the_block_writes_nothing(backend: Any) -> None:
    store = backend.open()

    async def body() -> None:
        async with store.transaction() as tx:
            tx.put("jobs", job(1))
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        run(body)
    assert run(lambda: store.get("jobs", "j001")) is None
    assert run(lambda: backend.open().get("jobs", "j001")) is None


# -- isolation -------------------------------------------------------------------------


def test_concurrent_claims_never_take_the_same_document(backend: Any) -> None:
    store = backend.open()
    run(lambda: put(store, "jobs", *(job(i) for i in range(30))))

    async def claim(worker: str) -> list[str]:
        taken = []
        while True:
            async with store.transaction() as tx:
                queued = await tx.scan("jobs", where={"status": "queued"}, order_by="createdAt")
                if not queued:
                    return taken
                tx.put("jobs", {**queued[0], "status": "assigned", "workerId": worker})
            taken.append(queued[0]["id"])
            await asyncio.sleep(0)

    async def poll() -> list[list[str]]:
        return await asyncio.gather(*(claim(f"w{i}") for i in range(8)))

    claims = run(poll)
    taken = [job_id for worker in claims for job_id in worker]
    assert sorted(taken) == [f"j{i:03d}" for i in range(30)]  # each exactly once
    docs = run(lambda: store.scan("jobs"))
    assert all(d["status"] == "assigned" for d in docs)
    owner = {job_id: f"w{i}" for i, worker in enumerate(claims) for job_id in worker}
    assert all(owner[d["id"]] == d["workerId"] for d in docs)


def test_a_change_is_invisible_to_other_readers_until_it_is_durable(backend: Any) -> None:
    store = backend.open()
    run(lambda: put(store, "jobs", job(1)))
    gate, entered = threading.Event(), threading.Event()

    async def body() -> tuple[Any, ...]:
        write = asyncio.create_task(put(store, "jobs", job(1, status="assigned"), job(2)))
        await asyncio.to_thread(entered.wait, 10)
        during = (
            (await store.get("jobs", "j001"))["status"],
            await store.get("jobs", "j002"),
            [d["id"] for d in await store.scan("jobs", where={"status": "queued"})],
            await store.count("jobs"),
        )
        gate.set()
        await write
        after = ((await store.get("jobs", "j001"))["status"], await store.count("jobs"))
        return during, after

    with backend.held_commits(entered, gate):
        during, after = run(body)
    assert during == ("queued", None, ["j001"], 1)
    assert after == ("assigned", 2)


def test_a_transaction_reads_its_own_writes(backend: Any) -> None:
    store = backend.open()
    run(lambda: put(store, "jobs", job(1), job(2)))

    async def body() -> tuple[Any, ...]:
        async with store.transaction() as tx:
            tx.put("jobs", job(3))
            tx.delete("jobs", "j001")
            tx.put("jobs", job(2, status="assigned"))
            return (
                await tx.get("jobs", "j003"),
                await tx.get("jobs", "j001"),
                [d["id"] for d in await tx.scan("jobs", where={"status": "queued"})],
                await tx.count("jobs"),
            )

    three, one, queued, count = run(body)
    assert three == job(3) and one is None and queued == ["j003"] and count == 2


# -- reading: ordering, filters, paging ------------------------------------------------


def test_scan_orders_filters_and_pages(backend: Any) -> None:
    store = backend.open()
    docs = [
        job(i, status="queued" if i % 3 else "failed", createdAt=float(i % 5)) for i in range(12)
    ]
    run(lambda: put(store, "jobs", *docs))

    def ids(**kwargs: Any) -> list[str]:
        return [d["id"] for d in run(lambda: store.scan("jobs", **kwargs))]

    # by the field, then by key for ties
    expected = sorted(docs, key=lambda d: (d["createdAt"], d["id"]))
    assert ids(order_by="createdAt") == [d["id"] for d in expected]
    assert ids(order_by="createdAt", descending=True) == [d["id"] for d in reversed(expected)]
    pages = [ids(order_by="createdAt", offset=o, limit=5) for o in (0, 5, 10)]
    assert [i for page in pages for i in page] == [d["id"] for d in expected]
    assert [len(p) for p in pages] == [5, 5, 2]
    failed = [d["id"] for d in expected if d["status"] == "failed"]
    assert ids(where={"status": "failed"}, order_by="createdAt") == failed  # an indexed field
    assert sorted(ids(where={"createdAt": 1.0})) == ["j001", "j006", "j011"]  # not indexed
    assert ids(where={"status": "failed", "createdAt": 0.0}) == ["j000"]
    assert run(lambda: store.count("jobs", {"status": "queued"})) == 8
    assert run(lambda: store.count("jobs")) == 12
    assert ids(where={"status": "nothing"}) == []


def test_an_index_follows_changes_and_deletes(backend: Any) -> None:
    store = backend.open()
    run(lambda: put(store, "providers", {"workerId": "w1", "tokenHash": "a"}))

    async def change() -> None:
        async with store.transaction() as tx:
            tx.put("providers", {"workerId": "w1", "tokenHash": "b"})
            tx.put("providers", {"workerId": "w2", "tokenHash": "a"})
        async with store.transaction() as tx:
            tx.delete("providers", "w2")

    run(change)
    for reader in (store, backend.open()):
        by_a = run(lambda r=reader: r.scan("providers", where={"tokenHash": "a"}))
        by_b = run(lambda r=reader: r.scan("providers", where={"tokenHash": "b"}))
        assert by_a == [] and [d["workerId"] for d in by_b] == ["w1"]


def test_log_chunks_come_back_in_order_by_job_and_go_with_it(backend: Any) -> None:
    """What job logs need: chunks found by their job (an index), in id order, and a job
    and its chunks deleted in one transaction (the retention pass)."""
    store = backend.open()

    def chunk(job_id: str, seq: int) -> dict[str, Any]:
        return {"id": f"{job_id}.0001.{seq:08d}", "jobId": job_id, "seq": seq, "text": "x"}

    run(lambda: put(store, "logs", *(chunk(j, s) for s in (2, 0, 10, 1) for j in ("a", "b"))))
    by_a = run(lambda: store.scan("logs", where={"jobId": "a"}, order_by="id"))
    assert [c["seq"] for c in by_a] == [0, 1, 2, 10]

    async def forget(job_id: str) -> None:
        async with store.transaction() as tx:
            for doc in await tx.scan("logs", where={"jobId": job_id}):
                tx.delete("logs", doc["id"])

    run(lambda: forget("a"))
    for reader in (store, backend.open()):
        assert run(lambda r=reader: r.count("logs", {"jobId": "a"})) == 0
        assert run(lambda r=reader: r.count("logs", {"jobId": "b"})) == 4


def test_a_hold_and_its_job_commit_together_and_the_ledger_sums_by_index(backend: Any) -> None:
    """What accounts need: an account (keyed by name) changed in the same transaction as
    the job it holds money for, refused as a whole when the block raises; ledger lines
    found by account, by Qubic address and by job, in time order, after a restart."""
    store = backend.open()
    run(lambda: put(store, "accounts", {"name": "alice", "balance": 10.0, "held": 0.0}))

    async def submit(hold: float) -> None:
        async with store.transaction() as tx:
            account = await tx.get("accounts", "alice")
            assert account is not None
            if hold > account["balance"] - account["held"]:
                raise ValueError("insufficient funds")
            tx.put("accounts", {**account, "held": account["held"] + hold})
            tx.put("jobs", job(1, account="alice", hold=hold))

    run(lambda: submit(4.0))
    with pytest.raises(ValueError):
        run(lambda: submit(7.0))
    assert run(lambda: store.get("accounts", "alice"))["held"] == 4.0
    assert run(lambda: store.count("jobs", {"account": "alice"})) == 1

    lines = [
        {
            "id": f"led_{i}",
            "at": float(10 - i),
            "kind": "charge",
            "account": acct,
            "jobId": f"j{i % 2}",
            "qubicAddress": addr,
            "amount": float(i),
        }
        for i, (acct, addr) in enumerate([("alice", "A"), ("bob", "B"), ("alice", "B")])
    ]
    run(lambda: put(store, "ledger", *lines))
    for reader in (store, backend.open()):
        by_alice = run(lambda r=reader: r.scan("ledger", {"account": "alice"}, "at"))
        assert [e["id"] for e in by_alice] == ["led_2", "led_0"]
        by_b = run(lambda r=reader: r.scan("ledger", {"qubicAddress": "B"}, "at"))
        assert sum(e["amount"] for e in by_b) == 3.0
        assert run(lambda r=reader: r.count("ledger", {"jobId": "j0"})) == 2


# -- volatile state ----------------------------------------------------------------------


def test_volatile_state_is_kept_and_saved(backend: Any) -> None:
    store = backend.open()
    store.remember("liveness", "w1", {"status": "online", "lastSeenAt": 1.0})
    store.remember("liveness", "w2", {"status": "busy", "lastSeenAt": 2.0})
    store.remember("liveness", "w2", None)
    store.remember("leases", "j1", {"expiresAt": 5.0})
    assert run(lambda: store.recall("liveness", "w1")) == {"status": "online", "lastSeenAt": 1.0}
    assert run(lambda: store.recall("liveness", "w2")) is None
    run(store.save_volatile)
    again = backend.open()
    assert run(lambda: again.recall_all("liveness")) == {
        "w1": {"status": "online", "lastSeenAt": 1.0}
    }
    assert run(lambda: again.recall("leases", "j1")) == {"expiresAt": 5.0}


async def _tx_get(store: Store, table: str, key: str) -> Doc | None:
    async with store.transaction() as tx:
        return await tx.get(table, key)


def test_a_provider_read_then_changed_reads_changed_at_once(backend: Any) -> None:
    """A heartbeat reads its provider on every beat (a backend may keep it at hand); a
    registration, a re-registration or a removal must show at the very next read."""
    store = backend.open()
    worker = {"workerId": "w1", "tokenHash": "a", "qubicAddress": "Q"}

    async def body() -> list[Any]:
        seen = [await store.get("providers", "w1")]
        await put(store, "providers", worker)
        seen.append((await store.get("providers", "w1"))["tokenHash"])
        await put(store, "providers", {**worker, "tokenHash": "b"})
        seen.append((await store.get("providers", "w1"))["tokenHash"])
        async with store.transaction() as tx:
            tx.delete("providers", "w1")
        seen.append(await store.get("providers", "w1"))
        return seen

    assert run(body) == [None, "a", "b", None]
    assert run(lambda: backend.open().get("providers", "w1")) is None


def test_volatile_text_of_any_kind_survives_a_save(backend: Any) -> None:
    store = backend.open()
    odd = {"pausedReason": 'a\\b\t"c"\nd é \u2603', "usage": {"gpus": [{"tempC": 81.5}]}}
    store.remember("liveness", "w-odd", odd)
    run(store.save_volatile)
    assert run(lambda: backend.open().recall("liveness", "w-odd")) == odd


def test_a_nul_character_never_fails_a_commit(backend: Any) -> None:
    """A worker's output or a renter's text may hold U+0000, which PostgreSQL cannot
    store: it is kept (as NUL, or as U+FFFD where it cannot be), never refused."""
    store = backend.open()
    run(lambda: put(store, "logs", {"id": "l1", "jobId": "j1", "text": "a\x00b\\u0000"}))
    text = run(lambda: backend.open().get("logs", "l1"))["text"]
    assert text in ("a\x00b\\u0000", "a\ufffdb\\u0000")


def test_watchers_are_told_of_committed_changes_only(backend: Any) -> None:
    """`observe_change` hears of each committed change to a watched table (jobs: status and
    worker; providers: the key alone), made here; nothing of an unwatched table, of a
    failed commit, or of a block that raised. One store leads the periodic work."""
    store = backend.open()
    told: list[Any] = []
    store.observe_change = lambda *change: change[0] != "*" and told.append(change)

    async def body() -> None:
        async with store.transaction() as tx:
            tx.put("jobs", job(1, status="assigned", workerId="w1", payload={"secret": 1}))
            tx.put("providers", {"workerId": "w1", "tokenHash": "h"})
            tx.put("accounts", {"name": "alice"})
        async with store.transaction() as tx:
            tx.delete("jobs", "j001")
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                tx.put("jobs", job(2))
                raise RuntimeError("no")

    run(body)
    assert told == [
        ("jobs", "j001", {"status": "assigned", "workerId": "w1"}, True),
        ("providers", "w1", {}, True),
        ("jobs", "j001", None, True),
    ]
    with backend.failing_commits(), pytest.raises(StorageError):
        run(lambda: put(store, "jobs", job(3)))
    assert len(told) == 3

    async def leads() -> bool:
        for _ in range(300):  # on PostgreSQL, once its listening connection has the lock
            if store.leads():
                return True
            await asyncio.sleep(0.01)
        return False

    assert run(leads)
