"""Storage: the one seam between the coordinator and its data (docs/architecture.md).

`Store` is what every backend provides. Durable documents change only inside
`async with store.transaction() as tx:`; a change is visible to other readers once it is
on disk, and a failed commit leaves nothing of it anywhere (`StorageError`).
Volatile state (liveness, lease renewals, pending cancels) is written without waiting for
the disk and saved in the background: a heartbeat never writes the database.

`JournalStore`, the embedded default, keeps a TinyDB snapshot plus an append-only journal.
TinyDB's own storage is handed the whole database on every write, so one rewrite per
acknowledged write costs O(size of the database). Here each transaction is one JSON line
appended to the journal and fsynced (concurrent transactions share one fsync: group
commit). The snapshot is replaced atomically (temp file, fsync, rename) when the journal
has grown as large as it, so a write costs O(1) amortized and a crash never leaves a torn
database. At start the journal is replayed over the snapshot.

Documents handed to `put` are owned by the store afterwards: callers never mutate a
document they read or wrote, they put a new dict. That lets a snapshot be taken from a
shallow copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tinydb.storages import Storage

from qubix_cli.errors import StorageError

Doc = dict[str, Any]
log = logging.getLogger("qubix.store")


@dataclass(frozen=True)
class Table:
    key: str  # the document field that is its key
    indexes: tuple[str, ...] = ()  # fields that `scan(where=...)` finds quickly


TABLES = {
    "providers": Table("workerId", ("tokenHash", "clientIp", "qubicAddress")),
    "jobs": Table("id", ("status", "workerId", "account")),
    "keys": Table("id", ("hash", "account")),
    "logs": Table("id", ("jobId",)),  # a running job's output, a chunk a document
    "accounts": Table("name"),
    "ledger": Table("id", ("account", "qubicAddress", "jobId")),  # append-only
    "uploads": Table("id", ("account",)),  # who uploaded which input: storage quotas
}
# Volatile state, per kind: key -> document. Kept in memory, saved now and then.
VOLATILE = ("liveness", "leases", "cancels", "registrations", "keyUse", "submissions")
# What those watching the store (`observe_change`) are told of a committed change to a
# document of these tables: its key and these fields, never its contents (on PostgreSQL
# the other servers on the database are told too).
WATCHED = {"jobs": ("status", "workerId"), "providers": ()}
ANYTHING = "*"  # a change's table when changes may have been missed: anything may have


def summary(table: str, doc: Doc | None) -> Doc | None:
    """What a change to `doc` tells watchers (None: deleted)."""
    return None if doc is None else {field: doc.get(field) for field in WATCHED[table]}


Changed = Callable[[str, str, "Doc | None", bool], None]  # table, key, summary, made here


def set_entry(entries: dict[str, Doc], key: str, doc: Doc | None) -> None:
    """Set one entry of volatile state (None: forget it)."""
    if doc is None:
        entries.pop(key, None)
    else:
        entries[key] = doc


def run_later(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
    """Run `work` in the background, kept in `tasks` until it is done (the event loop keeps
    only a weak reference to a task)."""
    task = asyncio.get_running_loop().create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def tell(observe: Changed, writes: Mapping[tuple[str, str], Doc | None]) -> None:
    """Tell `observe` of a commit's changes to watched tables, made in this process."""
    for (table, key), doc in writes.items():
        if table in WATCHED:
            observe(table, key, summary(table, doc), True)


class Reader(Protocol):
    async def get(self, table: str, key: str) -> Doc | None: ...

    async def scan(
        self,
        table: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Doc]:
        """Documents whose fields equal `where`, ordered by `order_by` then by key (without
        `order_by`, in no particular order)."""
        ...

    async def count(self, table: str, where: Mapping[str, Any] | None = None) -> int: ...


class Transaction(Reader, Protocol):
    """Reads see the transaction's own writes; transactions are serializable."""

    def put(self, table: str, doc: Doc) -> None: ...

    def delete(self, table: str, key: str) -> None: ...


class Store(Reader, Protocol):
    """What the coordinator needs from storage. Reads outside a transaction see only what
    is durable."""

    observe_commit: Callable[[float], None]  # told the seconds each commit took (metrics)
    # Told of each committed change to a `WATCHED` table, made here or by another server
    # on the same store, and (ANYTHING, "", None, False) when some may have been missed.
    observe_change: Changed
    observe_event: Callable[[Doc], None]  # told of an event another server published
    save_every_s: float  # how often `save_volatile` is called

    def share_event(self, event: Doc) -> None:
        """Tell the other servers on this store of an event published here."""
        ...

    def leads(self) -> bool:
        """Whether this server does the periodic work (offline providers, expired leases,
        forgetting): one server at a time on a store."""
        ...

    async def others(self) -> int:
        """How many other servers use this store now."""
        ...

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """A unit of work: on a clean exit it is committed and durable before the block's
        caller goes on; if the commit fails, nothing of it is visible and
        `StorageError` is raised. Keep the block short: it holds off other writers."""
        ...

    def remember(self, kind: str, key: str, value: Doc | None) -> None:
        """Set (None: forget) volatile state. Not durable; saved by `save_volatile`."""
        ...

    async def recall(self, kind: str, key: str) -> Doc | None: ...

    async def recall_all(self, kind: str) -> dict[str, Doc]: ...

    async def save_volatile(self) -> None: ...

    async def close(self) -> None: ...


# -- files ---------------------------------------------------------------------------


def private(data_dir: Path) -> None:
    """Only its owner may read the data dir (tokens' hashes, jobs' secrets): a directory
    that others could read is tightened to 0700, and its files to 0600, once."""
    if os.name == "nt" or data_dir.stat().st_mode & 0o077 == 0:
        return
    log.warning("the data directory %s was readable by others; it is now 0700", data_dir)
    data_dir.chmod(0o700)
    for path in data_dir.iterdir():
        if path.is_file():
            path.chmod(0o600)


def make_data_dir(data_dir: Path) -> None:
    """The data dir, made (0700) if it is missing: the store's, and the keys' and files'."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private(data_dir)
    except OSError as exc:
        raise StorageError(f"cannot create the data directory {data_dir}: {exc}") from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes) -> bytes:
    """What `path` holds: `data`, written there (0600, fsynced) unless it already exists.
    Servers that start together on one data dir all end up with the same file, whichever
    wrote it (a temp file linked into place: never a half-written one)."""
    if path.exists():
        return path.read_bytes()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path.read_bytes()  # another server made it first: its file it is
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return data


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


# -- the embedded store ----------------------------------------------------------------

SNAPSHOT_NAME = "qubix.json"
_META = "_meta"
_MIN_COMPACT_BYTES = 4 * 1024 * 1024
_VOLATILE_CHUNK = 500
Writes = dict[tuple[str, str], "Doc | None"]


def _journal_name(generation: int) -> str:
    return f"journal-{generation:08d}.jsonl"


def _matches(doc: Doc, where: Mapping[str, Any] | None) -> bool:
    return where is None or all(doc.get(field) == value for field, value in where.items())


def ordered(
    docs: list[Doc],
    table: str,
    order_by: str | None,
    descending: bool,
    offset: int,
    limit: int | None,
) -> list[Doc]:
    """`scan`'s order and page over documents in hand: by `order_by`, then by key."""
    if order_by is not None:
        key = TABLES[table].key
        docs.sort(key=lambda d: (d.get(order_by), d[key]), reverse=descending)
    return docs[offset : None if limit is None else offset + limit]


class VolatileState:
    """Volatile state kept in memory, per kind (`VOLATILE`); a backend saves `_changed`
    kinds in its `save_volatile` and loads them before `_loaded` returns."""

    _volatile: dict[str, dict[str, Doc]]
    _changed: set[str]  # kinds of volatile state changed since saved

    async def _loaded(self) -> None:
        """What was saved before a restart is in `_volatile` (a backend may load lazily)."""

    def remember(self, kind: str, key: str, value: Doc | None) -> None:
        set_entry(self._volatile[kind], key, value)
        self._changed.add(kind)

    async def recall(self, kind: str, key: str) -> Doc | None:
        await self._loaded()
        return self._volatile[kind].get(key)

    async def recall_all(self, kind: str) -> dict[str, Doc]:
        await self._loaded()
        return self._volatile[kind]


class _Scans:
    """`scan` and `count` over the documents a reader sees (`_matching`)."""

    def _matching(self, table: str, where: Mapping[str, Any] | None) -> list[Doc]:
        raise NotImplementedError

    async def scan(
        self,
        table: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Doc]:
        return ordered(self._matching(table, where), table, order_by, descending, offset, limit)

    async def count(self, table: str, where: Mapping[str, Any] | None = None) -> int:
        return len(self._matching(table, where))


class JournalStore(_Scans, VolatileState):
    """The embedded default store: a TinyDB snapshot plus an append-only journal.

    Memory holds the newest state, which transactions read. A committed transaction whose
    fsync has not finished is "pending": reads outside transactions see the value from
    before it (`_before`), and if the fsync fails, every pending transaction is undone in
    memory and cut from the journal."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        make_data_dir(data_dir)
        self._snapshot = AtomicJSONStorage(data_dir / SNAPSHOT_NAME)
        self._tables: dict[str, dict[str, Doc]] = {name: {} for name in TABLES}
        self._indexes: dict[str, dict[str, dict[Any, dict[str, None]]]] = {
            name: {field: {} for field in table.indexes} for name, table in TABLES.items()
        }
        self._tx_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self._seq = self._durable_seq = self._lost_seq = 0
        self._lost = "the change was not saved; try again"  # why pending changes were undone
        self._undo: list[
            tuple[int, str, str, Doc | None]
        ] = []  # pending: (seq, table, key, before)
        self._before: dict[tuple[str, str], Doc | None] = {}  # durable value of pending keys
        self._compacting: threading.Thread | None = None
        self._snapshot_bytes = 0
        self._generation = self._load()
        self._journal_path = data_dir / _journal_name(self._generation)
        self._fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._journal_bytes = self._durable_bytes = os.fstat(self._fd).st_size
        self._volatile = {kind: self._load_volatile(kind) for kind in VOLATILE}
        self._changed = set()
        self.observe_commit: Callable[[float], None] = _ignore  # metrics: seconds per commit
        self.observe_change: Changed = _ignore_change
        self.observe_event: Callable[[Doc], None] = _ignore_event
        self.save_every_s = 5.0

    def share_event(self, event: Doc) -> None:
        pass  # no other server uses this data dir

    def leads(self) -> bool:
        return True

    async def others(self) -> int:
        return 0  # one server a data dir

    # -- loading -----------------------------------------------------------------------

    def _load(self) -> int:
        raw = self._snapshot.read() or {}
        self._snapshot_bytes = self._snapshot.path.stat().st_size if raw else 0
        meta = raw.get(_META, {}).get("1", {})
        generation: object = meta.get("generation", 1) if isinstance(meta, dict) else None
        if not isinstance(generation, int):
            raise StorageError(f"the database {self._snapshot.path} is damaged; left untouched")
        for name, table in TABLES.items():
            for entry, doc in raw.get(name, {}).items():
                if not isinstance(doc, dict) or not isinstance(doc.get(table.key), str):
                    raise StorageError(
                        f"the database {self._snapshot.path} is damaged ({name} entry {entry} "
                        f"has no {table.key}); it was left untouched"
                    )
                self._apply(name, doc[table.key], doc)
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
                # One line per transaction; a line of one write is how earlier versions wrote.
                writes = entry["w"] if "w" in entry else [[entry["t"], entry["k"], entry.get("d")]]
                for table, key, doc in writes:
                    self._apply(table, key, doc)
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
        docs, indexes = self._tables[table], self._indexes[table]
        old = docs.pop(key, None)
        for field, index in indexes.items():
            if old is not None:
                index.get(old.get(field), {}).pop(key, None)
            if doc is not None:
                index.setdefault(doc.get(field), {})[key] = None
        if doc is not None:
            docs[key] = doc

    # -- reading -----------------------------------------------------------------------

    async def get(self, table: str, key: str) -> Doc | None:
        if (table, key) in self._before:
            return self._before[(table, key)]
        return self._tables[table].get(key)

    def _newest(self, table: str, where: Mapping[str, Any] | None) -> Iterator[Doc]:
        """The newest documents (pending changes included) that match `where`."""
        docs, indexes = self._tables[table], self._indexes[table]
        buckets: list[dict[str, None]] = [
            indexes[f].get(v, {}) for f, v in (where or {}).items() if f in indexes
        ]
        if not buckets:
            return (d for d in list(docs.values()) if _matches(d, where))
        fewest: dict[str, None] = min(buckets, key=len)  # the fewest candidates
        keys = list(fewest)
        return (docs[k] for k in keys if _matches(docs[k], where))

    def _matching(self, table: str, where: Mapping[str, Any] | None) -> list[Doc]:
        """The durable documents that match `where`."""
        pending = {k: doc for (t, k), doc in self._before.items() if t == table}
        key = TABLES[table].key
        found = [d for d in self._newest(table, where) if d[key] not in pending]
        found += [d for d in pending.values() if d is not None and _matches(d, where)]
        return found

    # -- transactions ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._tx_lock:
            tx = _JournalTransaction(self)
            yield tx
            started = time.perf_counter()
            seq = self._stage(tx.writes) if tx.writes else 0
        if seq:
            await self._sync(seq)
            self.observe_commit(time.perf_counter() - started)
            tell(self.observe_change, tx.writes)

    def _stage(self, writes: Writes) -> int:
        """Append the transaction to the journal and apply it in memory as pending."""
        entry = {"w": [[table, key, doc] for (table, key), doc in writes.items()]}
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            os.ftruncate(self._fd, self._journal_bytes)  # leave no torn line behind
            raise disk_error(exc) from exc
        self._journal_bytes += len(line)
        self._seq += 1
        for (table, key), doc in writes.items():
            before = self._tables[table].get(key)
            self._undo.append((self._seq, table, key, before))
            self._before.setdefault((table, key), before)
            self._apply(table, key, doc)
        return self._seq

    async def _sync(self, seq: int) -> None:
        """Wait until transaction `seq` is on disk. Concurrent callers share fsyncs."""
        async with self._sync_lock:
            if seq <= self._durable_seq:
                return
            if seq <= self._lost_seq:
                raise StorageError(self._lost)
            target, size = self._seq, self._journal_bytes
            try:
                await asyncio.to_thread(os.fsync, self._fd)
            except OSError as exc:
                error = disk_error(exc)
                self._lost = error.message
                self._undo_pending()
                raise error from exc
            self._advance(target, size)
            try:
                self._maybe_compact()
            except OSError as exc:  # what was committed is durable; compaction waits
                log.error("cannot compact the journal %s: %s", self._journal_path, exc)

    def _advance(self, seq: int, size: int) -> None:
        """Transactions up to `seq` are durable: they become visible to every reader."""
        self._durable_seq, self._durable_bytes = seq, size
        self._undo = [u for u in self._undo if u[0] > seq]
        self._before = {}
        for _, table, key, before in self._undo:
            self._before.setdefault((table, key), before)

    def _undo_pending(self) -> None:
        """A failed fsync: every pending transaction is undone and cut from the journal."""
        for _, table, key, before in reversed(self._undo):
            self._apply(table, key, before)
        self._undo, self._before, self._lost_seq = [], {}, self._seq
        try:
            os.ftruncate(self._fd, self._durable_bytes)
            self._journal_bytes = self._durable_bytes
        except OSError as exc:
            log.error("cannot cut undone changes from the journal %s: %s", self._journal_path, exc)

    # -- volatile state ----------------------------------------------------------------

    def _load_volatile(self, kind: str) -> dict[str, Doc]:
        """Volatile state is a cache: if its file is missing or damaged, it starts empty."""
        try:
            data = json.loads((self.data_dir / f"{kind}.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def save_volatile(self) -> None:
        """Saved every few seconds and at shutdown.

        Encoded here on the event loop, 500 entries (about 3 ms) at a time with pauses
        between for the requests, and written from a thread: one json.dumps of 10,000 entries
        holds the loop for 60 ms, and encoding them in a thread slowed every request for
        longer (the two take turns with the GIL)."""
        for kind in list(self._changed):
            self._changed.discard(kind)  # a change from now on is saved next time
            try:
                members: list[str] = []
                for member in json_members(self._volatile[kind], per=_VOLATILE_CHUNK):
                    members.append(member)
                    await asyncio.sleep(0.005)
                data = json_object(members).encode()
                await asyncio.to_thread(write_atomically, self.data_dir / f"{kind}.json", data)
            except BaseException:
                self._changed.add(kind)  # not saved (cancelled at shutdown, or the disk): again
                raise

    # -- closing and compaction ----------------------------------------------------------

    async def close(self) -> None:
        compacting = self._compacting
        if compacting is not None:
            await asyncio.to_thread(compacting.join)
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _maybe_compact(self) -> None:
        threshold = max(_MIN_COMPACT_BYTES, self._snapshot_bytes)
        if self._journal_bytes >= threshold and self._compacting is None:
            self.compact(background=True)

    def compact(self, background: bool = False) -> None:
        """Fold the journal into a fresh snapshot; new writes go to a new journal."""
        os.fsync(self._fd)
        self._advance(self._seq, self._journal_bytes)
        tables = {name: dict(docs) for name, docs in self._tables.items()}
        old_fd, self._generation = self._fd, self._generation + 1
        self._journal_path = self.data_dir / _journal_name(self._generation)
        self._fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._journal_bytes = self._durable_bytes = 0
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


class _JournalTransaction(_Scans):
    """Writes are kept here until the commit; reads see them over the store's newest state
    (the store's transaction lock keeps any other transaction out meanwhile)."""

    def __init__(self, store: JournalStore) -> None:
        self.store = store
        self.writes: Writes = {}

    async def get(self, table: str, key: str) -> Doc | None:
        if (table, key) in self.writes:
            return self.writes[(table, key)]
        return self.store._tables[table].get(key)

    def _matching(self, table: str, where: Mapping[str, Any] | None) -> list[Doc]:
        mine = {k: doc for (t, k), doc in self.writes.items() if t == table}
        key = TABLES[table].key
        found = [d for d in self.store._newest(table, where) if d[key] not in mine]
        return found + [d for d in mine.values() if d is not None and _matches(d, where)]

    def put(self, table: str, doc: Doc) -> None:
        self.writes[(table, doc[TABLES[table].key])] = doc

    def delete(self, table: str, key: str) -> None:
        self.writes[(table, key)] = None


def _ignore(seconds: float) -> None:
    pass


def _ignore_change(table: str, key: str, summary: Doc | None, here: bool) -> None:
    pass


def _ignore_event(event: Doc) -> None:
    pass


def disk_error(exc: OSError) -> StorageError:
    """A failed write of the data dir as its answer says it (503, nothing saved)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError("the server's disk is full; nothing was saved. Try again later.")
    return StorageError(f"the server could not save this change ({exc.strerror}); try again")
