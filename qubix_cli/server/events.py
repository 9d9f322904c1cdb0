"""Server events fanned out to WebSocket subscribers as `{type, data, at}`.

Provider events are public (the marketplace). Job events go only to subscribers that
showed a key, and only those of the jobs that key may see (an operator's: all; a
renter's: its own); they carry a job's id, state, attempt and worker, never its payload."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

Event = dict[str, Any]
_QUEUE_SIZE = 1000
JOB_FIELDS = ("id", "status", "attempt", "workerId")
log = logging.getLogger("qubix.events")


Sees = Callable[[dict[str, Any]], bool]  # which jobs' events a subscriber may see


class Subscription:
    """One subscriber's queue; `sees` once it has shown a key."""

    def __init__(self, sees: Sees | None) -> None:
        self.sees = sees
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(_QUEUE_SIZE)


class EventBus:
    """Publishing never blocks: a subscriber that falls 1,000 events behind is dropped.
    What is published here is also handed to `forward` (the other servers on the same
    database), and what they publish arrives in `deliver`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # the coordinator's: events are stamped with its time
        self._subscribers: set[Subscription] = set()
        self.forward: Callable[[Event], None] = _nowhere

    def publish(self, type_: str, data: dict[str, Any]) -> None:
        job = data if type_.startswith("JOB_") else None
        if job is not None:
            data = {field: job.get(field) for field in JOB_FIELDS}
        event = {"type": type_, "data": data, "at": self.clock()}
        ids = {"event": type_, "workerId": data.get("workerId")}
        if job is not None:
            ids.update(jobId=data["id"], status=data["status"], attempt=data["attempt"])
        log.info("%s %s", type_, _subject(data), extra=ids)
        account = job.get("account") if job is not None else None
        self._fan_out(event, account)
        self.forward({**event, "account": account} if job is not None else event)

    def deliver(self, event: Event) -> None:
        """An event another server published, to this server's subscribers."""
        if not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
            return
        account = event.pop("account", None)
        self._fan_out(event, account)

    def _fan_out(self, event: Event, account: str | None) -> None:
        """To every subscriber that may see it (a job's: by the job's account)."""
        data = event["data"]
        job = {**data, "account": account} if event["type"].startswith("JOB_") else None
        for sub in list(self._subscribers):
            if job is not None and (sub.sees is None or not sub.sees(job)):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(sub)
                sub.queue.get_nowait()
                sub.queue.put_nowait(None)  # tells the subscriber it was dropped

    def subscribers(self) -> int:
        return len(self._subscribers)

    @asynccontextmanager
    async def subscribe(self, sees: Sees | None) -> AsyncIterator[Subscription]:
        sub = Subscription(sees)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)


def _nowhere(event: Event) -> None:
    pass


def _subject(data: dict[str, Any]) -> str:
    """What an event is about, for the log: ids and states only, never secrets."""
    if "workerId" in data and "id" not in data:
        return f"provider {data['workerId']}"
    return f"job {data.get('id')} {data.get('status')} worker {data.get('workerId')}"
