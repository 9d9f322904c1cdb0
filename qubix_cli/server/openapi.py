"""The OpenAPI 3 document, generated from the same schemas that validate requests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from qubix_cli import __version__
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
    Usage,
)

_REF = "#/components/schemas/{model}"
_WORKER: list[dict[str, list[str]]] = [{"workerToken": []}]
_API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
_CODES = {
    200: "OK",
    201: "Created",
    204: "Nothing to answer (no content)",
    400: "Malformed request",
    401: "No or bad token",
    403: "Token of another worker",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid fields",
    503: "Storage unavailable",
}


# -- answers: documented here, and checked against real answers by the schema fuzz tests ----


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(Answer):
    error: str
    message: str
    details: Any = None


class Provider(Register):
    """A provider as answers show it: its registration and what the server knows of it."""

    registeredAt: float
    lastRegisteredAt: float
    status: Literal["online", "busy", "offline"]
    lastSeenAt: float | None
    usage: Usage | None
    currentJobId: str | None


class Registered(Answer):
    provider: Provider
    workerToken: str | None = Field(None, description="Only in the first registration's answer.")


class OneProvider(Answer):
    provider: Provider


class Providers(Answer):
    providers: list[Provider]


class NewProviders(Providers):
    serverTime: float = Field(description="Pass it as `since` to the next call.")


class HeartbeatAnswer(Answer):
    ok: bool
    serverTime: float
    heartbeatIntervalS: float
    pollWaitS: float
    cancelJobIds: list[str]


class HistoryEntry(BaseModel):
    event: str
    at: float


class Job(JobSubmit):
    """A job as answers show it: the submission and its state."""

    model_config = ConfigDict(extra="forbid", strict=False)
    id: str
    status: Literal["queued", "assigned", "completed", "failed", "cancelled"]
    attempt: int
    workerId: str | None
    createdAt: float
    updatedAt: float
    result: Any
    metrics: dict[str, Any] | None
    history: list[HistoryEntry]
    leaseExpiresAt: float | None


class OneJob(Answer):
    job: Job


class Jobs(Answer):
    jobs: list[Job]
    total: int
    offset: int


class Lease(Answer):
    job: Job
    attempt: int
    leaseExpiresAt: float


class Health(Answer):
    ok: bool
    serverTime: float


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    return [
        {"name": name, "in": "query", "required": False, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    codes: tuple[int, ...],
    body: type[BaseModel] | None = None,
    params: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    answer: type[BaseModel] | None = None,
) -> dict[str, Any]:
    """One operation; `answer` is the model of its 200/201 answers (errors are `Error`)."""
    responses: dict[str, Any] = {}
    for code in codes:
        response: dict[str, Any] = {"description": _CODES[code]}
        model = Error if code >= 400 else answer
        if code != 204 and model is not None:
            ref = {"$ref": _REF.format(model=model.__name__)}
            response["content"] = {"application/json": {"schema": ref}}
        responses[str(code)] = response
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        schema = {"$ref": _REF.format(model=body.__name__)}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if params:
        op["parameters"] = params
    if security:
        op["security"] = security
    return op


def _installer() -> dict[str, Any]:
    op = _op(
        "A one-file installer for windows, linux or macos (.bat or .sh)",
        (200, 400),
        params=[_path("os"), *_query(InstallerQuery)],
    )
    script = {"schema": {"type": "string"}}
    op["responses"]["200"]["content"] = {"text/x-shellscript": script}
    return op


def _paths() -> dict[str, Any]:
    worker, job = [_path("workerId")], [_path("jobId")]
    return {
        "/api/installer/{os}": {"get": _installer()},
        "/healthz": {"get": _op("Liveness", (200,), answer=Health)},
        "/api/providers/quick-register": {
            "post": _op(
                "Register or re-register a provider",
                (200, 201, 400, 409, 413, 422),
                Register,
                answer=Registered,
            )
        },
        "/api/providers/check-new": {
            "get": _op(
                "Providers registered since a time (long-poll)",
                (200, 422),
                params=_query(CheckNewQuery),
                answer=NewProviders,
            )
        },
        "/api/providers/{workerId}/heartbeat": {
            "post": _op(
                "Heartbeat; renews the current job's lease",
                (200, 400, 401, 403, 404, 422),
                Heartbeat,
                worker,
                _WORKER,
                HeartbeatAnswer,
            )
        },
        "/api/providers": {
            "get": _op(
                "Marketplace list", (200, 422), params=_query(ProviderListQuery), answer=Providers
            )
        },
        "/api/providers/{workerId}": {
            "get": _op("One provider", (200, 404), params=worker, answer=OneProvider),
            "delete": _op(
                "Deregister (its worker token or the API key)",
                (204, 401, 403, 404),
                params=worker,
                security=[*_WORKER, *_API_KEY],
            ),
        },
        "/api/jobs": {
            "post": _op(
                "Submit a job",
                (201, 400, 401, 413, 422),
                JobSubmit,
                security=_API_KEY,
                answer=OneJob,
            ),
            "get": _op(
                "List jobs, newest first",
                (200, 401, 422),
                params=_query(JobListQuery),
                security=_API_KEY,
                answer=Jobs,
            ),
        },
        "/api/jobs/pending/{workerId}": {
            "get": _op(
                "Lease the oldest queued job this worker can run (long-poll)",
                (200, 204, 401, 403, 404, 422),
                params=worker + _query(PendingQuery),
                security=_WORKER,
                answer=Lease,
            )
        },
        "/api/jobs/{jobId}": {
            "get": _op(
                "One job with its history",
                (200, 401, 404),
                params=job,
                security=_API_KEY,
                answer=OneJob,
            )
        },
        "/api/jobs/{jobId}/cancel": {
            "post": _op(
                "Cancel a queued or assigned job",
                (200, 401, 404, 409),
                params=job,
                security=_API_KEY,
                answer=OneJob,
            )
        },
        "/api/jobs/{jobId}/complete": {
            "post": _op(
                "Report a result, once, as the lease holder",
                (200, 400, 401, 404, 409, 413, 422),
                JobReport,
                job,
                _WORKER,
                OneJob,
            )
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP endpoint (WS /api/events is in docs/api.md)."""
    models: list[type[BaseModel]] = [
        Register,
        Heartbeat,
        JobSubmit,
        JobReport,
        *PAYLOADS.values(),
        Error,
        Health,
        Registered,
        OneProvider,
        Providers,
        NewProviders,
        HeartbeatAnswer,
        OneJob,
        Jobs,
        Lease,
    ]
    _, schemas = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Qubix coordinator", "version": __version__},
        "paths": _paths(),
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "workerToken": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "http", "scheme": "bearer"},
            },
        },
    }
