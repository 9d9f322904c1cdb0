"""`wgsl` jobs (a renter's WebGPU shader, run by browser workers): what a submission may
hold, and which browsers a job fits."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from starlette.testclient import TestClient

from qubix_cli.server import dispatch
from tests.conftest import register
from tests.helpers import KEY
from tests.server.test_jobs import lease

SHADER = "@compute @workgroup_size(1) fn main() {}"
OUT = {"binding": 0, "sizeBytes": 16, "output": True}


def wgsl(**payload: Any) -> dict[str, Any]:
    return {
        "type": "wgsl",
        "payload": {"shader": SHADER, "workgroups": [1], "buffers": [OUT], **payload},
    }


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"buffers": [OUT, OUT]}, "two buffers have the same binding"),
        ({"buffers": [{"binding": 0, "sizeBytes": 4}]}, "no buffer is an output"),
        ({"buffers": [{"binding": 1, "sizeBytes": 4, "input": "not base64!"}]}, "not base64"),
        (
            {
                "buffers": [
                    {"binding": 1, "sizeBytes": 4, "input": base64.b64encode(b"12345678").decode()}
                ]
            },
            "input is larger than sizeBytes",
        ),
        ({"buffers": [{"binding": 1, "sizeBytes": 6}]}, "multiple of 4"),
        (
            {"buffers": [{"binding": 1, "sizeBytes": 1 << 20, "output": True}]},
            "output buffers are over",
        ),
        ({"workgroups": [1, 1, 1, 1]}, "at most 3"),
        ({"workgroups": [0]}, "greater than or equal to 1"),
        ({"entryPoint": "main; drop"}, "pattern"),
    ],
)
def test_a_wrong_shader_job_is_refused_with_why(
    client: TestClient, payload: dict[str, Any], says: str
) -> None:
    answer = client.post("/api/jobs", json=wgsl(**payload), headers=KEY)
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["message"], answer.json()
    assert client.get("/api/jobs", headers=KEY).json()["total"] == 0  # nothing stored


LIMITS = {
    "maxBufferSize": 1 << 20,
    "maxStorageBufferBindingSize": 1 << 16,
    "maxComputeWorkgroupsPerDimension": 256,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxStorageBuffersPerShaderStage": 2,
}


def test_a_shader_goes_only_to_a_browser_whose_limits_it_fits() -> None:
    browser = {"type": "browser", "capabilities": ["wgsl"], "webgpu": LIMITS, "gpus": []}
    job = {"type": "wgsl", "requirements": {"hardwareGpu": False}, "payload": wgsl()["payload"]}
    assert dispatch.eligible(browser, job)
    for too_big in (
        {"workgroups": [257]},
        {"buffers": [{**OUT, "sizeBytes": 1 << 17}]},
        {"buffers": [OUT, {**OUT, "binding": 1}, {**OUT, "binding": 2}]},
    ):
        assert not dispatch.eligible(browser, {**job, "payload": {**job["payload"], **too_big}})
    assert not dispatch.eligible({**browser, "webgpu": None}, job)


def test_a_software_renderer_gets_no_gpu_job_unless_the_renter_allows_it(
    client: TestClient,
) -> None:
    gpus = [{"vendor": "other", "model": "google swiftshader", "vramMb": 0, "software": True}]
    token = register(
        client, "web-1", type="browser", capabilities=["wgsl"], gpus=gpus, webgpu=LIMITS
    )
    listed = client.get("/api/providers/web-1").json()["provider"]
    assert listed["gpus"][0]["software"] is True
    needs_gpu = client.post("/api/jobs", json=wgsl(), headers=KEY).json()["job"]
    one_gpu = {"type": "wgsl", "requirements": {"gpus": 1, "hardwareGpu": False}}
    client.post("/api/jobs", json={**wgsl(), **one_gpu}, headers=KEY)  # a software one is none
    assert lease(client, "web-1", token) is None
    anywhere = {**wgsl(), "requirements": {"hardwareGpu": False}}
    allowed = client.post("/api/jobs", json=anywhere, headers=KEY).json()["job"]
    leased = lease(client, "web-1", token)
    assert leased is not None and leased["job"]["id"] == allowed["id"] != needs_gpu["id"]


def test_a_nul_in_a_job_is_stored_on_either_store(client: TestClient) -> None:
    """PostgreSQL cannot hold U+0000: it is kept as U+FFFD there, never a 503."""
    answer = client.post("/api/jobs", json=wgsl(shader="a\x00b"), headers=KEY)
    assert answer.status_code == 201, answer.text
    shown = client.get(f"/api/jobs/{answer.json()['job']['id']}", headers=KEY).json()["job"]
    assert shown["payload"]["shader"] in ("a\x00b", "a\ufffdb")
