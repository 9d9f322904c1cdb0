"""The coordinator on PostgreSQL as an operator runs it: `qubix serve --database`, a real
worker, `qubix db migrate` and `qubix db copy`, and PostgreSQL itself going away and
coming back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
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
        second = qubix("serve", "--database", url, "--port", "0")  # a second one: refused
        assert second.returncode != 0 and "another qubix serve uses the database" in second.stderr
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
    assert first.returncode == 0 and "schema version 1 (applied 1)" in first.stdout, first
    assert again.returncode == 0 and "nothing to apply" in again.stdout
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
