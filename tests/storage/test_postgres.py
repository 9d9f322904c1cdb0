"""The coordinator on PostgreSQL as an operator runs it: `qubix serve --database`, a real
worker, `qubix db migrate` and `qubix db copy`, and PostgreSQL itself going away and
coming back."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.helpers import KEY, ServerProcess, Worker, job, register_body, submit, wait_for
from tests.pg import Cluster


def qubix(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qubix_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def status(server: ServerProcess, job_id: str) -> str:
    found: str = job(server, job_id)["status"]
    return found


def test_serve_on_postgres_runs_a_real_worker_and_keeps_everything_over_a_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    url = cluster.new_database()
    server = ServerProcess(tmp_path / "data", 1.0, "--database", url).start()
    try:
        assert f"Database: {url}, migrated to version" in server.output()
        worker = Worker(tmp_path, server.url, "w1", "--max-jobs", "1")
        job_id = submit(server, type="sleep", payload={"seconds": 0.2})
        wait_for(lambda: status(server, job_id) == "completed", timeout=30)
        assert worker.wait() == 0
        server.stop()
        server.start()  # a restart: the schema is there, and everything in it
        assert "(schema version" in server.output()
        assert status(server, job_id) == "completed"
        assert httpx.get(f"{server.url}/api/providers/w1").status_code == 200
    finally:
        server.stop()
    with psycopg.connect(url) as conn:  # the documents are in PostgreSQL, not in the data dir
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
    assert not list((tmp_path / "data").glob("journal-*"))


def test_db_migrate_creates_the_schema_once_and_refuses_a_newer_one(cluster: Cluster) -> None:
    url = cluster.new_database()
    first, again = (
        qubix("db", "migrate", "--database", url),
        qubix("db", "migrate", "--database", url),
    )
    assert first.returncode == 0 and "schema version 3 (applied 1, 2, 3)" in first.stdout, first
    assert again.returncode == 0 and "nothing to apply" in again.stdout
    with psycopg.connect(url, autocommit=True) as conn:  # a database from before uploads
        conn.execute('DROP TABLE "uploads"; DELETE FROM qubix_migrations WHERE version = 3')
    older = qubix("db", "migrate", "--database", url)
    assert older.returncode == 0 and "(applied 3)" in older.stdout, older
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute('SELECT count(*) FROM "uploads"').fetchone() == (0,)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO qubix_migrations (version) VALUES (99)")
    newer = qubix("db", "migrate", "--database", url)
    assert newer.returncode != 0 and "newer than this qubix knows" in newer.stderr
    refused = qubix("serve", "--database", url, "--port", "0")
    assert refused.returncode != 0 and "upgrade qubix" in refused.stderr


def test_a_wrong_database_is_a_clear_error_without_its_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    unreachable = "postgresql://qubix:s3cret@127.0.0.1:1/qubix"
    result = qubix("serve", "--database", unreachable, "--data-dir", str(data), "--port", "0")
    assert result.returncode != 0
    assert "cannot use the database postgresql://qubix:***@127.0.0.1:1/qubix" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert not data.exists()  # nothing made before the database was found wanting
    wrong = qubix("serve", "--database", "mysql://x/y", "--port", "0")
    assert wrong.returncode != 0 and "postgresql://" in wrong.stdout + wrong.stderr
    for leaky in (  # however the password is written, and however wrong the URL is
        "mysql://qubix:s3cret@host/x",
        "postgresql://qubix:s3cret@[::1/x",
        "postgresql://qubix@127.0.0.1:1/x?password=s3cret",
        "postgresql://qubix:s3c%ZZret@127.0.0.1:1/x",
        "postgresql://qubix:s3c@ret@127.0.0.1:1/x",  # an @ not written %40
    ):
        said = qubix("db", "migrate", "--database", leaky)
        assert said.returncode != 0, leaky
        assert "s3c" not in said.stdout + said.stderr, said.stdout + said.stderr
        assert "Traceback" not in said.stderr, said.stderr
    no_driver = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['psycopg'] = None; from qubix_cli.cli import main; "
            "sys.argv = ['qubix', 'db', 'migrate', '--database', 'postgresql://h/d']; main()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "pip install 'qubix[postgres]'" in no_driver.stderr


def test_db_copy_moves_an_embedded_coordinator_and_its_fleet_keeps_working(
    cluster: Cluster, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    embedded = ServerProcess(data, 30.0).start()
    try:
        answer = httpx.post(
            f"{embedded.url}/api/providers/quick-register", json=register_body("farm-1")
        )
        token = answer.json()["workerToken"]
        job_id = submit(embedded, type="sleep", payload={"seconds": 1})
        odd = {
            "shader": "a\x00b",
            "workgroups": [1],
            "buffers": [{"binding": 0, "sizeBytes": 4, "output": True}],
        }
        submit(embedded, type="wgsl", payload=odd)  # a NUL, which PostgreSQL cannot hold
        renter = httpx.post(
            f"{embedded.url}/api/accounts", json={"name": "acme", "role": "renter"}, headers=KEY
        ).json()["apiKey"]
    finally:
        embedded.stop()
    url = cluster.new_database()
    copied = qubix("db", "copy", "--from", str(data), "--to", url)
    assert copied.returncode == 0, copied.stderr
    assert "1 providers" in copied.stdout and "2 jobs" in copied.stdout
    again = qubix("db", "copy", "--from", str(data), "--to", url)
    assert again.returncode != 0 and "copy into an empty database" in again.stderr

    server = ServerProcess(data, 30.0, "--database", url).start()
    try:
        beat = httpx.post(
            f"{server.url}/api/providers/farm-1/heartbeat",
            json={"status": "online"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert beat.status_code == 200, beat.text  # the same token: no re-registering
        assert status(server, job_id) == "queued"
        mine = httpx.get(f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {renter}"})
        assert mine.status_code == 200  # the renter's key came along
    finally:
        server.stop()


def test_the_server_answers_503_while_postgres_is_down_and_recovers_by_itself(
    cluster: Cluster, tmp_path: Path
) -> None:
    url = cluster.new_database()
    server = ServerProcess(tmp_path / "data", 30.0, "--database", url).start()
    try:
        job_id = submit(server, type="sleep", payload={"seconds": 1})
        cluster.stop_server()
        try:
            down = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=KEY, timeout=30)
            assert down.status_code == 503, down.text
            assert "the database" in down.json()["message"]
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 503
            refused = httpx.post(
                f"{server.url}/api/jobs",
                json={"type": "sleep", "payload": {"seconds": 1}},
                headers=KEY,
                timeout=30,
            )
            assert refused.status_code == 503, refused.text
        finally:
            cluster.start()
        wait_for(
            lambda: httpx.get(f"{server.url}/api/jobs/{job_id}", headers=KEY).status_code == 200
        )
        assert server.proc.poll() is None  # the same process, never restarted
    finally:
        server.stop()


def test_a_read_that_races_a_commit_never_keeps_the_older_provider(
    cluster: Cluster, monkeypatch: Any
) -> None:
    """The store keeps providers at hand; a read that fetched the row before a commit but
    finishes after it must not put the older row back."""
    from qubix_cli.server import pgstore

    url = cluster.new_database()
    store, other = pgstore.PostgresStore(url), pgstore.PostgresStore(url, name="another")
    committed = asyncio.Event()
    real = pgstore._Reads.get

    async def slow_get(self: Any, table: str, key: str) -> Any:
        doc = await real(self, table, key)
        if self is store:
            await committed.wait()  # the row is fetched; the commit lands meanwhile
        return doc

    async def body() -> Any:
        await listening(store)  # it keeps providers at hand only while it listens
        async with other.transaction() as tx:  # not through `store`: it has not seen it
            tx.put("providers", {"workerId": "w1", "tokenHash": "old"})
        await other.close()
        monkeypatch.setattr(pgstore._Reads, "get", slow_get)
        reading = asyncio.create_task(store.get("providers", "w1"))
        await asyncio.sleep(0.2)
        async with store.transaction() as tx:
            tx.put("providers", {"workerId": "w1", "tokenHash": "new"})
        committed.set()
        assert (await reading)["tokenHash"] == "old"  # it read before the commit
        monkeypatch.undo()
        found = await store.get("providers", "w1")
        await store.close()
        return found["tokenHash"]

    assert asyncio.run(body()) == "new"


@contextlib.asynccontextmanager
async def two_stores(url: str) -> AsyncIterator[tuple[Any, Any]]:
    """Two servers' stores on one database (heartbeats every second), closed after."""
    from qubix_cli.server.pgstore import PostgresStore

    a, b = PostgresStore(url, heartbeat_s=1), PostgresStore(url, heartbeat_s=1)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def watched(store: Any) -> tuple[list[Any], list[Any]]:
    """What the store will be told of the other servers: their changes, their events."""
    told: list[Any] = []
    events: list[Any] = []
    store.observe_change = lambda *change: change[0] != "*" and told.append(change)
    store.observe_event = events.append
    return told, events


async def listening(*stores: Any) -> None:
    """Wait until each store listens to the others on its database."""
    for store in stores:
        await store.pool()
        for _ in range(500):
            if store._listening:
                break
            await asyncio.sleep(0.01)
        assert store._listening


async def until(what: Any, timeout: float = 5.0) -> Any:
    for _ in range(int(timeout / 0.01)):
        value = what()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def live(status: str, at: float, **more: Any) -> dict[str, Any]:
    return {"status": status, "lastSeenAt": at, "usage": None, "currentJobIds": [], **more}


def test_servers_on_one_database_share_volatile_state_the_later_setting_winning(
    cluster: Cluster,
) -> None:
    """Liveness, leases and the rest are set in memory on the server that hears of them and
    reach the others through the unlogged table, each `save_volatile`; the later wins."""
    from qubix_cli.server.pgstore import PostgresStore

    url = cluster.new_database()

    async def body() -> None:
        async with two_stores(url) as (a, b):
            a.remember("liveness", "w1", live("online", 100.0))
            a.remember("cancels", "w1", {"jobIds": ["j1"]})
            await a.save_volatile()
            await b.save_volatile()
            assert (await b.recall("liveness", "w1"))["status"] == "online"
            assert await b.recall("cancels", "w1") == {"jobIds": ["j1"]}
            b.remember("liveness", "w1", live("offline", 100.0))  # later: it wins
            b.remember("cancels", "w1", None)  # forgotten on b: forgotten on a too
            await b.save_volatile()
            await a.save_volatile()
            assert (await a.recall("liveness", "w1"))["status"] == "offline"
            assert await a.recall("cancels", "w1") is None
            a.remember("leases", "j2", {"expiresAt": 5.0})
            stale = PostgresStore(url, heartbeat_s=1)  # set earlier than a's, saved later
            stale.remember("leases", "j2", {"expiresAt": 1.0})
            stale._at["leases"]["j2"] = 0.0
            await a.save_volatile()
            await stale.save_volatile()
            await stale.close()
            await b.save_volatile()
            assert await b.recall("leases", "j2") == {"expiresAt": 5.0}
            assert await a.recall("leases", "j2") == {"expiresAt": 5.0}

    asyncio.run(body())


def test_a_heartbeat_is_written_only_when_the_shared_copy_is_getting_old(
    cluster: Cluster,
) -> None:
    """A heartbeat that changes nothing but its time (and usage) is not written again
    until the shared copy is `fresh_s` old; any other change is written at the next save."""
    from qubix_cli.server.pgstore import PostgresStore

    url = cluster.new_database()

    def written() -> Any:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT written, doc FROM qubix_volatile").fetchone()
            return row

    async def body() -> None:
        store = PostgresStore(url, heartbeat_s=30)  # fresh_s: 5 s
        try:
            store.remember("liveness", "w1", live("online", 100.0, usage={"cpu": 1}))
            await store.save_volatile()
            first = written()
            store.remember("liveness", "w1", live("online", 104.0, usage={"cpu": 2}))
            await store.save_volatile()
            assert written() == first  # fresh enough: no write
            store.remember("liveness", "w1", live("online", 105.5, usage={"cpu": 3}))
            await store.save_volatile()
            later = written()
            assert later[0] > first[0] and later[1]["usage"] == {"cpu": 3}
            store.remember("liveness", "w1", live("paused", 105.6))
            await store.save_volatile()
            assert written()[1]["status"] == "paused"  # not only its time: written at once
        finally:
            await store.close()

    asyncio.run(body())


def test_servers_on_one_database_are_told_of_changes_and_events_and_one_leads(
    cluster: Cluster,
) -> None:
    """A commit on one server tells the others which jobs and providers changed (ids and
    a job's state only), an event published on one reaches the others, a provider kept at
    hand is forgotten when another server changes it, and one server at a time leads."""

    url = cluster.new_database()

    async def body() -> None:
        async with two_stores(url) as (a, b):
            told, events = watched(b)
            await listening(a, b)
            async with a.transaction() as tx:
                tx.put("providers", {"workerId": "w1", "tokenHash": "secret-hash", "n": 1})
            assert (await b.get("providers", "w1"))["n"] == 1  # now kept at hand on b
            async with a.transaction() as tx:
                job = {"id": "j1", "status": "assigned", "workerId": "w1", "payload": "x"}
                tx.put("jobs", job)
                tx.put("providers", {"workerId": "w1", "tokenHash": "secret-hash", "n": 2})
                tx.put("accounts", {"name": "alice", "balance": 1})
            await until(lambda: len(told) == 3)  # w1 twice, j1 (accounts are not watched)
            assert ("jobs", "j1", {"status": "assigned", "workerId": "w1"}, False) in told
            assert ("providers", "w1", {}, False) in told  # no token hash, no contents
            assert (await b.get("providers", "w1"))["n"] == 2  # forgotten, read again
            a.share_event({"type": "PROVIDER_ONLINE", "data": {"workerId": "w1"}, "at": 1.0})
            big = {"workerId": "w2", "status": "online", "gpus": ["x" * 100] * 100}
            a.share_event({"type": "PROVIDER_ONLINE", "data": big, "at": 2.0})
            await until(lambda: len(events) == 2)
            assert events == [
                {"type": "PROVIDER_ONLINE", "data": {"workerId": "w1"}, "at": 1.0},
                {
                    "type": "PROVIDER_ONLINE",
                    "data": {"workerId": "w2", "status": "online"},
                    "at": 2.0,
                },
            ]  # a record too large to notify: its ids
            await until(lambda: a.leads() or b.leads())
            leader, other = (a, b) if a.leads() else (b, a)
            assert not other.leads()
            await leader.close()  # its connection goes, and with it the lead lock
            await until(other.leads, timeout=5)

    asyncio.run(body())


def test_a_notification_of_any_other_shape_is_ignored_and_listening_goes_on(
    cluster: Cluster,
) -> None:
    """Whoever else may connect to the database may NOTIFY on the servers' channel: what
    is not of the shape servers send changes nothing, and the listening goes on."""
    from qubix_cli.server.pgstore import CHANNEL

    url = cluster.new_database()

    async def body() -> None:
        async with two_stores(url) as (a, b):
            told, events = watched(b)
            await listening(a, b)
            hostile = [
                "not json",
                "[1]",
                '{"server": "x", "changes": [1]}',
                '{"server": "x", "changes": null, "events": 5}',
                '{"server": "x", "changes": [["jobs", 1, {}], ["keys", "k", {}]]}',
                '{"server": "x", "changes": [["jobs", "j", {"status": "queued"}]]}',
                '{"server": "x", "events": [5, null, "x"]}',
            ]
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                for payload in hostile:
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            async with a.transaction() as tx:
                tx.put("jobs", {"id": "j1", "status": "queued", "workerId": None})
            await until(lambda: told)
            assert told == [("jobs", "j1", {"status": "queued", "workerId": None}, False)]
            assert events == [] and b._listening
            await until(lambda: a.leads() or b.leads())

    asyncio.run(body())
