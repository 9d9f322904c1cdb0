"""One endpoint table gives the routes and the OpenAPI paths; the lists they share agree."""

from __future__ import annotations

import re

from starlette.routing import Route
from starlette.testclient import TestClient

from qubix_cli.errors import QubixError, ServerError
from qubix_cli.server.http import STATUS, error_status
from qubix_cli.server.openapi import openapi_document
from qubix_cli.server.schemas import JOB_TYPES
from qubix_cli.worker import jobs as worker_jobs

# Routes outside the API document: the pages, the document itself and static files.
NOT_DOCUMENTED = {
    "/",
    "/marketplace",
    "/providers/{workerId}",
    "/address/{qubicAddress}",
    "/openapi.json",
}  # pages


def test_every_route_is_documented_and_every_documented_operation_routed(
    client: TestClient,
) -> None:
    routed = {
        (method, re.sub(r":\w+}", "}", route.path))  # without Starlette's converters
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path not in NOT_DOCUMENTED
        for method in (route.methods or ()) - {"HEAD"}
    }
    paths = openapi_document()["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert routed == documented
    assert len(documented) == 35
    for path, ops in paths.items():  # path parameters are declared
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path))


def test_a_documented_operation_answers_as_documented(client: TestClient) -> None:
    ops = openapi_document()["paths"]["/api/jobs"]
    assert ops["post"]["security"] == [{"apiKey": []}]
    assert client.post("/api/jobs", json={"type": "sleep"}).status_code == 401
    assert "401" in ops["post"]["responses"]


def test_the_server_and_the_worker_know_the_same_job_types() -> None:
    browser_only = ["wgsl"]  # a WebGPU shader: the browser worker's (web/browser-worker.js)
    assert [name for name in JOB_TYPES if name not in browser_only] == list(worker_jobs.JOB_TYPES)
    user = {name for name, kind in worker_jobs.JOB_TYPES.items() if kind.user}
    assert user.isdisjoint({name for name, kind in JOB_TYPES.items() if kind.always})
    refusing = worker_jobs.Policy(user_jobs=False, allow_unsandboxed=True)
    assert worker_jobs.capabilities(refusing) == ["benchmark", "sleep", "matmul"]
    unsandboxed = worker_jobs.Policy(allow_unsandboxed=True)
    assert worker_jobs.capabilities(unsandboxed) == [
        "benchmark",
        "sleep",
        "command",
        "python",
        "matmul",
    ]


def test_every_domain_error_has_one_status() -> None:
    def subclasses(cls: type[QubixError]) -> set[type[QubixError]]:
        found = set(cls.__subclasses__())
        return found | {s for c in found for s in subclasses(c)}

    for cls in subclasses(QubixError) - {ServerError}:  # ServerError is the client's
        assert error_status(cls("x")) in dict(STATUS).values(), cls
    assert error_status(QubixError("x")) == 500
