"""HTTP endpoints: each parses its input, calls the registry or the queue, answers JSON."""

from __future__ import annotations

import hmac
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from qubix_cli.errors import ValidationError
from qubix_cli.installer.render import render
from qubix_cli.server.http import (
    ApiError,
    bearer_token,
    internal_error,
    json_response,
    parse_json,
    read_body,
    read_json,
    read_query,
    request_headers,
    require_token,
    send_json,
    unless_disconnected,
    validate,
)
from qubix_cli.server.jobs import RESULT_LIMIT_BYTES, JobQueue
from qubix_cli.server.providers import Registry
from qubix_cli.server.schemas import (
    PAYLOADS,
    CheckNewQuery,
    Heartbeat,
    InstallerQuery,
    JobListQuery,
    JobReport,
    JobSubmit,
    PendingQuery,
    ProviderListQuery,
    Register,
)
from qubix_cli.server.store import Doc

HEARTBEAT_PATH = "/api/providers/{workerId}/heartbeat"


class Heartbeats:
    """POST /api/providers/{workerId}/heartbeat, as a plain ASGI app.

    Heartbeats are most of the traffic: 10,000 workers send 333 a second, and each is a
    POST whose token is checked and whose body is validated. `Coordinator` hands them to
    this app before Starlette's middleware and router; it reads the two headers it needs
    from the ASGI scope instead of building a `Request`, and sends its answer without a
    `Response`. Together that is a tenth of a heartbeat's cost (docs/performance.md). It
    answers its own errors, as every other endpoint does."""

    def __init__(self, registry: Registry, jobs: JobQueue) -> None:
        self.registry, self.jobs, self.settings = registry, jobs, registry.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._answer(scope, receive)
        except ApiError as exc:
            await exc.response()(scope, receive, send)
        except Exception:
            await internal_error(scope)(scope, receive, send)
        else:
            await send_json(send, answer)

    async def _answer(self, scope: Scope, receive: Receive) -> Doc:
        headers = request_headers(scope, b"authorization", b"content-length")
        worker_id = scope["path_params"]["workerId"]
        self.registry.authenticate(worker_id, require_token(headers))
        body = parse_json(await read_body(receive, headers), Heartbeat)
        self.registry.heartbeat(worker_id, body)
        cancels = self.jobs.heartbeat(worker_id, body.currentJobId)
        return {
            "ok": True,
            "serverTime": time.time(),
            "heartbeatIntervalS": self.settings.heartbeat_interval_s,
            "pollWaitS": self.settings.poll_wait_s,
            "cancelJobIds": cancels,
        }


class Api:
    """The endpoints, bound to one registry and one queue."""

    def __init__(self, registry: Registry, jobs: JobQueue, api_key: str) -> None:
        self.registry, self.jobs, self.settings = registry, jobs, registry.settings
        self._api_key = api_key.encode()
        self.heartbeats = Heartbeats(registry, jobs)

    def routes(self) -> list[BaseRoute]:
        # Routes are matched in order, the busiest first. Heartbeat POSTs are handed over
        # before the router (see `Coordinator`); their route answers other methods (405).
        return [
            Route(HEARTBEAT_PATH, self.heartbeats, methods=["POST"]),
            Route("/api/jobs/pending/{workerId}", self.pending_job),
            Route("/healthz", self.healthz),
            Route("/api/providers/quick-register", self.quick_register, methods=["POST"]),
            Route("/api/providers/check-new", self.check_new),
            Route("/api/providers", self.list_providers),
            Route("/api/providers/{workerId}", self.get_provider, methods=["GET"]),
            Route("/api/providers/{workerId}", self.delete_provider, methods=["DELETE"]),
            Route("/api/jobs", self.submit_job, methods=["POST"]),
            Route("/api/jobs", self.list_jobs, methods=["GET"]),
            Route("/api/jobs/{jobId}", self.get_job),
            Route("/api/jobs/{jobId}/cancel", self.cancel_job, methods=["POST"]),
            Route("/api/jobs/{jobId}/complete", self.complete_job, methods=["POST"]),
            Route("/api/installer/{os}", self.installer),
            WebSocketRoute("/api/events", self.events),
        ]

    def _worker(self, request: Request) -> Doc:
        """The provider named in the path, authenticated by its worker token."""
        token = require_token(request.headers)
        return self.registry.authenticate(request.path_params["workerId"], token)

    def _is_api_key(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._api_key)

    def _require_api_key(self, request: Request) -> None:
        if not self._is_api_key(require_token(request.headers)):
            raise ApiError(401, "unauthorized", "this needs the server's API key as a Bearer token")

    async def healthz(self, request: Request) -> Response:
        return json_response({"ok": True, "serverTime": time.time()})

    # -- providers ---------------------------------------------------------------------

    async def quick_register(self, request: Request) -> Response:
        body = await read_json(request, Register)
        doc, token = await self.registry.register(body, bearer_token(request.headers))
        answer: Doc = {"provider": self.registry.public(doc)}
        if token is not None:
            answer["workerToken"] = token
        return json_response(answer, 201 if token else 200)

    async def check_new(self, request: Request) -> Response:
        wait = self.registry.check_new(read_query(request, CheckNewQuery))
        providers = await unless_disconnected(request, wait) or []
        return json_response({"providers": providers, "serverTime": time.time()})

    async def list_providers(self, request: Request) -> Response:
        providers = self.registry.search(read_query(request, ProviderListQuery))
        return json_response({"providers": providers})

    async def get_provider(self, request: Request) -> Response:
        return json_response({"provider": self.registry.get(request.path_params["workerId"])})

    async def delete_provider(self, request: Request) -> Response:
        token = require_token(request.headers)
        worker_id = request.path_params["workerId"]
        if not self._is_api_key(token):
            self.registry.authenticate(worker_id, token)
        await self.registry.delete(worker_id)
        return Response(status_code=204)

    # -- jobs --------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        self._require_api_key(request)
        body = await read_json(request, JobSubmit)
        payload = validate(PAYLOADS[body.type], body.payload, "body.payload")
        job = await self.jobs.submit(body, payload.model_dump(exclude_none=True))
        return json_response({"job": job}, 201)

    async def list_jobs(self, request: Request) -> Response:
        self._require_api_key(request)
        query = read_query(request, JobListQuery)
        jobs, total = self.jobs.search(query)
        return json_response({"jobs": jobs, "total": total, "offset": query.offset})

    async def get_job(self, request: Request) -> Response:
        self._require_api_key(request)
        return json_response({"job": self.jobs.get(request.path_params["jobId"])})

    async def cancel_job(self, request: Request) -> Response:
        self._require_api_key(request)
        return json_response({"job": await self.jobs.cancel(request.path_params["jobId"])})

    async def pending_job(self, request: Request) -> Response:
        provider = self._worker(request)
        query = read_query(request, PendingQuery)
        self.registry.polled(provider["workerId"])
        job = await unless_disconnected(request, self.jobs.lease(provider, query.wait))
        if job is None:
            return Response(status_code=204)
        return json_response(
            {"job": job, "attempt": job["attempt"], "leaseExpiresAt": job["leaseExpiresAt"]}
        )

    async def complete_job(self, request: Request) -> Response:
        provider = self.registry.worker_for_token(require_token(request.headers))
        job_id = request.path_params["jobId"]
        report = await read_json(request, JobReport, limit=2 * RESULT_LIMIT_BYTES)
        job = await self.jobs.complete(job_id, provider["workerId"], report)
        return json_response({"job": job})

    # -- installers --------------------------------------------------------------------

    async def installer(self, request: Request) -> Response:
        query = read_query(request, InstallerQuery)
        backend = query.backend or self.settings.public_url or str(request.base_url)
        try:
            built = render(request.path_params["os"], backend.rstrip("/"), query.qubicAddress)
        except ValidationError as exc:
            raise ApiError(400, "invalid_installer_request", str(exc)) from exc
        disposition = f'attachment; filename="{built.filename}"'
        headers = {"Content-Disposition": disposition, "X-Checksum-Sha256": built.sha256}
        return Response(built.content, media_type=built.media_type, headers=headers)

    # -- events ------------------------------------------------------------------------

    async def events(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            async with self.registry.events.subscribe() as queue:
                while (event := await queue.get()) is not None:
                    await websocket.send_json(event)
            await websocket.close(code=1013, reason="too slow: reconnect")
        except WebSocketDisconnect:
            pass
