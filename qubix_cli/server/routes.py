"""HTTP endpoints: one table (`ENDPOINTS`) gives both the routes and the OpenAPI paths;
each endpoint parses its input, calls the registry or the queue, answers JSON."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from qubix_cli.errors import (
    Forbidden,
    InvalidInput,
    Malformed,
    QubixError,
    RateLimited,
    Unauthorized,
)
from qubix_cli.installer.render import render
from qubix_cli.server.diagnosis import diagnose
from qubix_cli.server.events import Subscription
from qubix_cli.server.http import (
    PerIp,
    bearer_token,
    client_ip,
    error_response,
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
from qubix_cli.server.jobfiles import JobFiles
from qubix_cli.server.jobs import RESULT_LIMIT_BYTES, JobQueue
from qubix_cli.server.keys import find_key
from qubix_cli.server.providers import Registry
from qubix_cli.server.schemas import (
    JOB_TYPES,
    ArtifactPath,
    ArtifactQuery,
    CheckNewQuery,
    Diagnosis,
    Health,
    Heartbeat,
    HeartbeatAnswer,
    InstallerQuery,
    JobListQuery,
    JobReport,
    Jobs,
    JobSubmit,
    Lease,
    LogChunk,
    Logs,
    LogsQuery,
    LogStored,
    NewProviders,
    OneArtifact,
    OneJob,
    OneProvider,
    PendingQuery,
    ProviderListQuery,
    ProviderPage,
    Register,
    Registered,
    Uploaded,
)
from qubix_cli.server.store import Doc

HEARTBEAT_PATH = "/api/providers/{workerId}/heartbeat"
REGISTRATION_LIMIT_BYTES = 16 * 1024
# Open check-new long-polls and event streams per client IP (a page or `qubix watch` holds
# one of each); workers' job polls are bounded by --max-providers-per-ip instead.
LONG_POLLS_PER_IP = 32
STREAMS_PER_IP = 32
SEND_TIMEOUT_S = 10.0  # an event stream whose reader takes longer than this is closed


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
        except QubixError as exc:
            await error_response(exc)(scope, receive, send)
        except Exception:
            await internal_error(scope)(scope, receive, send)
        else:
            await send_json(send, answer)

    async def _answer(self, scope: Scope, receive: Receive) -> Doc:
        headers = request_headers(scope, b"authorization", b"content-length")
        worker_id = scope["path_params"]["workerId"]
        await self.registry.authenticate(worker_id, require_token(headers))
        body = parse_json(await read_body(receive, headers), Heartbeat)
        await self.registry.heartbeat(worker_id, body)
        cancels = await self.jobs.heartbeat(worker_id, body.job_ids())
        return {
            "ok": True,
            "serverTime": time.time(),
            "heartbeatIntervalS": self.settings.heartbeat_interval_s,
            "pollWaitS": self.settings.poll_wait_s,
            "cancelJobIds": cancels,
        }


@dataclass(frozen=True)
class Endpoint:
    """One HTTP operation: its route (the `Api` method named `handler`) and its OpenAPI
    entry. Path parameters are read from the path."""

    method: str
    path: str
    handler: str
    summary: str
    codes: tuple[int, ...]  # the statuses it answers with
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None  # the model of its 200/201 answers
    media_type: str = "application/json"  # of its 200 answer
    auth: tuple[str, ...] = ()  # security schemes: "workerToken", "apiKey"
    upload: bool = False  # its body is a file's bytes (application/octet-stream)


LOG_BODY_LIMIT_BYTES = 512 * 1024  # a log chunk's 64 KiB of text, JSON-escaped
WORKER, API_KEY = ("workerToken",), ("apiKey",)

# Routes are matched in this order, the busiest first. Heartbeat POSTs are handed over
# before the router (see `Coordinator`); their route answers other methods (405).
ENDPOINTS = (
    Endpoint(
        "POST",
        HEARTBEAT_PATH,
        "heartbeats",
        "Heartbeat; renews the current job's lease",
        (200, 400, 401, 403, 404, 422),
        body=Heartbeat,
        answer=HeartbeatAnswer,
        auth=WORKER,
    ),
    Endpoint(
        "GET",
        "/api/jobs/pending/{workerId}",
        "pending_job",
        "Lease the oldest queued job this worker can run (long-poll)",
        (200, 204, 401, 403, 404, 422),
        query=PendingQuery,
        answer=Lease,
        auth=WORKER,
    ),
    Endpoint("GET", "/healthz", "healthz", "Liveness", (200,), answer=Health),
    Endpoint(
        "POST",
        "/api/providers/quick-register",
        "quick_register",
        "Register or re-register a provider",
        (200, 201, 400, 409, 413, 422, 429),
        body=Register,
        answer=Registered,
    ),
    Endpoint(
        "GET",
        "/api/providers/check-new",
        "check_new",
        "Providers registered since a time (long-poll)",
        (200, 422, 429),
        query=CheckNewQuery,
        answer=NewProviders,
    ),
    Endpoint(
        "GET",
        "/api/providers",
        "list_providers",
        "Marketplace list, a page at a time",
        (200, 422),
        query=ProviderListQuery,
        answer=ProviderPage,
    ),
    Endpoint(
        "GET",
        "/api/providers/{workerId}",
        "get_provider",
        "One provider",
        (200, 404),
        answer=OneProvider,
    ),
    Endpoint(
        "GET",
        "/api/providers/{workerId}/diagnosis",
        "diagnosis",
        "Why this worker gets no jobs, in words and numbers (its token or the API key)",
        (200, 401, 403, 404),
        answer=Diagnosis,
        auth=WORKER + API_KEY,
    ),
    Endpoint(
        "DELETE",
        "/api/providers/{workerId}",
        "delete_provider",
        "Deregister (its worker token or the API key)",
        (204, 401, 403, 404),
        auth=WORKER + API_KEY,
    ),
    Endpoint(
        "POST",
        "/api/jobs",
        "submit_job",
        "Submit a job",
        (201, 400, 401, 413, 422),
        body=JobSubmit,
        answer=OneJob,
        auth=API_KEY,
    ),
    Endpoint(
        "GET",
        "/api/jobs",
        "list_jobs",
        "List jobs, newest first",
        (200, 401, 422),
        query=JobListQuery,
        answer=Jobs,
        auth=API_KEY,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}",
        "get_job",
        "One job with its history",
        (200, 401, 404),
        answer=OneJob,
        auth=API_KEY,
    ),
    Endpoint(
        "POST",
        "/api/jobs/{jobId}/cancel",
        "cancel_job",
        "Cancel a queued or assigned job",
        (200, 401, 404, 409),
        answer=OneJob,
        auth=API_KEY,
    ),
    Endpoint(
        "POST",
        "/api/jobs/{jobId}/complete",
        "complete_job",
        "Report a result, once, as the lease holder",
        (200, 400, 401, 404, 409, 413, 422),
        body=JobReport,
        answer=OneJob,
        auth=WORKER,
    ),
    Endpoint(
        "POST",
        "/api/inputs",
        "upload_input",
        "Upload a file that jobs name as an input (by its SHA-256)",
        (201, 401, 413),
        answer=Uploaded,
        auth=API_KEY,
        upload=True,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}/inputs/{name}",
        "job_input",
        "An uploaded input of a job, for the worker that holds its lease",
        (200, 401, 404, 409),
        media_type="application/octet-stream",
        auth=WORKER,
    ),
    Endpoint(
        "PUT",
        "/api/jobs/{jobId}/artifacts/{name}",
        "put_artifact",
        "Upload an output file, as the lease holder of that attempt",
        (200, 401, 404, 409, 413, 422),
        query=ArtifactQuery,
        answer=OneArtifact,
        auth=WORKER,
        upload=True,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}/artifacts/{name}",
        "get_artifact",
        "Download an output file of a job",
        (200, 401, 404),
        media_type="application/octet-stream",
        auth=API_KEY,
    ),
    Endpoint(
        "POST",
        "/api/jobs/{jobId}/logs",
        "post_log",
        "Send the next part of a running job's output, as its lease holder",
        (200, 400, 401, 404, 409, 413, 422),
        body=LogChunk,
        answer=LogStored,
        auth=WORKER,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}/logs",
        "get_logs",
        "A job's output so far (long-poll for more with wait)",
        (200, 401, 404, 422),
        query=LogsQuery,
        answer=Logs,
        auth=API_KEY,
    ),
    Endpoint(
        "GET",
        "/api/installer/{os}",
        "installer",
        "A one-file installer for windows, linux or macos (.bat or .sh)",
        (200, 400),
        query=InstallerQuery,
        media_type="text/x-shellscript",
    ),
)


class Api:
    """The endpoints, bound to one registry, one queue and the store that holds the keys."""

    def __init__(self, registry: Registry, jobs: JobQueue, files: JobFiles) -> None:
        self.registry, self.jobs, self.files = registry, jobs, files
        self.settings = registry.settings
        self.store = registry.store
        self.heartbeats = Heartbeats(registry, jobs)
        self._polls = PerIp("check-new long-polls", LONG_POLLS_PER_IP)
        self._streams = PerIp("event streams", STREAMS_PER_IP)

    def routes(self) -> list[BaseRoute]:
        """The routes of `ENDPOINTS`, then the events stream."""
        routes: list[BaseRoute] = [
            Route(e.path, getattr(self, e.handler), methods=[e.method]) for e in ENDPOINTS
        ]
        return [*routes, WebSocketRoute("/api/events", self.events)]

    async def _worker(self, request: Request) -> Doc:
        """The provider named in the path, authenticated by its worker token."""
        token = require_token(request.headers)
        return await self.registry.authenticate(request.path_params["workerId"], token)

    async def _is_api_key(self, token: str | None) -> bool:
        return token is not None and await find_key(self.store, token) is not None

    async def _require_api_key(self, request: Request) -> None:
        if not await self._is_api_key(require_token(request.headers)):
            raise Unauthorized("this needs the server's API key as a Bearer token")

    async def healthz(self, request: Request) -> Response:
        return json_response({"ok": True, "serverTime": time.time()})

    # -- providers ---------------------------------------------------------------------

    async def quick_register(self, request: Request) -> Response:
        body = await read_json(request, Register, limit=REGISTRATION_LIMIT_BYTES)
        ip = self._ip(request.scope)
        doc, token = await self.registry.register(body, bearer_token(request.headers), ip)
        answer: Doc = {"provider": await self.registry.public(doc)}
        if token is not None:
            answer["workerToken"] = token
        return json_response(answer, 201 if token else 200)

    async def check_new(self, request: Request) -> Response:
        query = read_query(request, CheckNewQuery)
        with self._polls.hold(self._ip(request.scope)) if query.wait else contextlib.nullcontext():
            providers = await unless_disconnected(request, self.registry.check_new(query)) or []
        return json_response({"providers": providers, "serverTime": time.time()})

    async def list_providers(self, request: Request) -> Response:
        page, cursor = await self.registry.search(read_query(request, ProviderListQuery))
        return json_response({"providers": page, "nextCursor": cursor})

    async def get_provider(self, request: Request) -> Response:
        provider = await self.registry.get(request.path_params["workerId"])
        return json_response({"provider": provider})

    async def diagnosis(self, request: Request) -> Response:
        token = require_token(request.headers)
        worker_id = request.path_params["workerId"]
        if await self._is_api_key(token):
            provider = await self.registry.find(worker_id)
        else:
            try:
                provider = await self.registry.authenticate(worker_id, token)
            except Forbidden as exc:
                message = f"this is neither the server's API key nor the token of {worker_id!r}"
                raise Forbidden(message) from exc
        return json_response(await diagnose(self.registry, self.jobs, provider))

    async def delete_provider(self, request: Request) -> Response:
        token = require_token(request.headers)
        worker_id = request.path_params["workerId"]
        if not await self._is_api_key(token):
            await self.registry.authenticate(worker_id, token)
        await self.registry.delete(worker_id)
        await self.jobs.requeue_held_by(worker_id)
        return Response(status_code=204)

    # -- jobs --------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        await self._require_api_key(request)
        body = await read_json(request, JobSubmit)
        payload = validate(JOB_TYPES[body.type].payload, body.payload, "body.payload")
        await self.files.check_inputs(body.inputs)
        job = await self.jobs.submit(body, payload.model_dump(exclude_none=True))
        return json_response({"job": job}, 201)

    async def list_jobs(self, request: Request) -> Response:
        await self._require_api_key(request)
        query = read_query(request, JobListQuery)
        jobs, total = await self.jobs.search(query)
        return json_response({"jobs": jobs, "total": total, "offset": query.offset})

    async def get_job(self, request: Request) -> Response:
        await self._require_api_key(request)
        return json_response({"job": await self.jobs.get(request.path_params["jobId"])})

    async def cancel_job(self, request: Request) -> Response:
        await self._require_api_key(request)
        return json_response({"job": await self.jobs.cancel(request.path_params["jobId"])})

    async def pending_job(self, request: Request) -> Response:
        provider = await self._worker(request)
        query = read_query(request, PendingQuery)
        await self.registry.polled(provider["workerId"])
        job = await unless_disconnected(request, self.jobs.lease(provider, query.wait))
        if job is None:
            return Response(status_code=204)
        return json_response(
            {
                "job": job,
                "attempt": job["attempt"],
                "leaseExpiresAt": job["leaseExpiresAt"],
                "inputNetworks": list(self.settings.input_networks),
            }
        )

    async def complete_job(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        job_id = request.path_params["jobId"]
        report = await read_json(request, JobReport, limit=2 * RESULT_LIMIT_BYTES)
        job = await self.jobs.complete(job_id, provider, report)
        return json_response({"job": job})

    # -- inputs, outputs, logs ------------------------------------------------------

    async def upload_input(self, request: Request) -> Response:
        await self._require_api_key(request)
        return json_response(await self.files.upload_input(request.stream()), 201)

    async def job_input(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        job_id, name = request.path_params["jobId"], request.path_params["name"]
        path = await self.files.input_path(job_id, name, provider)
        return FileResponse(path, media_type="application/octet-stream")

    async def put_artifact(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        name = validate(ArtifactPath, {"name": request.path_params["name"]}, "path").name
        attempt = read_query(request, ArtifactQuery).attempt
        job_id = request.path_params["jobId"]
        artifact = await self.files.add_artifact(job_id, name, attempt, provider, request.stream())
        return json_response({"artifact": artifact})

    async def get_artifact(self, request: Request) -> Response:
        await self._require_api_key(request)
        job_id, name = request.path_params["jobId"], request.path_params["name"]
        path, artifact = await self.files.artifact(job_id, name)
        headers = {
            "X-Checksum-Sha256": artifact["sha256"],
            "Content-Disposition": f'attachment; filename="{artifact["name"]}"',
        }
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    async def post_log(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        chunk = await read_json(request, LogChunk, limit=LOG_BODY_LIMIT_BYTES)
        stored = await self.files.append_log(request.path_params["jobId"], provider, chunk)
        return json_response({"stored": stored})

    async def get_logs(self, request: Request) -> Response:
        await self._require_api_key(request)
        query = read_query(request, LogsQuery)
        job_id = request.path_params["jobId"]
        logs = await unless_disconnected(request, self.files.logs(job_id, query))
        return json_response(logs) if logs is not None else Response(status_code=204)

    # -- installers --------------------------------------------------------------------

    async def installer(self, request: Request) -> Response:
        query = read_query(request, InstallerQuery)
        backend = query.backend or self.settings.public_url or str(request.base_url)
        public = self.settings.public_url
        if public and backend.rstrip("/") not in {public, *self.settings.allow_backends}:
            raise Malformed(
                f"this server builds installers for {public} only (and the URLs its operator "
                "allows with --allow-backend), not for another coordinator",
                code="backend_not_allowed",
            )
        try:
            built = render(request.path_params["os"], backend.rstrip("/"), query.qubicAddress)
        except InvalidInput as exc:
            raise Malformed(str(exc), code="invalid_installer_request") from exc
        disposition = f'attachment; filename="{built.filename}"'
        headers = {"Content-Disposition": disposition, "X-Checksum-Sha256": built.sha256}
        return Response(built.content, media_type=built.media_type, headers=headers)

    # -- events ------------------------------------------------------------------------

    async def events(self, websocket: WebSocket) -> None:
        """WS /api/events: provider events for anyone; job events once a key is shown, as
        `Authorization: Bearer` on the upgrade or (browsers) a first message
        `{"type": "auth", "key": ...}`. An upgrade from a foreign `Origin` is refused."""
        if not self._own_origin(websocket):
            await websocket.close(code=1008)  # before accepting: the upgrade is answered 403
            return
        keyed = await self._is_api_key(bearer_token(websocket.headers))
        await websocket.accept()
        try:
            with self._streams.hold(self._ip(websocket.scope)):
                await self._stream(websocket, keyed)
        except RateLimited as exc:
            await websocket.close(code=1013, reason=exc.message[:120])

    def _ip(self, scope: Scope) -> str:
        return client_ip(scope, self.settings.trusted_proxies)

    async def _stream(self, websocket: WebSocket, keyed: bool) -> None:
        async with self.registry.events.subscribe(jobs=keyed) as sub:
            tasks = {
                asyncio.ensure_future(self._send_events(websocket, sub)),
                asyncio.ensure_future(self._read_auth(websocket, sub)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()

    def _own_origin(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin")
        if origin is None:
            return True  # not a browser
        scheme = "https" if websocket.url.scheme == "wss" else "http"
        allowed = {f"{scheme}://{websocket.url.netloc}", *self.settings.allowed_origins()}
        return origin.rstrip("/").lower() in {o.lower() for o in allowed}

    async def _send_events(self, websocket: WebSocket, sub: Subscription) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while (event := await sub.queue.get()) is not None:
                try:
                    await asyncio.wait_for(websocket.send_json(event), SEND_TIMEOUT_S)
                except TimeoutError:
                    break  # a reader that does not read
            await websocket.close(code=1013, reason="too slow: reconnect")

    async def _read_auth(self, websocket: WebSocket, sub: Subscription) -> None:
        """Until the client goes away: an `auth` message adds job events, or, with a key
        that is not valid, closes the stream."""
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                try:
                    message = await websocket.receive_json()
                except ValueError:
                    continue  # not JSON: ignored
                if not isinstance(message, dict) or message.get("type") != "auth":
                    continue
                key = message.get("key")
                if not isinstance(key, str) or not await self._is_api_key(key):
                    await websocket.close(code=1008, reason="this key is not valid")
                    return
                sub.jobs = True
                await websocket.send_json({"type": "AUTHENTICATED", "data": {}, "at": time.time()})
