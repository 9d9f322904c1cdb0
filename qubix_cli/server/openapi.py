"""The OpenAPI 3 document, generated from the same schemas that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from qubix_cli import __version__
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
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for code in codes:
        answer: dict[str, Any] = {"description": _CODES[code]}
        if code not in (204,):
            ref = {"$ref": _REF.format(model="Error")} if code >= 400 else {"type": "object"}
            answer["content"] = {"application/json": {"schema": ref}}
        responses[str(code)] = answer
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        schema = {"$ref": _REF.format(model=body.__name__)}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if params:
        op["parameters"] = params
    if security:
        op["security"] = security
    return op


def _paths() -> dict[str, Any]:
    worker, job = [_path("workerId")], [_path("jobId")]
    return {
        "/healthz": {"get": _op("Liveness", (200,))},
        "/api/providers/quick-register": {
            "post": _op(
                "Register or re-register a provider", (200, 201, 400, 409, 413, 422), Register
            )
        },
        "/api/providers/check-new": {
            "get": _op(
                "Providers registered since a time (long-poll)",
                (200, 422),
                params=_query(CheckNewQuery),
            )
        },
        "/api/providers/{workerId}/heartbeat": {
            "post": _op(
                "Heartbeat; renews the current job's lease",
                (200, 400, 401, 403, 404, 422),
                Heartbeat,
                worker,
                _WORKER,
            )
        },
        "/api/providers": {
            "get": _op("Marketplace list", (200, 422), params=_query(ProviderListQuery))
        },
        "/api/providers/{workerId}": {
            "get": _op("One provider", (200, 404), params=worker),
            "delete": _op(
                "Deregister (its worker token or the API key)",
                (204, 401, 403, 404),
                params=worker,
                security=[*_WORKER, *_API_KEY],
            ),
        },
        "/api/jobs": {
            "post": _op("Submit a job", (201, 400, 401, 413, 422), JobSubmit, security=_API_KEY),
            "get": _op(
                "List jobs, newest first",
                (200, 401, 422),
                params=_query(JobListQuery),
                security=_API_KEY,
            ),
        },
        "/api/jobs/pending/{workerId}": {
            "get": _op(
                "Lease the oldest queued job this worker can run (long-poll)",
                (200, 204, 401, 403, 404, 422),
                params=worker + _query(PendingQuery),
                security=_WORKER,
            )
        },
        "/api/jobs/{jobId}": {
            "get": _op("One job with its history", (200, 401, 404), params=job, security=_API_KEY)
        },
        "/api/jobs/{jobId}/cancel": {
            "post": _op(
                "Cancel a queued or assigned job",
                (200, 401, 404, 409),
                params=job,
                security=_API_KEY,
            )
        },
        "/api/jobs/{jobId}/complete": {
            "post": _op(
                "Report a result, once, as the lease holder",
                (200, 400, 401, 404, 409, 413, 422),
                JobReport,
                job,
                _WORKER,
            )
        },
    }


class Error(BaseModel):
    error: str
    message: str
    details: Any = None


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP endpoint (WS /api/events is in docs/api.md)."""
    models: list[type[BaseModel]] = [
        Register,
        Heartbeat,
        JobSubmit,
        JobReport,
        Error,
        *PAYLOADS.values(),
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
