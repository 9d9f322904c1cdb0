"""Storage quotas of uploaded inputs (413 past them) and the free-space reserve (507 for
uploads under it, while jobs, registrations and reports go on)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS, auth, register
from tests.helpers import API_KEY, KEY
from tests.server.conftest import Clock
from tests.server.test_accounts import account
from tests.server.test_accounts import submit as submit_as
from tests.server.test_jobs import lease, report, submit

KIB = 1024


@pytest.fixture
def timed(tmp_path: Path, database_url: str | None, clock: Clock) -> Iterator[TestClient]:
    """An app on the test's clock whose renters may keep 1 MiB of inputs."""
    settings = Settings(
        data_dir=tmp_path / "data",
        api_key=API_KEY,
        database_url=database_url,
        renter_storage_mb=1,
        **NO_LIMITS,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings, clock)) as client:
        yield client


def put(client: TestClient, key: str, data: bytes) -> Any:
    return client.post("/api/inputs", content=data, headers=auth(key))


def blob_files(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "data" / "blobs").rglob("*") if p.is_file()}


def test_a_renters_inputs_past_its_storage_quota_are_413_and_nothing_is_kept(
    timed: TestClient, tmp_path: Path
) -> None:
    alice = account(timed, "alice")
    first, second = b"a" * (600 * KIB), b"b" * (600 * KIB)
    assert put(timed, alice, first).status_code == 201
    assert put(timed, alice, first).status_code == 201  # the same bytes again: counted once
    refused = put(timed, alice, second)
    assert refused.status_code == 413, refused.text
    body = refused.json()
    assert body["error"] == "quota_exceeded"
    assert body["details"] == {"quota": "maxStorageMb", "limit": 1, "usedBytes": 600 * KIB}
    assert "--max-storage-mb" in body["message"]
    assert hashlib.sha256(second).hexdigest() not in blob_files(tmp_path)
    assert not [n for n in blob_files(tmp_path) if n.startswith(".upload-")]
    assert put(timed, API_KEY, b"c" * (1200 * KIB)).status_code == 201  # operators: no limit
    bob = account(timed, "bob")
    assert put(timed, bob, second).status_code == 201  # another account's quota is its own

    raised = timed.post("/api/accounts/alice/quota", json={"maxStorageMb": 2}, headers=KEY)
    assert raised.json()["account"]["quota"]["maxStorageMb"] == 2
    assert put(timed, alice, second).status_code == 201
    announced = timed.post(
        "/api/inputs", content=b"d" * (900 * KIB), headers={**auth(alice), "content-length": "x"}
    )
    assert announced.status_code == 413  # never a 500, whatever the header says
    assert put(timed, alice, b"d" * (900 * KIB)).status_code == 413
    assert timed.post("/api/accounts/alice/quota", json={"maxStorageMb": 0}, headers=KEY).is_success
    assert put(timed, alice, b"e").json()["error"] == "quota_exceeded"
    back = timed.post("/api/accounts/alice/quota", json={"maxStorageMb": None}, headers=KEY)
    assert back.json()["account"]["quota"]["maxStorageMb"] is None  # the server's default again


def test_an_input_counts_while_a_job_names_it_or_for_an_hour_after_its_upload(
    timed: TestClient, clock: Clock
) -> None:
    alice = account(timed, "alice")
    named, stray, later = b"n" * (600 * KIB), b"s" * (600 * KIB), b"l" * (900 * KIB)
    sha = put(timed, alice, named).json()["sha256"]
    made = submit_as(timed, alice, inputs=[{"name": "in", "sha256": sha}])
    assert made.status_code == 201, made.text
    assert put(timed, alice, stray).status_code == 413
    clock.now += 4000  # past the hour: the named input still counts, its job still here
    app: Any = timed.app
    timed.portal.call(app.state.files.forget_old)
    assert put(timed, alice, stray).status_code == 413

    timed.post("/api/accounts/alice/quota", json={"maxStorageMb": 2}, headers=KEY)
    assert put(timed, alice, stray).status_code == 201
    assert put(timed, alice, later).status_code == 413
    clock.now += 4000  # the stray upload, named by no job, no longer counts
    timed.portal.call(app.state.files.forget_old)
    assert put(timed, alice, later).status_code == 201


@pytest.mark.parametrize("value", [-1, "many", 10**8, 1.5])
def test_a_bad_storage_quota_is_422_and_changes_nothing(client: TestClient, value: Any) -> None:
    account(client, "alice")
    bad = client.post("/api/accounts/alice/quota", json={"maxStorageMb": value}, headers=KEY)
    assert bad.status_code == 422, bad.text
    got = client.get("/api/accounts/alice", headers=KEY).json()["account"]["quota"]
    assert got["maxStorageMb"] is None


def test_under_the_free_space_reserve_uploads_are_507_and_everything_else_works(
    make_client: Any, tmp_path: Path
) -> None:
    client = make_client(min_free_mb=10**12)  # more than any disk has: always under it
    refused = client.post("/api/inputs", content=b"x" * 1000, headers=KEY)
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"] == "insufficient_storage"
    assert refused.json()["details"] == {"minFreeMb": 10**12}
    assert blob_files(tmp_path) == set()
    token = register(client, capabilities=["command"])  # registrations, jobs, reports: fine
    made = submit(client, type="command", payload={"argv": ["true"]})
    assert lease(client, "worker-1", token) is not None
    url = f"/api/jobs/{made['id']}/artifacts/out.txt?attempt=1"
    output = client.put(url, content=b"result", headers=auth(token))
    assert output.status_code == 507 and output.json()["error"] == "insufficient_storage"
    assert report(client, made["id"], token, 1).status_code == 200
    assert client.get(f"/api/jobs/{made['id']}", headers=KEY).json()["job"]["status"] == "completed"
    assert blob_files(tmp_path) == set()
