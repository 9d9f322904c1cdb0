"""The log long-polls (`GET /api/jobs/{id}/logs?wait=`) waiting in this process, by job.

Each log append writes the job (its log's counters), and so does its end: the store tells
of that change (on PostgreSQL the other servers hear it on their channel, ids only), and
the polls of that job read the store again then, never on a timer. When changes may have
been missed (the listener reconnecting), every poll reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from qubix_cli.server.store import ANYTHING, Doc


class LogWaiters:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}

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

    def waiting(self) -> int:
        """Log long-polls waiting now."""
        return sum(len(w) for w in self._waiting.values())

    def changed(self, table: str, key: str, summary: Doc | None, here: bool) -> None:
        """A job changed (here or on another server), or anything may have."""
        if table == ANYTHING:
            for job_id in list(self._waiting):
                self._wake(job_id)
        elif table == "jobs" and key in self._waiting:
            self._wake(key)

    def _wake(self, job_id: str) -> None:
        for woken in self._waiting[job_id]:
            if not woken.done():
                woken.set_result(None)
