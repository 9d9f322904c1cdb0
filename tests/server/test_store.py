"""The journaled TinyDB store on a real directory."""

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


def test_changes_survive_a_reopen(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for i in range(10):
        store.put("providers", _provider(i))
    store.delete("providers", "w3")
    store.put("providers", {"workerId": "w4", "n": 40})
    asyncio.run(store.sync())
    store.close()
    again = JournalStore(tmp_path)
    assert again.count("providers") == 9
    assert again.get("providers", "w3") is None
    assert again.get("providers", "w4") == {"workerId": "w4", "n": 40}
    again.close()


def test_compaction_writes_a_tinydb_snapshot_and_drops_old_journals(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for i in range(100):
        store.put("providers", _provider(i))
    store.compact()
    store.put("providers", _provider(100))
    store.close()
    journals = sorted(p.name for p in tmp_path.glob("journal-*.jsonl"))
    assert journals == ["journal-00000002.jsonl"]
    db = TinyDB(tmp_path / SNAPSHOT_NAME, storage=AtomicJSONStorage)
    assert len(db.table("providers").all()) == 100  # the snapshot is a TinyDB database
    again = JournalStore(tmp_path)
    assert again.count("providers") == 101
    again.close()


def test_a_crash_during_compaction_loses_nothing(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for i in range(5):
        store.put("providers", _provider(i))
    store.close()
    # as if a compaction switched to journal 2 and died before its snapshot was renamed
    (tmp_path / "journal-00000002.jsonl").write_text(
        json.dumps({"t": "providers", "k": "w9", "d": _provider(9)}) + "\n"
    )
    (tmp_path / f".{SNAPSHOT_NAME}.tmp").write_text("{half a snap")
    again = JournalStore(tmp_path)
    assert again.count("providers") == 6
    again.put("providers", _provider(10))
    again.close()
    assert JournalStore(tmp_path).count("providers") == 7


def test_background_compaction_when_the_journal_outgrows_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qubix_cli.server.store._MIN_COMPACT_BYTES", 2000)
    store = JournalStore(tmp_path)
    for i in range(500):
        store.put("providers", _provider(i))
    store.close()
    assert (tmp_path / SNAPSHOT_NAME).exists()
    assert len(list(tmp_path.glob("journal-*.jsonl"))) <= 2
    assert JournalStore(tmp_path).count("providers") == 500


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    store.put("providers", _provider(1))
    store.close()
    journal = next(tmp_path.glob("journal-*.jsonl"))
    with open(journal, "ab") as f:
        f.write(b'{"t":"providers","k":"w2","d":{"workerId":"w')
    again = JournalStore(tmp_path)
    assert again.count("providers") == 1
    again.put("providers", _provider(3))
    again.close()
    assert sorted(d["workerId"] for d in JournalStore(tmp_path).values("providers")) == ["w1", "w3"]


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
        store.put("providers", _provider(i))
        await store.sync()

    async def main() -> None:
        await asyncio.gather(*(writer(i) for i in range(200)))

    asyncio.run(main())
    assert len(calls) < 50  # 200 acknowledged writes, a few group commits
    store.close()
    assert JournalStore(tmp_path).count("providers") == 200


def test_a_failed_append_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JournalStore(tmp_path)
    store.put("providers", _provider(1))

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qubix_cli.server.store.os.write", full)
    with pytest.raises(StorageError, match="disk is full"):
        store.put("providers", _provider(2))
    monkeypatch.undo()
    assert store.get("providers", "w2") is None
    store.close()
    assert JournalStore(tmp_path).count("providers") == 1
