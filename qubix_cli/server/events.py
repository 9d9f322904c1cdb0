"""Server events fanned out to WebSocket subscribers as `{type, data, at}`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

Event = dict[str, Any]
_QUEUE_SIZE = 1000
log = logging.getLogger("qubix.events")


class EventBus:
    """Publishing never blocks: a subscriber that falls 1,000 events behind is dropped."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def publish(self, type_: str, data: dict[str, Any]) -> None:
        event = {"type": type_, "data": data, "at": time.time()}
        log.info("%s %s", type_, _subject(data))
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)  # tells the subscriber it was dropped

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event | None]]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(_QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


def _subject(data: dict[str, Any]) -> str:
    """What an event is about, for the log: ids and states only, never secrets."""
    if "workerId" in data and "id" not in data:
        return f"provider {data['workerId']}"
    return f"job {data.get('id')} {data.get('status')} worker {data.get('workerId')}"
