"""The browser as a worker, in Debian's Chromium with a real WebGPU adapter (SwiftShader):
the page registers, takes jobs submitted through the API, runs them in a Web Worker on
WebGPU and reports them; canaries catch a page that corrupts its answers; a closed page's
lease expires and the job completes elsewhere once."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, Route, expect

import qubix_cli
from qubix_cli.worker.engine import expected_digest
from tests.helpers import ADDRESS, KEY, ServerProcess, job, submit, wait_for
from tests.web.conftest import open_page, screenshot

WORKER_JS = Path(qubix_cli.__file__).parent / "web" / "browser-worker.js"
TIMES_THREE = """
@group(0) @binding(0) var<storage, read> numbers: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < 256u) { out[id.x] = numbers[id.x] * 3u; }
}
"""
NUMBERS = base64.b64encode(struct.pack("<256I", *range(256))).decode()
WGSL = {
    "shader": TIMES_THREE,
    "workgroups": [4],
    "buffers": [
        {"binding": 0, "sizeBytes": 1024, "input": NUMBERS},
        {"binding": 1, "sizeBytes": 1024, "output": True},
    ],
}
ON_SOFTWARE = {"hardwareGpu": False}  # SwiftShader is all there is here


def provider(server: ServerProcess, worker_id: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{server.url}/api/providers/{worker_id}").json()["provider"]
    return found


def patched(page: Page, old: str, new: str) -> None:
    """Serve this page a browser worker with `old` replaced by `new` (a lying or a stuck
    worker, made from the real one)."""
    source = WORKER_JS.read_text()
    assert old in source
    body = source.replace(old, new)

    def serve(route: Route) -> None:
        route.fulfill(status=200, content_type="text/javascript", body=body)

    page.context.route("**/static/browser-worker.js", serve)


def share(page: Page, server: ServerProcess, price: str = "") -> str:
    """Share this browser; its worker id."""
    page.goto(server.url + "/")
    page.fill("#address", ADDRESS)
    page.fill("#price", price)
    page.click("#share")
    expect(page.locator("#status")).to_contain_text("Sharing: this browser", timeout=30_000)
    worker_id: str = page.evaluate("localStorage.getItem('qubix.workerId')")
    return worker_id


def done(server: ServerProcess, job_id: str, timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (j := job(server, job_id))["status"] in ("completed", "failed") and j,
        timeout=timeout,
    )
    return found


def test_the_page_runs_a_matmul_and_a_wgsl_job_and_both_check(
    webgpu_browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    page = open_page(webgpu_browser)
    worker_id = share(page, web_server, price="900")
    shown = provider(web_server, worker_id)
    assert shown["capabilities"] == ["matmul", "wgsl"] and shown["pricePerHour"] == 900
    assert shown["gpus"][0]["software"] is True  # SwiftShader: listed, not counted
    assert shown["webgpu"]["maxComputeWorkgroupsPerDimension"] >= 65535
    screenshot(page, tmp_path, "browser-sharing-idle")

    matmul = submit(web_server, type="matmul", payload={"seed": 12345, "n": 64})
    finished = done(web_server, matmul)
    assert finished["status"] == "completed", finished
    assert finished["result"]["digest"] == expected_digest(12345, 64)
    assert finished["result"]["engine"] == "webgpu" and finished["workerId"] == worker_id

    shader = submit(web_server, type="wgsl", payload=WGSL, requirements=ON_SOFTWARE)
    finished = done(web_server, shader)
    assert finished["status"] == "completed", finished
    out = base64.b64decode(finished["result"]["outputs"]["1"])
    assert struct.unpack("<256I", out) == tuple(3 * i for i in range(256))

    broken = submit(
        web_server,
        type="wgsl",
        payload={**WGSL, "shader": "fn main( {"},
        requirements=ON_SOFTWARE,
        maxAttempts=1,
    )
    finished = done(web_server, broken)
    assert (finished["status"], finished["failedBy"]) == ("failed", "job")  # its own: charged
    assert "does not compile" in finished["result"]["error"]
    expect(page.locator("#status")).to_contain_text("3 job(s) done")
    earned = httpx.get(f"{web_server.url}/api/earnings/{ADDRESS}").json()["allTime"]
    assert earned > 0  # the two completed jobs, at the price the lease fixed
    expect(page.locator("#status")).to_contain_text(f"{earned} QUBIC earned")
    page.reload()  # one browser stays one provider: its id and token are kept
    expect(page.locator("#address")).to_have_value(ADDRESS)
    expect(page.locator("#price")).to_have_value("900")
    assert share(page, web_server, price="900") == worker_id
    assert [
        p["workerId"] for p in httpx.get(f"{web_server.url}/api/providers").json()["providers"]
    ] == [worker_id]


def test_dispatch_sends_a_browser_only_what_it_runs(
    webgpu_browser: Browser, web_server: ServerProcess
) -> None:
    share(open_page(webgpu_browser), web_server)
    # A GPU job type needs a hardware GPU unless the renter says otherwise; a native type
    # (benchmark) never goes to a browser.
    on_hardware = submit(web_server, type="wgsl", payload=WGSL)
    native = submit(web_server, type="benchmark", payload={"seconds": 0.1})
    fits = submit(web_server, type="wgsl", payload=WGSL, requirements=ON_SOFTWARE)
    assert done(web_server, fits)["status"] == "completed"
    for job_id in (on_hardware, native):
        assert job(web_server, job_id)["status"] == "queued"
    why = job(web_server, on_hardware)["why"]
    assert any("hardware GPU" in step["rule"] for step in why["steps"]), why


def test_a_page_that_corrupts_its_answers_is_quarantined_by_a_canary(
    webgpu_browser: Browser, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path / "checked", 1.0, "--canaries").start()
    try:
        page = open_page(webgpu_browser)
        patched(page, "digest: hex(digest),", "digest: hex(digest).replace(/./, 'f'),")
        worker_id = share(page, server)
        for _ in range(3):  # a new worker's jobs are canaries (trust.md); the renter's wait
            submit(server, type="matmul", payload={"seed": 99, "n": 32})
        wait_for(lambda: provider(server, worker_id)["trust"]["quarantined"], timeout=60)
        trust = provider(server, worker_id)["trust"]
        assert trust["canariesFailed"] >= 1 and trust["reputation"] == 0
    finally:
        server.stop()


def test_stop_hands_the_job_back_and_a_closed_page_lets_its_lease_expire(
    webgpu_browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    stuck = "async function runWgsl(job) {"
    never = stuck + " await new Promise(() => {});"  # a long shader, in effect

    first = open_page(webgpu_browser)
    patched(first, stuck, never)
    first_id = share(first, web_server)
    job_id = submit(web_server, type="wgsl", payload=WGSL, requirements=ON_SOFTWARE)
    wait_for(lambda: job(web_server, job_id)["status"] == "assigned")
    expect(first.locator("#doing")).to_contain_text(f"Running job {job_id} (wgsl)")
    screenshot(first, tmp_path, "browser-sharing-running")
    first.click("#stop")  # handed back at once: no attempt spent, not a failure
    wait_for(lambda: job(web_server, job_id)["status"] == "queued", timeout=30)
    history = job(web_server, job_id)["history"]
    assert [e["reason"] for e in history if e["event"] == "preempted"] == [
        "the sharer stopped sharing"
    ]
    expect(first.locator("#status")).to_contain_text("Stopped sharing")
    screenshot(first, tmp_path, "browser-stopped")
    assert provider(web_server, first_id)["trust"]["failed"] == 0

    second = open_page(webgpu_browser)
    patched(second, stuck, never)
    second_id = share(second, web_server)
    wait_for(lambda: job(web_server, job_id).get("workerId") == second_id, timeout=30)
    second.context.close()  # the tab closes mid-job: nothing more is heard from it

    third = open_page(webgpu_browser)
    third_id = share(third, web_server)
    finished = done(web_server, job_id, timeout=90)  # after the lease (3 heartbeats) expired
    assert finished["status"] == "completed" and finished["workerId"] == third_id
    events = [e["event"] for e in finished["history"]]
    assert events.count("reported") == 1 and "lease_expired" in events, events


def test_without_webgpu_the_page_says_it_cannot_compute_and_offers_the_native_worker(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    page = open_page(browser)  # Chromium without the WebGPU flags: WebGL on SwiftShader
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS)
    page.click("#share")
    status = page.locator("#status")
    expect(status).to_contain_text("runs no jobs without WebGPU")
    expect(page.locator("#install-instead")).to_be_visible()
    screenshot(page, tmp_path, "browser-webgl-only")
    worker_id = page.evaluate("localStorage.getItem('qubix.workerId')")
    shown = provider(web_server, worker_id)
    assert shown["capabilities"] == [] and shown["gpus"][0]["software"] is True
    submit(web_server, type="benchmark", payload={"seconds": 0.1})  # never offered to it


def test_the_marketplace_labels_a_software_renderer(
    webgpu_browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    page = open_page(webgpu_browser)
    worker_id = share(page, web_server)
    market = page.context.new_page()
    market.goto(web_server.url + "/marketplace")
    row = market.locator(f"tr[data-worker-id='{worker_id}']")
    expect(row).to_contain_text("software, not a GPU")
    expect(row).to_contain_text("unknown")  # a browser cannot know its VRAM
    screenshot(market, tmp_path, "marketplace-software-renderer")


def test_a_job_past_its_time_is_abandoned_and_a_cancelled_one_stopped(
    webgpu_browser: Browser, web_server: ServerProcess
) -> None:
    page = open_page(webgpu_browser)
    patched(
        page,
        "async function runWgsl(job) {",
        "async function runWgsl(job) { await new Promise(() => {});",
    )
    share(page, web_server)
    slow = submit(
        web_server, type="wgsl", payload=WGSL, requirements=ON_SOFTWARE, timeoutS=2, maxAttempts=1
    )
    finished = done(web_server, slow, timeout=30)
    assert (finished["status"], finished["failedBy"]) == ("failed", "job")  # its own timeout
    assert finished["result"]["error"].startswith("abandoned after 2 s")
    expect(page.locator("#doing")).to_contain_text("Idle")
    cancelled = submit(web_server, type="wgsl", payload=WGSL, requirements=ON_SOFTWARE)
    expect(page.locator("#doing")).to_contain_text(f"Running job {cancelled}")
    httpx.post(f"{web_server.url}/api/jobs/{cancelled}/cancel", headers=KEY)
    expect(page.locator("#doing")).to_contain_text("Idle", timeout=15_000)  # it let go
    assert job(web_server, cancelled)["status"] == "cancelled"
    expect(page.locator("#status")).to_contain_text("2 job(s) done")
