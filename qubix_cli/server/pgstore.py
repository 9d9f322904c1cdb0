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

One server uses a database at a time (`prepare` refuses a second), so every write passes
through this store: it keeps the providers it has read or written in memory
(`CACHED`), and a heartbeat's or a poll's look-up of its worker costs no statement.

Volatile state (liveness, lease renewals, pending cancels, registration windows, key use)
stays in memory, as in the embedded store, and is saved now and then to an unlogged table
so that a restart finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from qubix_cli.errors import StorageError
from qubix_cli.server.store import TABLES, VOLATILE, Doc, VolatileState, _matches, ordered

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

LOCK_MIGRATE = 0x51B1C001  # advisory lock ids: the schema's migrations
LOCK_WRITE = 0x51B1C002  # and the one writer at a time
CACHED = ("providers",)  # read on every heartbeat and poll; written rarely
POOL_WAIT_S = 3.0  # a request waits this long for a connection, then answers 503

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
    found = re.findall(r"^[a-z0-9+.-]+://[^/@?#]*?:([^/@?#]*)@", url, re.I)
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


SERVER_NAME = "qubix serve"  # the application_name of a server's connections


def prepare(url: str, serving: bool = False) -> tuple[list[int], int]:
    """Connect, and migrate the schema (what `qubix serve` does before it listens, and
    `qubix db migrate`): the versions applied now and the schema's version. A clear
    `StorageError` when the database cannot be reached, or (`serving`) when another
    server uses it: each keeps its fleet's liveness and leases in memory, so two on one
    database would expire each other's leases."""
    psycopg, _, _ = driver()

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if serving:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = %s",
                    (SERVER_NAME,),
                )
                row = await cursor.fetchone()
                if row and row[0]:
                    raise StorageError(
                        f"another qubix serve uses the database {redacted(url)}: one server a "
                        "database for now (several replicas on one database are not built "
                        "yet, docs/scaling.md)"
                    )
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
    event loop that uses it, and migrates the schema."""

    def __init__(self, url: str, name: str = SERVER_NAME, pool_size: int = 10) -> None:
        self.psycopg, jsonb, self._pool_class = driver()
        self.jsonb = lambda value: jsonb(value, dumps=dumps)
        self.url, self.name, self.pool_size = url, name, pool_size
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
        self._volatile = {kind: {} for kind in VOLATILE}
        self._changed = set()
        self._cache: dict[tuple[str, str], Doc | None] = {}  # CACHED tables' documents
        self._cached_commits = 0  # commits that changed a CACHED table
        self.observe_commit: Callable[[float], None] = _ignore

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
                    kwargs={"autocommit": True, "application_name": self.name},
                )
                try:
                    await pool.open(wait=True, timeout=10)
                    async with pool.connection() as conn:
                        await migrate(conn)
                        await self._load_volatile(conn)
                except StorageError:
                    await pool.close()
                    raise
                except self.psycopg.Error as exc:
                    await pool.close()
                    raise _refused(exc) from exc
                self._pool = pool
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
        if (table, key) in self._cache:
            return self._cache[(table, key)]
        commits = self._cached_commits
        doc = await super().get(table, key)
        if commits == self._cached_commits:  # no commit changed it while it was read
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
            except self.psycopg.Error as exc:  # rolled back: nothing of it is anywhere
                raise _refused(exc) from exc
        for (table, key), doc in tx.writes.items():  # committed: what readers see now
            if table in CACHED:
                self._cache[(table, key)] = doc
                self._cached_commits += 1
        if tx.writes:
            self.observe_commit(time.perf_counter() - started)

    # -- volatile state ----------------------------------------------------------------

    async def _loaded(self) -> None:
        await self.pool()  # what was saved before a restart is loaded with it

    async def _load_volatile(self, conn: AsyncConnection[Any]) -> None:
        cursor = await conn.execute("SELECT kind, key, doc FROM qubix_volatile")
        for kind, key, doc in await cursor.fetchall():
            if kind in self._volatile:
                self._volatile[kind].setdefault(key, doc)  # what this process said wins

    async def save_volatile(self) -> None:
        """The changed kinds, each replaced in one transaction of the unlogged table: a
        DELETE and one COPY, however many entries (10,000 workers' liveness is two
        statements, not 10,000)."""
        pool = await self.pool()
        for kind in list(self._changed):
            self._changed.discard(kind)
            entries = list(self._volatile[kind].items())
            try:
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute("DELETE FROM qubix_volatile WHERE kind = %s", (kind,))
                    async with conn.cursor() as cursor:
                        copy = "COPY qubix_volatile (kind, key, doc) FROM STDIN"
                        async with cursor.copy(copy) as rows:
                            await rows.write(await _copy_text(kind, entries))
            except self.psycopg.Error as exc:
                self._changed.add(kind)
                raise _refused(exc) from exc
            except BaseException:
                self._changed.add(kind)
                raise

    async def close(self) -> None:
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


async def _copy_text(kind: str, entries: list[tuple[str, Doc]]) -> bytes:
    """COPY's text format for these entries, encoded 500 at a time with a pause between
    (10,000 at once would hold the event loop, as in store.py's `save_volatile`)."""
    lines: list[str] = []
    for start in range(0, len(entries), 500):
        for key, doc in entries[start : start + 500]:
            text = dumps(doc).replace("\\", "\\\\")
            lines.append(f"{kind}\t{key}\t{text}\n")
        await asyncio.sleep(0)
    return "".join(lines).encode()


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
