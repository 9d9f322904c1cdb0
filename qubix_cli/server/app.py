"""The coordinator's app factory: `create_app(settings)` is what `qubix serve` and tests run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, compile_path
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qubix_cli.errors import QubixError, StorageError
from qubix_cli.installer.pack import build_worker_pyz
from qubix_cli.server.accounts import Accounts
from qubix_cli.server.blobs import Blobs
from qubix_cli.server.events import EventBus
from qubix_cli.server.http import error_response, error_status, internal_error, json_response
from qubix_cli.server.jobfiles import JobFiles
from qubix_cli.server.jobs import JobQueue
from qubix_cli.server.metrics import Metrics
from qubix_cli.server.openapi import openapi_document
from qubix_cli.server.providers import Clock, Registry
from qubix_cli.server.routes import HEARTBEAT_PATH, Api
from qubix_cli.server.settings import Settings, load_or_create_api_key
from qubix_cli.server.store import JournalStore, Store, make_data_dir
from qubix_cli.server.updates import UpdateKey
from qubix_cli.worker import AGENT_VERSION

log = logging.getLogger("qubix.server")


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QubixError)
    status = error_status(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    elif status == 429:
        request.app.state.metrics.refusals.labels(exc.code).inc()
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(QubixError(message, code=code), exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return internal_error(request.scope)


_HEARTBEAT = compile_path(HEARTBEAT_PATH)[0]  # the route's own pattern


class Coordinator(Starlette):
    """The app, with heartbeats handed to their endpoint before Starlette's middleware and
    router (see `Heartbeats`); every other request, and every other method on that path,
    goes through the app as usual."""

    api: Api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _HEARTBEAT.fullmatch(scope["path"])
            if match:
                scope["path_params"] = match.groupdict()
                await self.api.heartbeats(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def stop(self) -> None:
        """The server is stopping: waiting long-polls are answered now (nothing came), so
        that their clients ask again (another replica, or this one restarted) instead of
        being cut off when the grace for requests ends."""
        self.api.long_polls.stop()


async def _housekeeping(app: Starlette, tick_s: float) -> None:
    """Volatile state saved now and then; and, on the server that leads (the one server
    of a data dir, one of the replicas on a database), offline providers, expired leases
    and forgetting."""
    registry: Registry = app.state.registry
    jobs: JobQueue = app.state.jobs
    store: Store = app.state.store
    files: JobFiles = app.state.files
    settings: Settings = app.state.settings
    loop = asyncio.get_running_loop()
    next_save = loop.time() + store.save_every_s
    next_forget = next_forget_providers = loop.time()
    # Forgetting reads every provider: every 10 minutes at most (a tenth of the time a
    # provider is kept offline), not with every save.
    forget_every_s = min(600.0, max(5.0, settings.forget_offline_after_s / 10))
    # After the storage failed, no one is marked offline and no lease expires for three
    # heartbeat intervals: the fleet's heartbeats (and the other replicas' news of them)
    # may not have been heard meanwhile.
    quiet_until = 0.0
    while True:
        await asyncio.sleep(tick_s)
        try:
            if loop.time() >= next_save:
                next_save = loop.time() + store.save_every_s
                await store.save_volatile()
            if not store.leads() or loop.time() < quiet_until:
                continue
            jobs.release(await registry.sweep())
            await jobs.expire_leases()
            if loop.time() >= next_forget:
                next_forget = loop.time() + min(600.0, max(1.0, settings.retention_s / 4))
                await files.forget_old()
            if loop.time() >= next_forget_providers:
                next_forget_providers = loop.time() + forget_every_s
                for worker_id in await registry.forget():
                    await jobs.requeue_held_by(worker_id)
        except (StorageError, OSError) as exc:
            log.error("housekeeping: %s", exc)
            quiet_until = loop.time() + settings.offline_after_s


# What the pages may do: their own scripts, styles and API only (no inline script), and no
# framing; nothing is sniffed and no referrer leaves them.
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _Page:
    """An ASGI app (a page, or the static files) whose answers carry `PAGE_HEADERS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *PAGE_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(path: Path, url: str) -> Route:
    async def page(scope: Scope, receive: Receive, send: Send) -> None:
        await FileResponse(path, media_type="text/html")(scope, receive, send)

    return Route(url, _Page(page), methods=["GET"])


def open_store(settings: Settings) -> Store:
    """PostgreSQL when `--database` names one, else the embedded store in the data dir."""
    if settings.database_url:
        from qubix_cli.server.pgstore import PostgresStore

        make_data_dir(settings.data_dir)  # the API key, the update key and job files
        return PostgresStore(settings.database_url, heartbeat_s=settings.heartbeat_interval_s)
    return JournalStore(settings.data_dir)


def create_app(settings: Settings, clock: Clock = time.time) -> Coordinator:
    """Build the coordinator on the data directory in `settings`; `clock` tells the time
    to the registry and the job queue (tests pass one of their own)."""
    store = open_store(settings)
    events = EventBus(clock)
    registry = Registry(store, events, settings, clock)
    api_key = settings.api_key or load_or_create_api_key(settings.data_dir)[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not await accounts.install_start_key(api_key):
            log.warning("the key this server was started with was revoked: it stays refused")
        await jobs.recover()
        tick_s = min(1.0, settings.heartbeat_interval_s / 4)
        task = asyncio.create_task(_housekeeping(app, tick_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.save_volatile()
            await store.close()

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    web = Path(__file__).parent.parent / "web"

    metrics = Metrics()
    release = UpdateKey(settings.data_dir).sign(AGENT_VERSION, build_worker_pyz())
    store.observe_commit = metrics.commit.observe
    accounts = Accounts(store, clock)
    jobs = JobQueue(store, events, registry, accounts, metrics, clock)

    def changed(table: str, key: str, summary: dict[str, object] | None, here: bool) -> None:
        jobs.changed(table, key, summary, here)
        registry.changed(table, key, summary, here)
        files.log_waiters.changed(table, key, summary, here)

    store.observe_change = changed
    events.forward, store.observe_event = store.share_event, events.deliver
    blobs = Blobs(settings.data_dir / "blobs", settings.min_free_mb * 2**20)
    files = JobFiles(store, blobs, settings, clock)
    api = Api(registry, jobs, files, accounts, metrics, release)
    app = Coordinator(
        routes=[
            *api.routes(),
            Route("/openapi.json", openapi),
            _page(web / "index.html", "/"),
            _page(web / "marketplace.html", "/marketplace"),
            _page(web / "provider.html", "/providers/{workerId}"),
            _page(web / "provider.html", "/address/{qubicAddress}"),
            Mount("/static", _Page(StaticFiles(directory=web)), name="static"),
        ],
        lifespan=lifespan,
        exception_handlers={
            QubixError: _domain_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.api = api
    app.state.settings = settings
    app.state.store = store
    app.state.registry = registry
    app.state.jobs = jobs
    app.state.accounts = accounts
    app.state.metrics = metrics
    app.state.files = files
    return app
