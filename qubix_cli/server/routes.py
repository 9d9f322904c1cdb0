"""HTTP endpoints: each parses its input, calls the registry or the queue, answers JSON."""

from __future__ import annotations

import hmac
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from qubix_cli.server.http import (
    ApiError,
    bearer_token,
    json_response,
    read_json,
    read_query,
    require_token,
    validate,
)
from qubix_cli.server.jobs import RESULT_LIMIT_BYTES, JobQueue
from qubix_cli.server.providers import Registry
from qubix_cli.server.schemas import (
    PAYLOADS,
    CheckNewQuery,
    Heartbeat,
    JobListQuery,
    JobReport,
    JobSubmit,
    PendingQuery,
    ProviderListQuery,
    Register,
)
from qubix_cli.server.store import Doc


def _registry(request: Request | WebSocket) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _jobs(request: Request) -> JobQueue:
    jobs: JobQueue = request.app.state.jobs
    return jobs


def _worker(request: Request) -> Doc:
    """The provider named in the path, authenticated by its worker token."""
    return _registry(request).authenticate(request.path_params["workerId"], require_token(request))


def _is_api_key(request: Request, token: str | None) -> bool:
    key: str = request.app.state.api_key
    return token is not None and hmac.compare_digest(token.encode(), key.encode())


def _require_api_key(request: Request) -> None:
    if not _is_api_key(request, require_token(request)):
        raise ApiError(401, "unauthorized", "this needs the server's API key as a Bearer token")


async def healthz(request: Request) -> Response:
    return json_response({"ok": True, "serverTime": time.time()})


# -- providers -------------------------------------------------------------------------


async def quick_register(request: Request) -> Response:
    body = await read_json(request, Register)
    doc, token = await _registry(request).register(body, bearer_token(request.headers))
    answer: Doc = {"provider": _registry(request).public(doc)}
    if token is not None:
        answer["workerToken"] = token
    return json_response(answer, 201 if token else 200)


async def check_new(request: Request) -> Response:
    query = read_query(request, CheckNewQuery)
    providers = await _registry(request).check_new(query)
    return json_response({"providers": providers, "serverTime": time.time()})


async def heartbeat(request: Request) -> Response:
    provider = _worker(request)
    body = await read_json(request, Heartbeat)
    _registry(request).heartbeat(provider["workerId"], body)
    cancels = _jobs(request).heartbeat(provider["workerId"], body.currentJobId)
    settings = _registry(request).settings
    return json_response(
        {
            "ok": True,
            "serverTime": time.time(),
            "heartbeatIntervalS": settings.heartbeat_interval_s,
            "pollWaitS": settings.poll_wait_s,
            "cancelJobIds": cancels,
        }
    )


async def list_providers(request: Request) -> Response:
    providers = _registry(request).search(read_query(request, ProviderListQuery))
    return json_response({"providers": providers})


async def get_provider(request: Request) -> Response:
    return json_response({"provider": _registry(request).get(request.path_params["workerId"])})


async def delete_provider(request: Request) -> Response:
    token = require_token(request)
    worker_id = request.path_params["workerId"]
    if not _is_api_key(request, token):
        _registry(request).authenticate(worker_id, token)
    await _registry(request).delete(worker_id)
    return Response(status_code=204)


# -- jobs ------------------------------------------------------------------------------


async def submit_job(request: Request) -> Response:
    _require_api_key(request)
    body = await read_json(request, JobSubmit)
    payload = validate(PAYLOADS[body.type], body.payload, "body.payload")
    job = await _jobs(request).submit(body, payload.model_dump(exclude_none=True))
    return json_response({"job": job}, 201)


async def list_jobs(request: Request) -> Response:
    _require_api_key(request)
    query = read_query(request, JobListQuery)
    jobs, total = _jobs(request).search(query)
    return json_response({"jobs": jobs, "total": total, "offset": query.offset})


async def get_job(request: Request) -> Response:
    _require_api_key(request)
    return json_response({"job": _jobs(request).get(request.path_params["jobId"])})


async def cancel_job(request: Request) -> Response:
    _require_api_key(request)
    return json_response({"job": await _jobs(request).cancel(request.path_params["jobId"])})


async def pending_job(request: Request) -> Response:
    provider = _worker(request)
    query = read_query(request, PendingQuery)
    job = await _jobs(request).lease(provider, query.wait)
    if job is None:
        return Response(status_code=204)
    return json_response(
        {"job": job, "attempt": job["attempt"], "leaseExpiresAt": job["leaseExpiresAt"]}
    )


async def complete_job(request: Request) -> Response:
    provider = _registry(request).worker_for_token(require_token(request))
    job_id = request.path_params["jobId"]
    report = await read_json(request, JobReport, limit=2 * RESULT_LIMIT_BYTES)
    job = await _jobs(request).complete(job_id, provider["workerId"], report)
    return json_response({"job": job})


# -- events ----------------------------------------------------------------------------


async def events(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        async with _registry(websocket).events.subscribe() as queue:
            while (event := await queue.get()) is not None:
                await websocket.send_json(event)
        await websocket.close(code=1013, reason="too slow: reconnect")
    except WebSocketDisconnect:
        pass


ROUTES = [
    Route("/healthz", healthz),
    Route("/api/providers/quick-register", quick_register, methods=["POST"]),
    Route("/api/providers/check-new", check_new),
    Route("/api/providers/{workerId}/heartbeat", heartbeat, methods=["POST"]),
    Route("/api/providers", list_providers),
    Route("/api/providers/{workerId}", get_provider, methods=["GET"]),
    Route("/api/providers/{workerId}", delete_provider, methods=["DELETE"]),
    Route("/api/jobs", submit_job, methods=["POST"]),
    Route("/api/jobs", list_jobs, methods=["GET"]),
    Route("/api/jobs/pending/{workerId}", pending_job),
    Route("/api/jobs/{jobId}", get_job),
    Route("/api/jobs/{jobId}/cancel", cancel_job, methods=["POST"]),
    Route("/api/jobs/{jobId}/complete", complete_job, methods=["POST"]),
    WebSocketRoute("/api/events", events),
]
