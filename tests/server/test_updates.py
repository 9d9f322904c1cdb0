"""The coordinator's side of worker updates: the signed release, the offer in heartbeat
answers, a staged rollout, versions a worker rolled back from, and the version floor."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from qubix_cli.server.updates import in_rollout
from qubix_cli.worker import AGENT_VERSION, ed25519
from qubix_cli.worker.update import check, older
from tests.conftest import auth
from tests.helpers import register_body
from tests.server.test_jobs import lease, report, submit

OLD = "0.0.9"


def old_worker(client: TestClient, name: str, **body: Any) -> str:
    answer = client.post(
        "/api/providers/quick-register",
        json=register_body(name, agentVersion=OLD, capabilities=["sleep"], **body),
    )
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["workerToken"]
    return token


def beat(client: TestClient, name: str, token: str) -> Any:
    return client.post(
        f"/api/providers/{name}/heartbeat", json={"status": "online"}, headers=auth(token)
    )


def test_the_release_is_signed_with_the_key_the_installers_embed(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["workerVersion"] == AGENT_VERSION
    token = old_worker(client, "w1")
    offer = beat(client, "w1", token).json()["update"]
    assert offer["version"] == AGENT_VERSION
    data = client.get(offer["url"]).content
    assert hashlib.sha256(data).hexdigest() == offer["sha256"] and len(data) == offer["size"]
    check(offer, data, bytes.fromhex(health["updateKey"]))  # raises if it does not check
    installer = client.get("/api/installer/linux").text
    assert f"UPDATE_KEY={health['updateKey']}" in installer
    assert "PRIVATE" not in installer and "update-key.pem" not in client.get("/").text


def test_a_current_worker_is_offered_nothing(client: TestClient) -> None:
    token = client.post(
        "/api/providers/quick-register", json=register_body("w1", agentVersion=AGENT_VERSION)
    ).json()["workerToken"]
    assert beat(client, "w1", token).json()["update"] is None
    shown = client.get("/api/providers/w1").json()["provider"]
    assert shown["outdated"] is False
    old_worker(client, "w2")
    assert client.get("/api/providers/w2").json()["provider"]["outdated"] is True


def test_a_rollout_of_half_offers_to_the_same_half(make_client: Any) -> None:
    client = make_client(update_rollout=50)
    offered = []
    for i in range(40):
        name = f"w{i:02d}"
        token = old_worker(client, name)
        if beat(client, name, token).json()["update"] is not None:
            offered.append(name)
    assert offered == [f"w{i:02d}" for i in range(40) if in_rollout(f"w{i:02d}", 50)]
    assert 12 <= len(offered) <= 28  # about half


def test_a_version_a_worker_rolled_back_from_is_not_offered_to_it_again(
    client: TestClient,
) -> None:
    token = old_worker(client, "w1")
    assert beat(client, "w1", token).json()["update"] is not None
    again = client.post(
        "/api/providers/quick-register",
        json=register_body("w1", agentVersion=OLD, updateFailed=AGENT_VERSION),
        headers=auth(token),
    )
    assert again.status_code == 200
    assert again.json()["provider"]["failedUpdates"] == [AGENT_VERSION]
    assert beat(client, "w1", token).json()["update"] is None
    other = old_worker(client, "w2")
    assert beat(client, "w2", other).json()["update"] is not None  # others still are


def test_the_floor_turns_older_agents_away_with_the_offer(make_client: Any) -> None:
    client = make_client(canaries=False)
    token = old_worker(client, "w1")  # registered before the floor
    job = submit(client)
    assert lease(client, "w1", token) is not None
    floored = make_client(canaries=False, min_agent_version=AGENT_VERSION)  # a restart
    refused = floored.post(
        "/api/providers/quick-register", json=register_body("w2", agentVersion=OLD)
    )
    assert refused.status_code == 426 and refused.json()["error"] == "agent_too_old"
    assert refused.json()["details"]["update"]["version"] == AGENT_VERSION
    assert f"older than {AGENT_VERSION}" in refused.json()["message"]
    assert beat(floored, "w1", token).status_code == 426
    polled = floored.get("/api/jobs/pending/w1", headers=auth(token))
    assert polled.status_code == 426
    done = report(floored, job["id"], token, 1)  # its result is still taken
    assert done.status_code == 200 and done.json()["job"]["status"] == "completed"
    current = floored.post("/api/providers/quick-register", json=register_body("w3"))
    assert current.status_code == 201


def test_versions_compare_as_numbers() -> None:
    assert older("0.9.0", "0.10.0") and not older("0.10.0", "0.9.0")
    assert older(None, "0.1.0") and not older("0.1.0", "0.1.0")


def test_the_signature_covers_version_hash_and_size(client: TestClient) -> None:
    """What `check` refuses (worker/update.py): each part of the offer is signed."""
    import pytest

    from qubix_cli.worker.update import Refused

    health = client.get("/healthz").json()
    key = bytes.fromhex(health["updateKey"])
    token = old_worker(client, "w1")
    offer = beat(client, "w1", token).json()["update"]
    data = client.get(offer["url"]).content
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(Refused, match="SHA-256"):
        check(offer, tampered, key)
    # a valid signature, but of another SHA-256 than these bytes have
    forged = {**offer, "sha256": hashlib.sha256(tampered).hexdigest()}
    with pytest.raises(Refused, match="signature"):
        check(forged, tampered, key)
    with pytest.raises(Refused, match="signature"):
        check({**offer, "version": "9.9.9"}, data, key)
    with pytest.raises(Refused, match="bytes"):
        check(offer, data + b"x", key)
    other = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    with pytest.raises(Refused, match="signature"):
        check(offer, data, other)  # signed by another key
    assert ed25519.verify(key, b"x", bytes(64)) is False


def start_together(data: Path, count: int) -> tuple[list[str], list[str]]:
    """The update key and the API key each of `count` servers starting at the same moment
    on one data dir gets."""
    import threading

    from qubix_cli.server.settings import load_or_create_api_key
    from qubix_cli.server.updates import UpdateKey

    update_keys: list[str] = []
    api_keys: list[str] = []
    together = threading.Barrier(count)

    def start() -> None:
        together.wait()
        update_keys.append(UpdateKey(data).public_hex)
        together.wait()  # and the API key at the same moment too
        api_keys.append(load_or_create_api_key(data)[0])

    threads = [threading.Thread(target=start) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return update_keys, api_keys


def test_servers_starting_together_on_one_data_dir_make_one_update_key_and_one_api_key(
    tmp_path: Path,
) -> None:
    """Replicas share a data dir: started at once, each must come up, with the same keys
    (eight at a time, on 20 fresh data dirs: a race shows in a few)."""
    for attempt in range(20):
        data = tmp_path / str(attempt)
        data.mkdir()
        update_keys, api_keys = start_together(data, 8)
        assert len(update_keys) == 8 and len(set(update_keys)) == 1, attempt
        assert len(api_keys) == 8 and len(set(api_keys)) == 1, attempt
        assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
