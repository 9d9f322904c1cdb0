"""The backends that the storage contract suite runs against. A backend is a factory that
opens the store on the same place again (a restart, or a recovery after a crash), and a way
to make its commits fail (the disk or the database refusing them)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubix_cli.server.store import JournalStore, Store


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


@pytest.fixture(params=["journal"])
def backend(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    backend = JournalBackend(tmp_path / "data", monkeypatch)
    yield backend
    backend.close_all()
