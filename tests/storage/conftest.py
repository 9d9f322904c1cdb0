"""The backends that the storage contract suite runs against. A backend is a factory that
opens the store on the same place again (a restart, or a recovery after a crash), and a way
to make its commits fail (the disk or the database refusing them)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubix_cli.server.store import TABLES, JournalStore, Store
from tests.pg import Cluster


class JournalBackend:
    name = "journal"

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path, self.monkeypatch = path, monkeypatch
        self.opened: list[JournalStore] = []

    def open(self) -> Store:
        """Open the store (again): what a restarted or crashed-and-restarted server sees."""
        store = JournalStore(self.path)
        self.opened.append(store)
        return store

    @contextlib.contextmanager
    def failing_commits(self) -> Iterator[None]:
        """fsync fails with EIO, as a dying disk (or a late ENOSPC) makes it."""

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        with self.monkeypatch.context() as patch:
            patch.setattr("qubix_cli.server.store.os.fsync", broken)
            yield

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(OSError):
                asyncio.run(store.close())

    @contextlib.contextmanager
    def held_commits(self, entered: threading.Event, gate: threading.Event) -> Iterator[None]:
        """Each commit, once written, waits for `gate` before it is durable (fsync)."""
        real = os.fsync

        def slow_fsync(fd: int) -> None:
            entered.set()
            gate.wait(10)
            real(fd)

        with self.monkeypatch.context() as patch:
            patch.setattr("qubix_cli.server.store.os.fsync", slow_fsync)
            yield


class PostgresBackend:
    """A fresh database in the session's cluster (tests/pg.py)."""

    name = "postgres"

    def __init__(self, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
        from qubix_cli.server.pgstore import PostgresStore

        self.url, self.monkeypatch, self.store_class = (
            cluster.new_database(),
            monkeypatch,
            PostgresStore,
        )

    def open(self) -> Store:
        store: Store = self.store_class(self.url)
        return store

    @contextlib.contextmanager
    def failing_commits(self) -> Iterator[None]:
        """The database refuses every commit that changes a document: a deferred trigger
        raises at COMMIT, as a constraint or a server going away would."""
        import psycopg

        from qubix_cli.server.pgstore import migrate

        async def schema() -> None:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                await migrate(conn)

        asyncio.run(schema())  # the tables exist, as they would once the store was used
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION qubix_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            )
            for table in TABLES:
                trigger = (
                    "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE OR DELETE "
                    f'ON "{table}" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW '
                    "EXECUTE FUNCTION qubix_refuse()"
                )
                conn.execute(trigger.encode())
            try:
                yield
            finally:
                for table in TABLES:
                    conn.execute(f'DROP TRIGGER refuse ON "{table}"'.encode())
                conn.execute("DROP FUNCTION qubix_refuse()")

    @contextlib.contextmanager
    def held_commits(self, entered: threading.Event, gate: threading.Event) -> Iterator[None]:
        """Each transaction, its writes sent, waits for `gate` before its COMMIT."""
        from qubix_cli.server import pgstore

        real = pgstore._PgTransaction.flush

        async def slow_flush(tx: Any) -> None:
            await real(tx)
            entered.set()
            await asyncio.to_thread(gate.wait, 10)

        with self.monkeypatch.context() as patch:
            patch.setattr(pgstore._PgTransaction, "flush", slow_flush)
            yield

    def close_all(self) -> None:
        pass  # the cluster goes at the end of the session


@pytest.fixture(params=["journal", "postgres"])
def backend(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if request.param == "postgres":
        backend: Any = PostgresBackend(request.getfixturevalue("cluster"), monkeypatch)
    else:
        backend = JournalBackend(tmp_path / "data", monkeypatch)
    yield backend
    backend.close_all()
