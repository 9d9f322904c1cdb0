"""The OpenAPI 3 document, generated from the endpoint table and the schemas that
validate requests and describe answers."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from qubix_cli import __version__
from qubix_cli.server.routes import ENDPOINTS, Endpoint
from qubix_cli.server.schemas import JOB_TYPES, Error

_REF = "#/components/schemas/{model}"
_CODES = {
    200: "OK",
    201: "Created",
    204: "Nothing to answer (no content)",
    400: "Malformed request",
    401: "No or bad token, or a revoked key",
    402: "More than the account has available (insufficient_funds)",
    403: "Token of another worker, or a renter's key where an operator's is needed",
    404: "Not found (also another renter's job)",
    409: "Conflict",
    413: "Body too large, or past an account's storage quota (quota_exceeded)",
    422: "Invalid fields",
    426: "The agent is too old: update it (agent_too_old; the offer in details)",
    429: "Too many, or an account's quota (see Retry-After)",
    503: "Storage unavailable",
    507: "The server's disk is at its free-space reserve: uploads wait (insufficient_storage)",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)(?::\w+)?}", endpoint.path)
    ]
    if endpoint.query is not None:
        schema = endpoint.query.model_json_schema(ref_template=_REF)
        params += [
            {"name": name, "in": "query", "required": False, "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    return params


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for code in endpoint.codes:
        response: dict[str, Any] = {"description": _CODES[code]}
        if code >= 400:
            response["content"] = {"application/json": {"schema": _ref(Error)}}
        elif code != 204 and endpoint.answer is not None:
            response["content"] = {endpoint.media_type: {"schema": _ref(endpoint.answer)}}
        elif code != 204:
            response["content"] = {endpoint.media_type: {"schema": {"type": "string"}}}
        responses[str(code)] = response
    return responses


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": endpoint.summary, "responses": _responses(endpoint)}
    if endpoint.body is not None:
        content = {"application/json": {"schema": _ref(endpoint.body)}}
        op["requestBody"] = {"required": True, "content": content}
    if endpoint.upload:
        binary = {"type": "string", "format": "binary"}
        op["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": binary}},
        }
    if params := _parameters(endpoint):
        op["parameters"] = params
    if endpoint.auth:
        op["security"] = [{scheme: []} for scheme in endpoint.auth]
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP endpoint (WS /api/events is in docs/api.md)."""
    paths: dict[str, dict[str, Any]] = {}
    models: dict[str, type[BaseModel]] = {"Error": Error}
    for endpoint in ENDPOINTS:
        path = re.sub(r"{(\w+):\w+}", r"{\1}", endpoint.path)  # Starlette's converters
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint)
        for model in (endpoint.body, endpoint.answer):
            if model is not None:
                models[model.__name__] = model
    for kind in JOB_TYPES.values():
        models[kind.payload.__name__] = kind.payload
    pairs = [(m, "validation") for m in models.values()]
    _, schemas = models_json_schema(pairs, ref_template=_REF)  # type: ignore[arg-type]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Qubix coordinator", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "workerToken": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "http", "scheme": "bearer"},
            },
        },
    }
