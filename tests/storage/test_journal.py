"""What is particular to the embedded store: its journal, snapshots and group commit, on a
real directory. (What every backend does is in test_contract.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tinydb import TinyDB

from qubix_cli.errors import StorageError
from qubix_cli.server.store import SNAPSHOT_NAME, AtomicJSONStorage, JournalStore


def _provider(i: int) -> dict[str, object]:
    return {"workerId": f"w{i}", "n": i}


def put(store: JournalStore, *docs: dict[str, object]) -> None:
    async def body() -> None:
        async with store.transaction() as tx:
            for doc in docs:
                tx.put("providers", doc)

    asyncio.run(body())


def count(store: JournalStore) -> int:
    return asyncio.run(store.count("providers"))


def close(store: JournalStore) -> None:
    asyncio.run(store.close())


def test_changes_survive_a_reopen(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for i in range(10):
        put(store, _provider(i))

    async def change() -> None:
        async with store.transaction() as tx:
            tx.delete("providers", "w3")
            tx.put("providers", {"workerId": "w4", "n": 40})

    asyncio.run(change())
    close(store)
    again = JournalStore(tmp_path)
    assert count(again) == 9
    assert asyncio.run(again.get("providers", "w3")) is None
    assert asyncio.run(again.get("providers", "w4")) == {"workerId": "w4", "n": 40}
    close(again)


def test_compaction_writes_a_tinydb_snapshot_and_drops_old_journals(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    put(store, *(_provider(i) for i in range(100)))
    store.compact()
    put(store, _provider(100))
    close(store)
    journals = sorted(p.name for p in tmp_path.glob("journal-*.jsonl"))
    assert journals == ["journal-00000002.jsonl"]
    db = TinyDB(tmp_path / SNAPSHOT_NAME, storage=AtomicJSONStorage)
    assert len(db.table("providers").all()) == 100  # the snapshot is a TinyDB database
    again = JournalStore(tmp_path)
    assert count(again) == 101
    close(again)


def test_a_crash_during_compaction_loses_nothing(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for i in range(5):
        put(store, _provider(i))
    close(store)
    # as if a compaction switched to journal 2 and died before its snapshot was renamed
    (tmp_path / "journal-00000002.jsonl").write_text(
        json.dumps({"t": "providers", "k": "w9", "d": _provider(9)}) + "\n"
    )
    (tmp_path / f".{SNAPSHOT_NAME}.tmp").write_text("{half a snap")
    again = JournalStore(tmp_path)
    assert count(again) == 6
    put(again, _provider(10))
    close(again)
    assert count(JournalStore(tmp_path)) == 7


def test_background_compaction_when_the_journal_outgrows_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qubix_cli.server.store._MIN_COMPACT_BYTES", 2000)
    store = JournalStore(tmp_path)
    for i in range(500):
        put(store, _provider(i))
    close(store)
    assert (tmp_path / SNAPSHOT_NAME).exists()
    assert len(list(tmp_path.glob("journal-*.jsonl"))) <= 2
    assert count(JournalStore(tmp_path)) == 500


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    put(store, _provider(1))
    close(store)
    journal = next(tmp_path.glob("journal-*.jsonl"))
    with open(journal, "ab") as f:
        f.write(b'{"w":[["providers","w2",{"workerId":"w')
    again = JournalStore(tmp_path)
    assert count(again) == 1
    put(again, _provider(3))
    close(again)
    docs = asyncio.run(JournalStore(tmp_path).scan("providers"))
    assert sorted(d["workerId"] for d in docs) == ["w1", "w3"]


def test_journals_of_earlier_versions_are_read(tmp_path: Path) -> None:
    journal = tmp_path / "journal-00000001.jsonl"
    journal.write_text(
        '{"t":"providers","k":"w1","d":{"workerId":"w1"}}\n'
        '{"t":"providers","k":"w2","d":{"workerId":"w2"}}\n{"t":"providers","k":"w1"}\n'
    )
    docs = asyncio.run(JournalStore(tmp_path).scan("providers"))
    assert docs == [{"workerId": "w2"}]


def test_a_damaged_journal_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    journal = tmp_path / "journal-00000001.jsonl"
    journal.write_text('{"t":"providers","k":"w1","d":{"workerId":"w1"}}\ngarbage\n{}\n')
    before = journal.read_bytes()
    with pytest.raises(StorageError, match="journal-00000001.jsonl is damaged at line 2"):
        JournalStore(tmp_path)
    assert journal.read_bytes() == before


@pytest.mark.parametrize("content", [b'{"providers": {"1": {"workerId"', b"[]", b"\xff\xfe"])
def test_a_damaged_snapshot_is_an_error_naming_it_and_left_untouched(
    tmp_path: Path, content: bytes
) -> None:
    snapshot = tmp_path / SNAPSHOT_NAME
    snapshot.write_bytes(content)
    with pytest.raises(StorageError, match=SNAPSHOT_NAME):
        JournalStore(tmp_path)
    assert snapshot.read_bytes() == content


def test_concurrent_syncs_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JournalStore(tmp_path)
    calls = []
    real_fsync = __import__("os").fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr("qubix_cli.server.store.os.fsync", counting_fsync)

    async def writer(i: int) -> None:
        async with store.transaction() as tx:
            tx.put("providers", _provider(i))

    async def main() -> None:
        await asyncio.gather(*(writer(i) for i in range(200)))

    asyncio.run(main())
    assert len(calls) < 50  # 200 acknowledged writes, a few group commits
    close(store)
    assert count(JournalStore(tmp_path)) == 200


def test_a_failed_append_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JournalStore(tmp_path)
    put(store, _provider(1))

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qubix_cli.server.store.os.write", full)
    with pytest.raises(StorageError, match="disk is full"):
        put(store, _provider(2))
    monkeypatch.undo()
    assert asyncio.run(store.get("providers", "w2")) is None
    close(store)
    assert count(JournalStore(tmp_path)) == 1


def test_every_data_file_is_private_and_an_open_data_dir_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "liveness.json").write_text("{}")
    (data / "liveness.json").chmod(0o644)
    store = JournalStore(data)
    assert "now 0700" in caplog.text
    put(store, _provider(1))
    store.compact()
    store.remember("liveness", "w1", {"status": "online"})
    asyncio.run(store.save_volatile())
    close(store)
    assert data.stat().st_mode & 0o777 == 0o700
    files = sorted(p.name for p in data.iterdir())
    assert "qubix.json" in files and "liveness.json" in files
    assert {p.name: p.stat().st_mode & 0o777 for p in data.iterdir()} == dict.fromkeys(files, 0o600)


def test_a_data_dir_from_before_the_safety_fields_keeps_working(tmp_path: Path) -> None:
    """A provider stored without `clientIp` re-registers, and a lease taken before leases
    recorded their token is reported by its worker."""
    from starlette.testclient import TestClient

    from qubix_cli.server.app import create_app
    from qubix_cli.server.http import token_hash
    from qubix_cli.server.settings import Settings
    from tests.helpers import API_KEY, KEY, register_body

    provider = {
        **register_body("old"),
        "gpus": [],
        "registeredAt": 1.0,
        "lastRegisteredAt": 1.0,
        "tokenHash": token_hash("old-token"),
    }
    job = {
        "type": "sleep", "payload": {"seconds": 0}, "requirements": {}, "providerId": None,
        "timeoutS": 3600, "maxAttempts": 3, "id": "job_old", "status": "assigned",
        "attempt": 1, "workerId": "old", "createdAt": 1.0, "updatedAt": 9e9, "result": None,
        "metrics": None, "history": [{"event": "created", "at": 1.0}],
    }  # fmt: skip
    lines = [{"t": "providers", "k": "old", "d": provider}, {"t": "jobs", "k": "job_old", "d": job}]
    (tmp_path / "journal-00000001.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with TestClient(create_app(Settings(data_dir=tmp_path, api_key=API_KEY))) as client:
        token = {"Authorization": "Bearer old-token"}
        again = client.post(
            "/api/providers/quick-register", json=register_body("old"), headers=token
        )
        assert again.status_code == 200, again.text
        report = {"attempt": 1, "status": "completed", "result": {"ok": True}}
        done = client.post("/api/jobs/job_old/complete", json=report, headers=token)
        assert done.status_code == 200, done.text
        assert client.get("/api/jobs/job_old", headers=KEY).json()["job"]["status"] == "completed"
