"""Durable storage: one small interface, with TinyDB plus a write-ahead journal behind it.

TinyDB's own storage is handed the whole database on every write, so one rewrite per
acknowledged write costs O(size of the database). Here each acknowledged change is one
JSON line appended to a journal and fsynced (concurrent writers share one fsync: group
commit). The TinyDB file is a snapshot, replaced atomically (temp file, fsync, rename)
when the journal has grown as large as the snapshot, so a write costs O(1) amortized and
a crash never leaves a torn database. At start the journal is replayed over the snapshot.

Documents handed to `put` are owned by the store afterwards: callers never mutate them,
they put a new dict. That lets a snapshot be taken from a shallow copy.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from tinydb.storages import Storage

from qubix_cli.errors import StorageError

Doc = dict[str, Any]

# Each table and the document field that is its key.
TABLES = {"providers": "workerId", "jobs": "id"}
SNAPSHOT_NAME = "qubix.json"
_META = "_meta"
_MIN_COMPACT_BYTES = 4 * 1024 * 1024


class Store(Protocol):
    """What the server needs from storage. `put`/`delete` apply at once in memory and are
    on disk after the next `await sync()`; answer a client only after that."""

    def get(self, table: str, key: str) -> Doc | None: ...

    def values(self, table: str) -> Iterator[Doc]: ...

    def put(self, table: str, doc: Doc) -> None: ...

    def delete(self, table: str, key: str) -> None: ...

    async def sync(self) -> None: ...

    def close(self) -> None: ...


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def json_members(docs: Mapping[str, Any], per: int = 1) -> Iterator[str]:
    """The members of a JSON object (`"key":document,...`), `per` entries encoded at a time.

    A single json.dumps of 10,000 documents holds the GIL for its whole run (over 100 ms):
    from a background thread that stalls every request, and on the event loop it blocks
    it. Between pieces a thread lets the loop run, and a coroutine can pause."""
    entries = list(docs.items())
    for start in range(0, len(entries), per):
        piece = dict(entries[start : start + per])
        yield json.dumps(piece, separators=(",", ":"))[1:-1]


def json_object(members: Iterable[str]) -> str:
    return "{" + ",".join(members) + "}"


class AtomicJSONStorage(Storage):
    """A TinyDB storage that never tears its file: `TinyDB(path, storage=AtomicJSONStorage)`
    opens a Qubix snapshot safely, and the store writes its snapshots through it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Doc]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read the database {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(
                f"the database {self.path} is damaged ({exc}); it was left untouched. "
                "Restore it from a backup or move it away to start empty."
            ) from exc
        if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
            raise StorageError(f"the database {self.path} is not a Qubix database; left untouched")
        return data

    def write(self, data: dict[str, dict[str, Doc]]) -> None:
        tables = (f"{json.dumps(name)}:{json_object(json_members(d))}" for name, d in data.items())
        write_atomically(self.path, json_object(tables).encode())


def _journal_name(generation: int) -> str:
    return f"journal-{generation:08d}.jsonl"


class JournalStore:
    """The embedded default store: a TinyDB snapshot plus an append-only journal."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the data directory {data_dir}: {exc}") from exc
        self._snapshot = AtomicJSONStorage(data_dir / SNAPSHOT_NAME)
        self._tables: dict[str, dict[str, Doc]] = {name: {} for name in TABLES}
        self._lock = threading.Lock()
        self._sync_lock = asyncio.Lock()
        self._appended = 0
        self._durable = 0
        self._compacting: threading.Thread | None = None
        self._snapshot_bytes = 0
        self._generation = self._load()
        self._journal_path = data_dir / _journal_name(self._generation)
        self._fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._journal_bytes = os.fstat(self._fd).st_size

    # -- loading ---------------------------------------------------------------------

    def _load(self) -> int:
        raw = self._snapshot.read() or {}
        self._snapshot_bytes = self._snapshot.path.stat().st_size if raw else 0
        meta = raw.get(_META, {}).get("1", {})
        generation: object = meta.get("generation", 1) if isinstance(meta, dict) else None
        if not isinstance(generation, int):
            raise StorageError(f"the database {self._snapshot.path} is damaged; left untouched")
        for table, field in TABLES.items():
            for entry, doc in raw.get(table, {}).items():
                if not isinstance(doc, dict) or not isinstance(doc.get(field), str):
                    raise StorageError(
                        f"the database {self._snapshot.path} is damaged ({table} entry {entry} "
                        f"has no {field}); it was left untouched"
                    )
                self._tables[table][doc[field]] = doc
        for path in sorted(self.data_dir.glob("journal-*.jsonl")):
            number = int(path.stem.split("-")[1])
            if number < generation:
                path.unlink()  # already folded into the snapshot
            else:
                self._replay(path)
                generation = number
        return generation

    def _replay(self, path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                entry = json.loads(line)
                self._apply(entry["t"], entry["k"], entry.get("d"))
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):
                    # A torn last line: its write never finished, so it was never acknowledged.
                    self._truncate_torn_tail(path, len(line))
                    return
                raise StorageError(
                    f"the journal {path} is damaged at line {number}; it was left untouched"
                ) from exc

    @staticmethod
    def _truncate_torn_tail(path: Path, torn: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - torn)

    def _apply(self, table: str, key: str, doc: Doc | None) -> None:
        if doc is None:
            self._tables[table].pop(key, None)
        else:
            self._tables[table][key] = doc

    # -- the interface ---------------------------------------------------------------

    def get(self, table: str, key: str) -> Doc | None:
        return self._tables[table].get(key)

    def values(self, table: str) -> Iterator[Doc]:
        return iter(list(self._tables[table].values()))

    def count(self, table: str) -> int:
        return len(self._tables[table])

    def put(self, table: str, doc: Doc) -> None:
        key = doc[TABLES[table]]
        self._write({"t": table, "k": key, "d": doc})

    def delete(self, table: str, key: str) -> None:
        self._write({"t": table, "k": key})

    def _write(self, entry: Doc) -> None:
        """Append to the journal, then apply in memory: a failed append changes nothing."""
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError as exc:
                os.ftruncate(self._fd, self._journal_bytes)  # leave no torn line behind
                raise _disk_error(exc) from exc
            self._journal_bytes += len(line)
            self._appended += 1
            self._apply(entry["t"], entry["k"], entry.get("d"))
        self._maybe_compact()

    async def sync(self) -> None:
        """Wait until every change made so far is on disk. Concurrent callers share fsyncs."""
        wanted = self._appended
        async with self._sync_lock:
            if self._durable >= wanted:
                return
            target, fd = self._appended, self._fd
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                raise _disk_error(exc) from exc
            self._durable = max(self._durable, target)

    def close(self) -> None:
        compacting = self._compacting
        if compacting is not None:
            compacting.join()
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    # -- compaction ------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        threshold = max(_MIN_COMPACT_BYTES, self._snapshot_bytes)
        if self._journal_bytes < threshold or self._compacting is not None:
            return
        self.compact(background=True)

    def compact(self, background: bool = False) -> None:
        """Fold the journal into a fresh snapshot; new writes go to a new journal."""
        with self._lock:
            os.fsync(self._fd)
            self._durable = self._appended
            tables = {name: dict(docs) for name, docs in self._tables.items()}
            old_fd, self._generation = self._fd, self._generation + 1
            self._journal_path = self.data_dir / _journal_name(self._generation)
            self._fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._journal_bytes = 0
            os.close(old_fd)
        generation = self._generation
        if background:
            self._compacting = threading.Thread(
                target=self._write_snapshot, args=(tables, generation), daemon=True
            )
            self._compacting.start()
        else:
            self._write_snapshot(tables, generation)

    def _write_snapshot(self, tables: dict[str, dict[str, Doc]], generation: int) -> None:
        raw: dict[str, dict[str, Doc]] = {
            name: {str(i): doc for i, doc in enumerate(docs.values(), 1)}
            for name, docs in tables.items()
        }
        raw[_META] = {"1": {"generation": generation}}
        try:
            self._snapshot.write(raw)
            self._snapshot_bytes = self._snapshot.path.stat().st_size
            for path in self.data_dir.glob("journal-*.jsonl"):
                if int(path.stem.split("-")[1]) < generation:
                    path.unlink()
        except OSError:
            pass  # the journals still hold everything; the next compaction retries
        finally:
            self._compacting = None


def _disk_error(exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError("the server's disk is full; nothing was saved. Try again later.")
    return StorageError(f"the server could not save this change ({exc.strerror}); try again")
