"""uvicorn's HTTP protocol with a deadline for receiving each request."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REQUEST_READ_TIMEOUT_S = 20.0


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn closes idle keep-alive connections, but not one that sends nothing after
    connecting, nor one that sends a request's head or body a byte at a time (slowloris):
    each would hold a socket for ever. Here a request must arrive in full within
    REQUEST_READ_TIMEOUT_S of the connection opening or of its own first byte; otherwise
    the connection is closed. Answers (long-polls included) are not limited."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(REQUEST_READ_TIMEOUT_S, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self.transport.close()
