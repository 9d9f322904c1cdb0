"""PostgreSQL behind the storage seam (docs/scaling.md): `qubix serve --database URL`.

Each table of `store.TABLES` is one SQL table of documents (`key text`, `doc jsonb`),
with an expression index per indexed field; `scan(where=...)` compares whole JSON
values, so it finds what the embedded store finds. A transaction is one SQL transaction
that first takes a transaction-scoped advisory lock: writers are serialized, as in the
embedded store (one writer at a time, readers never wait), and its writes are sent at
commit. A commit that PostgreSQL acknowledges is durable; one that fails leaves nothing.

The schema is created and migrated at start (`MIGRATIONS`, in order, recorded in
`qubix_migrations`) under an advisory lock, so servers that start together do not race;
`qubix db migrate` does the same by itself.

Any number of servers (replicas) may share a database. Each LISTENs on one connection
of its own: a commit that changes a job or a provider NOTIFYs the others of the ids (and a
job's state), and events published on one server are told to the others the same way. A
server keeps the providers it has read in memory (`CACHED`: a heartbeat's or a poll's
look-up of its worker costs no statement), and forgets one when it is told of a change.
The connection also holds the lead lock: the server that holds it does the periodic work.

Volatile state (liveness, lease renewals, pending cancels, registration windows, key
use, submissions per minute) stays in memory, as in the embedded store; every second each
server writes what changed in one statement to an unlogged table, and reads what the
others wrote in another. An entry set later wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from qubix_cli.errors import StorageError
from qubix_cli.server.store import (
    ANYTHING,
    TABLES,
    VOLATILE,
    WATCHED,
    Changed,
    Doc,
    VolatileState,
    _matches,
    ordered,
    run_later,
    set_entry,
    summary,
    tell,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("qubix.store")

LOCK_MIGRATE = 0x51B1C001  # advisory lock ids: the schema's migrations,
LOCK_WRITE = 0x51B1C002  # the one writer at a time,
LOCK_LEAD = 0x51B1C003  # and the server that does the periodic work
CACHED = ("providers",)  # read on every heartbeat and poll; written rarely
POOL_WAIT_S = 3.0  # a request waits this long for a connection, then answers 503
CHANNEL = "qubix"  # what the servers on a database NOTIFY each other on
NOTIFY_BYTES = 7900  # a notification's payload is under 8,000 bytes
LISTEN_RETRY_S = 1.0  # how long the listener waits at a time, and before reconnecting
EVENTS_DEBOUNCE_S = 0.005  # events published this close together are told at once
# Volatile entries whose first field is a time that every touch moves (a heartbeat's
# usage changes with it too): see `PostgresStore._mark`.
FRESH = {"liveness": ("lastSeenAt", "usage"), "leases": ("expiresAt",), "keyUse": ("at",)}
FRESH_S = 5.0
PULL_OVERLAP_S = 2.0  # rows written this long before the last pull are read again
TOMBSTONE_S = 60.0  # a forgotten entry's row is kept this long, so that others see it go

WRITE_VOLATILE = """
INSERT INTO qubix_volatile (kind, key, doc, at, writer, written)
SELECT kind, key, doc, at, %s, clock_timestamp()
FROM jsonb_to_recordset(%s::jsonb) AS r(kind text, key text, doc jsonb, at float8)
ON CONFLICT (kind, key) DO UPDATE
SET doc = excluded.doc, at = excluded.at, writer = excluded.writer, written = excluded.written
WHERE qubix_volatile.at <= excluded.at
"""
TIDY_VOLATILE = (
    "DELETE FROM qubix_volatile WHERE doc IS NULL "
    "AND written < clock_timestamp() - make_interval(secs => %s)"
)

MIGRATIONS: list[str] = [
    # 1: the documents, their indexes, and volatile state
    "\n".join(
        [
            *(
                f'CREATE TABLE "{name}" (key text COLLATE "C" PRIMARY KEY, doc jsonb NOT NULL);'
                for name in TABLES
            ),
            *(
                f'CREATE INDEX "{name}_{field}" ON "{name}" ((doc -> \'{field}\'));'
                for name, table in TABLES.items()
                for field in table.indexes
            ),
            "CREATE UNLOGGED TABLE qubix_volatile (kind text, key text, doc jsonb NOT NULL, "
            "PRIMARY KEY (kind, key));",
        ]
    ),
    # 2: volatile state shared by replicas: who set an entry when, and forgotten entries
    "ALTER TABLE qubix_volatile ALTER doc DROP NOT NULL, "
    "ADD at float8 NOT NULL DEFAULT 0, ADD writer text NOT NULL DEFAULT '', "
    "ADD written timestamptz NOT NULL DEFAULT clock_timestamp();"
    "CREATE INDEX qubix_volatile_written ON qubix_volatile (written);",
    # 3: who uploaded which input (a fresh database has it from 1, which makes every table)
    'CREATE TABLE IF NOT EXISTS "uploads" '
    '(key text COLLATE "C" PRIMARY KEY, doc jsonb NOT NULL);'
    'CREATE INDEX IF NOT EXISTS "uploads_account" ON "uploads" ((doc -> \'account\'));',
]


def driver() -> tuple[Any, Any, Any]:
    """psycopg, its Jsonb adapter and the async pool; a clear error without the extra."""
    try:
        import psycopg
        from psycopg.types.json import Jsonb
        from psycopg_pool import AsyncConnectionPool
    except ImportError:
        raise StorageError(
            "a postgresql:// database needs the PostgreSQL driver: pip install 'qubix[postgres]'"
        ) from None
    return psycopg, Jsonb, AsyncConnectionPool


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


async def migrate(conn: AsyncConnection[Any]) -> list[int]:
    """Apply the migrations this database lacks, under the migrations' advisory lock; the
    versions applied now (none when it was up to date)."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS qubix_migrations "
            "(version int PRIMARY KEY, appliedAt timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM qubix_migrations")
        row = await cursor.fetchone()
        done = int(row[0]) if row else 0
        if done > len(MIGRATIONS):
            raise StorageError(
                f"the database's schema is version {done}, newer than this qubix knows "
                f"({len(MIGRATIONS)}): upgrade qubix"
            )
        for version, statements in enumerate(MIGRATIONS[done:], done + 1):
            await conn.execute(statements.encode())
            await conn.execute("INSERT INTO qubix_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def _secrets(url: str) -> list[str]:
    """The passwords a URL holds (after `user:` or as `password=`), however it is formed."""
    # up to the authority's last @: a password with an unencoded @ is hidden whole
    found = re.findall(r"^[a-z0-9+.-]+://[^/@?#:]*:([^/?#]*)@", url, re.I)
    found += re.findall(r"[?&]password=([^&#]*)", url, re.I)
    return [s for s in found if s]


def redacted(url: str, text: str | None = None) -> str:
    """`text` (by default the URL itself) as messages and logs may show it: with the URL's
    passwords replaced by ***. Never fails, whatever the URL."""
    shown = url if text is None else text
    for secret in sorted(_secrets(url), key=len, reverse=True):
        shown = shown.replace(secret, "***")
        shown = shown.replace(urllib.parse.unquote(secret), "***")
    return shown


SERVER_NAME = "qubix serve"  # a server's connections' application_name, then its id


def prepare(url: str) -> tuple[list[int], int]:
    """Connect, and migrate the schema (what `qubix serve` does before it listens, and
    `qubix db migrate`): the versions applied now and the schema's version. A clear
    `StorageError` when the database cannot be reached."""
    psycopg, _, _ = driver()

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrate(conn)

    try:
        applied = asyncio.run(run())
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(
            f"cannot use the database {redacted(url)}: {redacted(url, reason)}"
        ) from None  # its traceback would show the URL
    return applied, len(MIGRATIONS)


_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # an escaped NUL, not an escaped backslash


def dumps(doc: Any) -> str:
    """JSON as PostgreSQL stores it: it cannot hold the NUL character (U+0000), which a
    worker's output or a renter's text may contain, so NUL is kept as U+FFFD, the
    replacement character (the embedded store keeps NUL itself)."""
    return _NUL.sub(r"\1\\ufffd", json.dumps(doc, separators=(",", ":")))


def _field(name: str) -> str:
    """A document field's name as an SQL string literal's contents."""
    return json.dumps(name).replace("'", "''")[1:-1]


def _where(where: Mapping[str, Any] | None, jsonb: Any) -> tuple[str, list[Any]]:
    """The SQL condition for `where` (equal JSON values; None also matches a missing
    field, as `doc.get(field) == None` does) and its parameters."""
    parts, params = [], []
    for field, value in (where or {}).items():
        name = _field(field)
        if value is None:
            parts.append(f"(doc -> '{name}' IS NULL OR doc -> '{name}' = 'null'::jsonb)")
        else:
            parts.append(f"doc -> '{name}' = %s")
            params.append(jsonb(value))
    return (" AND ".join(parts) or "TRUE"), params


def _order(order_by: str, descending: bool) -> str:
    """Numbers as numbers, strings by code point (as Python sorts them), then the key."""
    name = _field(order_by)
    way = " DESC" if descending else ""
    number = (
        f"CASE WHEN jsonb_typeof(doc -> '{name}') = 'number' THEN (doc ->> '{name}')::numeric END"
    )
    return f"{number}{way}, (doc ->> '{name}') COLLATE \"C\"{way}, key{way}"


class _Reads:
    """`get` and `scan` on one connection (a transaction's) or the pool's."""

    jsonb: Any
    psycopg: Any

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        raise NotImplementedError
        yield

    async def _rows(self, query: str, params: list[Any]) -> list[Any]:
        async with self._connection() as conn:
            try:
                cursor = await conn.execute(query.encode(), params)
                return await cursor.fetchall()
            except self.psycopg.Error as exc:
                raise _refused(exc) from exc

    async def get(self, table: str, key: str) -> Doc | None:
        rows = await self._rows(f'SELECT doc FROM "{table}" WHERE key = %s', [key])
        return rows[0][0] if rows else None

    async def scan(
        self,
        table: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Doc]:
        condition, params = _where(where, self.jsonb)
        query = f'SELECT doc FROM "{table}" WHERE {condition}'
        if order_by is not None:
            query += f" ORDER BY {_order(order_by, descending)}"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        if offset:
            query += f" OFFSET {int(offset)}"
        return [row[0] for row in await self._rows(query, params)]


class PostgresStore(_Reads, VolatileState):
    """The store on PostgreSQL (`Store` in store.py). The pool opens on first use, in the
    event loop that uses it, migrates the schema, loads the shared volatile state and
    starts listening to the other servers on the database (`listen`)."""

    def __init__(
        self,
        url: str,
        name: str = SERVER_NAME,
        pool_size: int = 10,
        heartbeat_s: float = 30.0,
        listen: bool = True,
    ) -> None:
        self.psycopg, jsonb, self._pool_class = driver()
        self.jsonb = lambda value: jsonb(value, dumps=dumps)
        self.url, self.name, self.pool_size, self.listen = url, name, pool_size, listen
        self.server = secrets.token_hex(6)  # tells this server's notifications and rows apart
        self.application = f"{name} {self.server}"  # and its connections
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._volatile = {kind: {} for kind in VOLATILE}
        self._changed = set()
        self._at: dict[str, dict[str, float]] = {kind: {} for kind in VOLATILE}  # when set
        self._shared: dict[str, dict[str, Doc]] = {kind: {} for kind in VOLATILE}  # the table's
        self._dirty: dict[str, set[str]] = {kind: set() for kind in VOLATILE}  # to write
        self._pulled: Any = None  # the newest `written` read from the table
        self._next_tidy = 0.0
        # A heartbeat's entry is rewritten when it is this much newer than the table's copy
        # (or something besides its time changed); it is saved and read every `save_every_s`.
        self.fresh_s = min(FRESH_S, heartbeat_s / 2)
        self.save_every_s = min(1.0, heartbeat_s / 4)
        self._cache: dict[tuple[str, str], Doc | None] = {}  # CACHED tables' documents
        self._cached_commits = 0  # commits that changed a CACHED table
        self._listening = False  # while not, changes may be missed: nothing new is cached
        self._leading = False  # holds the lead lock (on the listening connection)
        self._outbox: list[Doc] = []  # events to tell the other servers
        self.observe_commit: Callable[[float], None] = _ignore
        self.observe_change: Changed = _ignore_change
        self.observe_event: Callable[[Doc], None] = _ignore_event

    async def pool(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool = self._pool_class(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    open=False,
                    timeout=POOL_WAIT_S,
                    # a transaction says BEGIN itself; the name tells servers apart
                    kwargs={"autocommit": True, "application_name": self.application},
                )
                try:
                    await pool.open(wait=True, timeout=10)
                    async with pool.connection() as conn:
                        await migrate(conn)
                        await self._pull(conn)
                except StorageError:
                    await pool.close()
                    raise
                except self.psycopg.Error as exc:
                    await pool.close()
                    raise _refused(exc) from exc
                self._pool = pool
                if self.listen:
                    run_later(self._tasks, self._listen())
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        pool = await self.pool()
        try:
            async with pool.connection() as conn:
                yield conn
        except self.psycopg.Error as exc:  # none to be had (the pool timed out)
            raise _refused(exc) from exc

    async def get(self, table: str, key: str) -> Doc | None:
        if table not in CACHED:
            return await super().get(table, key)
        if (table, key) in self._cache:  # kept while not listening: see `_listen`
            return self._cache[(table, key)]
        commits = self._cached_commits
        doc = await super().get(table, key)
        if self._listening and commits == self._cached_commits:  # not changed meanwhile
            self._cache[(table, key)] = doc
        return doc

    async def count(self, table: str, where: Mapping[str, Any] | None = None) -> int:
        condition, params = _where(where, self.jsonb)
        rows = await self._rows(f'SELECT count(*) FROM "{table}" WHERE {condition}', params)
        return int(rows[0][0])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTransaction]:
        started = time.perf_counter()
        async with self._connection() as conn:
            tx = _PgTransaction(conn, self)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_WRITE,))
                    yield tx
                    await tx.flush()
                    changes = [
                        [table, key, summary(table, doc)]
                        for (table, key), doc in tx.writes.items()
                        if table in WATCHED
                    ]
                    if changes:  # told to the other servers when (and if) it commits
                        await self._notify(conn, "changes", changes)
            except self.psycopg.Error as exc:  # rolled back: nothing of it is anywhere
                raise _refused(exc) from exc
        for (table, key), doc in tx.writes.items():  # committed: what readers see now
            if table in CACHED:
                self._cache[(table, key)] = doc
                self._cached_commits += 1
        if tx.writes:
            self.observe_commit(time.perf_counter() - started)
            tell(self.observe_change, tx.writes)

    # -- the other servers on the database ----------------------------------------------

    async def _notify(self, conn: AsyncConnection[Any], kind: str, items: list[Any]) -> None:
        """NOTIFY the other servers of `items`, in as few notifications as fit."""
        messages = list(_messages(self.server, kind, items))
        if messages:
            await conn.execute(
                "SELECT pg_notify(%s, m) FROM unnest(%s::text[]) AS m", (CHANNEL, messages)
            )

    def leads(self) -> bool:
        return self._leading

    async def others(self) -> int:
        rows = await self._rows(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s "
            "AND application_name <> %s",
            [f"{SERVER_NAME} %", self.application],
        )
        return int(rows[0][0])

    def share_event(self, event: Doc) -> None:
        if self._pool is None or not self.listen:
            return
        self._outbox.append(event)
        if len(self._outbox) == 1:
            run_later(self._tasks, self._send_events())

    async def _send_events(self) -> None:
        """The events of the next few milliseconds, in one statement."""
        await asyncio.sleep(EVENTS_DEBOUNCE_S)
        events, self._outbox = self._outbox, []
        try:
            async with self._connection() as conn:
                await self._notify(conn, "events", events)
        except (StorageError, self.psycopg.Error) as exc:
            log.warning("%d events were not told to the other servers: %s", len(events), exc)

    async def _listen(self) -> None:
        """One connection that LISTENs for the other servers' notifications and holds the
        lead lock while it lives. While it is down, changes may be missed: watchers are
        told that anything may have changed, every `LISTEN_RETRY_S` (they poll), and what
        is kept at hand is forgotten once it listens again. (Until then it is still read:
        while the database is down nothing can change, and heartbeats and polls go on.)"""
        lost = False  # said so in the log
        while True:
            try:
                async with await self.psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=self.application, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if lost:
                        log.info("listening to the database again")
                        lost = False
                    self._listening = True
                    self._cache.clear()
                    self._missed()
                    while True:
                        if not self._leading:
                            cursor = await conn.execute(
                                "SELECT pg_try_advisory_lock(%s)", (LOCK_LEAD,)
                            )
                            row = await cursor.fetchone()
                            self._leading = bool(row and row[0])
                        async for note in conn.notifies(timeout=LISTEN_RETRY_S):
                            self._received(note.payload)
            except Exception as exc:  # whatever it was, listen again
                if self._listening:
                    log.warning("not listening to the database: %s", redacted(self.url, str(exc)))
                    lost = True
            finally:
                self._listening = self._leading = False
            await asyncio.sleep(LISTEN_RETRY_S)
            self._missed()

    def _missed(self) -> None:
        """Notifications may have been missed: watchers look for themselves."""
        self._cached_commits += 1  # a read under way is not kept
        self._observe(self.observe_change, ANYTHING, "", None, False)

    def _received(self, payload: str) -> None:
        """A notification from another server: anything not of the shape servers send
        (from whoever else may NOTIFY on the database) is ignored."""
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("server") == self.server:
            return
        changes, events = message.get("changes", []), message.get("events", [])
        for change in changes if isinstance(changes, list) else []:
            if not _is_change(change):
                continue
            table, key, changed = change
            if table in CACHED:
                self._cache.pop((table, key), None)
                self._cached_commits += 1
            self._observe(self.observe_change, table, key, changed, False)
        for event in events if isinstance(events, list) else []:
            if isinstance(event, dict):
                self._observe(self.observe_event, event)

    @staticmethod
    def _observe(observer: Callable[..., None], *args: Any) -> None:
        try:
            observer(*args)
        except Exception:  # an observer's bug must not stop the listening
            log.exception("a change or event from another server could not be handled")

    # -- volatile state: in memory, shared through the unlogged table ------------------

    async def _loaded(self) -> None:
        await self.pool()  # what the table holds is loaded with it

    def remember(self, kind: str, key: str, value: Doc | None) -> None:
        super().remember(kind, key, value)
        self._at[kind][key] = time.time()
        self._mark(kind, key)

    def _mark(self, kind: str, key: str) -> None:
        """Write the entry at the next save, unless the table's copy is fresh enough: the
        same but for its time (and a heartbeat's usage), and at most `fresh_s` older."""
        value, shared = self._volatile[kind].get(key), self._shared[kind].get(key)
        if value == shared:
            return
        fields = FRESH.get(kind)
        if fields and value is not None and shared is not None:
            rest = {k: v for k, v in value.items() if k not in fields}
            if rest == {k: v for k, v in shared.items() if k not in fields}:
                if value[fields[0]] - shared.get(fields[0], 0) < self.fresh_s:
                    return
        self._dirty[kind].add(key)

    async def save_volatile(self) -> None:
        """Write what changed here in one statement, and read what the other servers wrote
        since the last time in another (10,000 workers' liveness is two statements a
        second, not 10,000)."""
        pool = await self.pool()
        dirty = [(kind, key) for kind, keys in self._dirty.items() for key in keys]
        for keys in self._dirty.values():
            keys.clear()
        self._changed.clear()
        entries = [(kind, key, self._volatile[kind].get(key)) for kind, key in dirty]
        rows = [
            {"kind": kind, "key": key, "doc": doc, "at": self._at[kind][key]}
            for kind, key, doc in entries
        ]
        try:
            async with pool.connection() as conn:
                if rows:
                    await conn.execute(WRITE_VOLATILE, (self.server, await _json_text(rows)))
                for kind, key, doc in entries:
                    set_entry(self._shared[kind], key, doc)
                await self._pull(conn)
                if self._leading and time.monotonic() >= self._next_tidy:
                    self._next_tidy = time.monotonic() + TOMBSTONE_S
                    await conn.execute(TIDY_VOLATILE, (TOMBSTONE_S,))
        except BaseException as exc:  # not written: at the next save
            for kind, key in dirty:
                self._dirty[kind].add(key)
            if isinstance(exc, self.psycopg.Error):
                raise _refused(exc) from exc
            raise

    async def _pull(self, conn: AsyncConnection[Any]) -> None:
        """Read the entries the other servers wrote since the last pull (all of them, the
        first time); an entry set later than this server's copy replaces it."""
        if self._pulled is None:
            cursor = await conn.execute(
                "SELECT kind, key, doc, at, written FROM qubix_volatile WHERE writer <> %s",
                (self.server,),
            )
        else:
            cursor = await conn.execute(
                "SELECT kind, key, doc, at, written FROM qubix_volatile WHERE writer <> %s "
                "AND written > %s - make_interval(secs => %s)",
                (self.server, self._pulled, PULL_OVERLAP_S),
            )
        for kind, key, doc, at, written in await cursor.fetchall():
            if self._pulled is None or written > self._pulled:
                self._pulled = written
            if kind not in self._volatile:
                continue
            set_entry(self._shared[kind], key, doc)
            if at > self._at[kind].get(key, -1.0):  # newer than this server's copy
                self._at[kind][key] = at
                set_entry(self._volatile[kind], key, doc)
                self._dirty[kind].discard(key)
            else:
                self._mark(kind, key)  # this server's is newer: the table gets it
        if self._pulled is None:
            self._pulled = datetime.datetime.now(datetime.UTC)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


class _PgTransaction(_Reads):
    """Reads go to the transaction's connection and see its own writes, which are kept
    here until the commit (the write lock keeps every other writer out meanwhile)."""

    def __init__(self, conn: AsyncConnection[Any], store: PostgresStore) -> None:
        self.conn, self.jsonb, self.psycopg = conn, store.jsonb, store.psycopg
        self.writes: dict[tuple[str, str], Doc | None] = {}

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        yield self.conn

    async def get(self, table: str, key: str) -> Doc | None:
        if (table, key) in self.writes:
            return self.writes[(table, key)]
        return await super().get(table, key)

    async def scan(
        self,
        table: str,
        where: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Doc]:
        mine = {k: doc for (t, k), doc in self.writes.items() if t == table}
        if not mine:
            return await super().scan(table, where, order_by, descending, offset, limit)
        key = TABLES[table].key
        found = [d for d in await super().scan(table, where) if d[key] not in mine]
        found += [d for d in mine.values() if d is not None and _matches(d, where)]
        return ordered(found, table, order_by, descending, offset, limit)

    async def count(self, table: str, where: Mapping[str, Any] | None = None) -> int:
        return len(await self.scan(table, where))

    def put(self, table: str, doc: Doc) -> None:
        self.writes[(table, doc[TABLES[table].key])] = doc

    def delete(self, table: str, key: str) -> None:
        self.writes[(table, key)] = None

    async def flush(self) -> None:
        async with self.conn.cursor() as cursor:
            for (table, key), doc in self.writes.items():
                if doc is None:
                    await cursor.execute(f'DELETE FROM "{table}" WHERE key = %s'.encode(), (key,))
                else:
                    await cursor.execute(
                        f'INSERT INTO "{table}" (key, doc) VALUES (%s, %s) '
                        "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc".encode(),
                        (key, self.jsonb(doc)),
                    )


async def _json_text(rows: list[Doc]) -> str:
    """A JSON array of these rows, encoded 500 at a time with a pause between (10,000 at
    once would hold the event loop, as in store.py's `save_volatile`)."""
    parts: list[str] = []
    for start in range(0, len(rows), 500):
        parts.extend(dumps(row) for row in rows[start : start + 500])
        await asyncio.sleep(0)
    return "[" + ",".join(parts) + "]"


def _is_change(change: Any) -> bool:
    """[table, key, summary] of a watched table, as `PostgresStore.transaction` sends."""
    if not isinstance(change, list) or len(change) != 3:
        return False
    table, key, changed = change
    if table not in WATCHED or not isinstance(key, str):
        return False
    return changed is None or (isinstance(changed, dict) and set(changed) == set(WATCHED[table]))


def _messages(server: str, kind: str, items: list[Any]) -> Iterator[str]:
    """NOTIFY payloads (under PostgreSQL's 8,000 bytes each) that hold `items`."""
    head = json.dumps({"server": server, kind: []})[:-2]
    part: list[str] = []
    size = len(head)
    for item in items:
        text = json.dumps(item, separators=(",", ":"))
        if len(head) + len(text) + 2 > NOTIFY_BYTES and isinstance(item, dict):
            data = item.get("data")  # an event about a large record: its ids only
            if isinstance(data, dict):
                ids = {k: data[k] for k in ("id", "workerId", "status", "attempt") if k in data}
                text = json.dumps({**item, "data": ids}, separators=(",", ":"))
        if len(head) + len(text) + 2 > NOTIFY_BYTES:
            log.warning("one of the %s was too large to tell the other servers", kind)
            continue
        if part and size + len(text) + 3 > NOTIFY_BYTES:
            yield head + ",".join(part) + "]}"
            part, size = [], len(head)
        part.append(text)
        size += len(text) + 1
    if part:
        yield head + ",".join(part) + "]}"


def _refused(exc: BaseException) -> StorageError:
    """What a client is told when the database cannot be reached or refuses a request (the
    message never holds the URL, which may hold a password)."""
    kind = type(exc).__name__
    return StorageError(
        f"the database is unavailable or refused the request ({kind}); nothing was "
        "changed. Try again in a moment."
    )


def _ignore(seconds: float) -> None:
    pass


def _ignore_change(table: str, key: str, summary: Doc | None, here: bool) -> None:
    pass


def _ignore_event(event: Doc) -> None:
    pass
