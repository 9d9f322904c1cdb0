"""The log long-polls (`GET /api/jobs/{id}/logs?wait=`) waiting in this process, by job.

Each log append writes the job (its log's counters), and so does its end: the store tells
of that change (on PostgreSQL the other servers hear it on their channel, ids only), and
the polls of that job read the store again then, never on a timer. When changes may have
been missed (the listener reconnecting), every poll reads again. Polls of one job that
read at once share one read: a thousand woken by one log part cost two queries, not 2,000.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from qubix_cli.server.store import ANYTHING, Doc

T = TypeVar("T")


class LogWaiters:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._reads: dict[str, asyncio.Future[Any]] = {}  # under way, begun since the last change

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        """A future done at the job's next change (watch before reading, so that a change
        made meanwhile is not missed)."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, set()).add(woken)
        try:
            yield woken
        finally:
            waiters = self._waiting[job_id]
            waiters.discard(woken)
            if not waiters:
                del self._waiting[job_id]

    async def read(self, job_id: str, reader: Callable[[str], Awaitable[T]]) -> T:
        """`reader(job_id)`, or the result of the one under way that began after the job's
        last change (callers must not change what it gives)."""
        shared = self._reads.get(job_id)
        if shared is None:
            shared = asyncio.ensure_future(reader(job_id))
            self._reads[job_id] = shared
            shared.add_done_callback(lambda done: self._read_done(job_id, done))
        result: T = await asyncio.shield(shared)
        return result

    def _read_done(self, job_id: str, done: asyncio.Future[Any]) -> None:
        if self._reads.get(job_id) is done:
            del self._reads[job_id]
        if not done.cancelled():
            done.exception()  # retrieved: its callers, if any are left, have it too

    def waiting(self) -> int:
        """Log long-polls waiting now."""
        return sum(len(w) for w in self._waiting.values())

    def changed(self, table: str, key: str, summary: Doc | None, here: bool) -> None:
        """A job changed (here or on another server), or anything may have."""
        if table == ANYTHING:
            self._reads.clear()  # begun before the change: shared no more
            for job_id in list(self._waiting):
                self._wake(job_id)
        elif table == "jobs":
            self._reads.pop(key, None)
            if key in self._waiting:
                self._wake(key)

    def _wake(self, job_id: str) -> None:
        for woken in self._waiting[job_id]:
            if not woken.done():
                woken.set_result(None)
