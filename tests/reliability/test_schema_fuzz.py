"""Hostile input: requests generated from /openapi.json for every endpoint, against a real
`qubix serve`, each sent without a token, with the API key and with a worker's token.
No answer is a 5xx, and every answer matches what the document says of it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from qubix_cli.server.openapi import openapi_document
from tests.helpers import API_KEY, ServerProcess, register_body

schema = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]  # not negative_data_rejection: unknown query keys are ignored on purpose (docs/api.md)
SENT = [0]
OPERATIONS: set[str] = set()
EXAMPLES = 60  # per operation and generation mode; x3 tokens: several thousand requests


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data").start()
    state = {"url": server.url}
    _register(state)
    yield state
    output = server.output()
    server.stop()
    assert "Traceback" not in output
    print(f"\n{SENT[0]} generated requests over {len(OPERATIONS)} operations")
    if len(OPERATIONS) == 14:  # every operation ran (not a -k selection): thousands of them
        assert SENT[0] >= 1500


def _register(state: dict[str, str]) -> None:
    answer = httpx.post(state["url"] + "/api/providers/quick-register", json=register_body("fuzz"))
    assert answer.status_code == 201, answer.text
    state["token"] = answer.json()["workerToken"]


def _no_long_waits(query: dict[str, object] | None) -> None:
    """Generated `wait` values would hold each long-poll for up to a minute."""
    if query and "wait" in query:
        try:
            if 0 < float(str(query["wait"])) <= 60:
                query["wait"] = 0
        except ValueError:
            pass


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_5xx_and_every_answer_as_documented(
    case: schemathesis.Case, live: dict[str, str]
) -> None:
    url = live["url"]
    _no_long_waits(case.query)
    SENT[0] += 3
    OPERATIONS.add(f"{case.method} {case.path}")
    case.call_and_validate(base_url=url, checks=CHECKS)
    case.call_and_validate(
        base_url=url, checks=CHECKS, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    if case.path_parameters and "workerId" in case.path_parameters:
        case.path_parameters["workerId"] = "fuzz"  # the token's own worker: past the 403
    answer = case.call_and_validate(
        base_url=url, checks=CHECKS, headers={"Authorization": f"Bearer {live['token']}"}
    )
    if case.method == "DELETE" and answer.status_code == 204:
        _register(live)  # it deregistered itself: carry on with a new registration
