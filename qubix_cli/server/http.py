"""HTTP plumbing shared by every route: JSON errors, bounded bodies, validation, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any, TypeVar

import pydantic
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from qubix_cli.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    Malformed,
    NotFound,
    PaymentRequired,
    QubixError,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
    UpgradeRequired,
)

log = logging.getLogger("qubix.server")
BODY_LIMIT_BYTES = 1024 * 1024

M = TypeVar("M", bound=pydantic.BaseModel)
T = TypeVar("T")


# The one table from domain errors to HTTP statuses (the first class an error is an
# instance of wins, so subclasses come before their bases).
STATUS: tuple[tuple[type[QubixError], int], ...] = (
    (Malformed, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (PaymentRequired, 402),
    (Conflict, 409),
    (TooLarge, 413),
    (InvalidInput, 422),
    (UpgradeRequired, 426),
    (RateLimited, 429),
    (InsufficientStorage, 507),
    (Unavailable, 503),
)


def error_status(exc: QubixError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def error_response(exc: QubixError, status: int | None = None) -> Response:
    """The answer to a domain error: `{"error": code, "message": ..., "details": ...}`,
    with the status of its class (or `status`, for the router's own 404 and 405)."""
    status = status or error_status(exc)
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.details is not None:
        body["details"] = exc.details
    response = json_response(body, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc.details, dict) and "retryAfterS" in exc.details:
        response.headers["Retry-After"] = str(exc.details["retryAfterS"])
    return response


class PerIp:
    """At most `most` of something held open at once per client IP (long-polls, streams)."""

    def __init__(self, what: str, most: int) -> None:
        self.what, self.most = what, most
        self._open: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, ip: str) -> Iterator[None]:
        if self._open.get(ip, 0) >= self.most:
            raise RateLimited(
                f"{ip} already holds {self.most} open {self.what}; close one first",
                details={"retryAfterS": 1},
            )
        self._open[ip] = self._open.get(ip, 0) + 1
        try:
            yield
        finally:
            self._open[ip] -= 1
            if not self._open[ip]:
                del self._open[ip]


def client_ip(scope: Scope, trusted_proxies: tuple[str, ...]) -> str:
    """Who sent a request: the socket's peer, or, when the peer is a proxy the operator
    trusts (`--trusted-proxy`), the nearest address in X-Forwarded-For that is not one."""
    peer: str = scope["client"][0] if scope.get("client") else "unknown"
    if peer not in trusted_proxies:
        return peer
    forwarded = request_headers(scope, b"x-forwarded-for").get("x-forwarded-for", "")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if hop not in trusted_proxies:
            return hop
    return peer


def declared_length(headers: Mapping[str, str]) -> int:
    """The body's size as its Content-Length says it (0 when it says nothing readable)."""
    declared = headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} does not exist")


async def read_body(
    receive: Receive, headers: Mapping[str, str], limit: int = BODY_LIMIT_BYTES
) -> bytes:
    """Read the body, refusing it with 413 as soon as it passes `limit` bytes."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Malformed("the client went away mid-request", code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class LongPolls:
    """The long-polls waiting now. A wait is given up as soon as its client goes away (so
    that a vanished worker holds no waiter and is handed no job) or the server stops (its
    clients ask again, of another replica or of this one restarted): None then."""

    def __init__(self) -> None:
        self._waiting: set[asyncio.Future[Any]] = set()
        self._stopped = False

    async def wait(self, request: Request, wait: Awaitable[T]) -> T | None:
        task = asyncio.ensure_future(wait)
        watcher = asyncio.ensure_future(_disconnected(request))
        self._waiting.add(task)
        if self._stopped:
            task.cancel()
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            self._waiting.discard(task)
        if task.done() and not task.cancelled():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    def stop(self) -> None:
        """End every wait now, and any that starts from now on."""
        self._stopped = True
        for task in list(self._waiting):
            task.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body is over {limit // 1024} KiB", code="body_too_large")


async def read_json(request: Request, model: type[M], limit: int = BODY_LIMIT_BYTES) -> M:
    return parse_json(await read_body(request.receive, request.headers, limit), model)


def parse_json(raw: bytes, model: type[M]) -> M:
    """Parse and validate a JSON body: 400 if it is not JSON, 422 naming each bad field."""
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        syntax = [e for e in exc.errors(include_url=False) if e["type"] == "json_invalid"]
        if syntax:
            message = f"the body is not valid JSON: {_message(syntax[0]['msg'])}"
            raise Malformed(message, code="malformed_json") from exc
        raise invalid(exc, "body") from exc


def read_query(request: Request, model: type[M]) -> M:
    return validate(model, dict(request.query_params), "query")


def validate(model: type[M], data: Any, where: str) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid(exc, where) from exc


def invalid(exc: pydantic.ValidationError, where: str) -> InvalidInput:
    details = [
        {"field": ".".join([where, *map(str, e["loc"])]), "message": _message(e["msg"])}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    message = f"{first['field']}: {first['message']}{more}"
    return InvalidInput(message, details=details)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require_token(headers: Mapping[str, str]) -> str:
    token = bearer_token(headers)
    if token is None:
        raise Unauthorized("send the token as 'Authorization: Bearer <token>'")
    return token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str | None, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return token is not None and hmac.compare_digest(token_hash(token), stored_hash)


def internal_error(scope: Scope) -> Response:
    """The answer to an exception no handler expected; it is logged, with its traceback."""
    log.exception("unexpected error in %s %s", scope["method"], scope["path"])
    body = {"error": "internal", "message": "the server failed; the error is in its log"}
    return json_response(body, 500)


async def send_json(send: Send, body: Any) -> None:
    """Answer 200 with JSON through ASGI directly, without a `Response` (see `Heartbeats`)."""
    content = to_json(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def request_headers(scope: Scope, *names: bytes) -> dict[str, str]:
    """The named headers of a request, read from its ASGI scope without building a
    `Request` (see `Heartbeats`). Of repeated headers the first wins, as in Starlette."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in names:
            found.setdefault(name.decode(), value.decode("latin-1"))
    return found


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer, encoded by pydantic-core (several times faster than the json module)."""
    return Response(to_json(body), status_code=status, media_type="application/json")


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")
