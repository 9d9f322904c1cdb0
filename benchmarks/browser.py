"""The browser worker against the native one: the verifiable product's speed, and a job's
overhead, in one run on this machine.

Starts a real `qubix serve`, Debian's Chromium sharing through the "Share My GPU" page
(WebGPU in a Web Worker, on SwiftShader here unless the machine has a GPU Chromium uses),
and a native worker (`qubix worker run`: its engine is the CPU in plain Python where no
NVIDIA GPU is found). The same `matmul` jobs (same seeds, same sizes) are pinned to each,
and each reports how long the product took (`computeS`). Then empty `wgsl` jobs measure
a browser job's overhead: from its lease to its report, as the server's history records.

    python benchmarks/browser.py [--sizes 64 128 256] [--repeats 3] [--empty-jobs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _server import ADDRESS, API_KEY, Server
from playwright.sync_api import sync_playwright

KEY = {"Authorization": f"Bearer {API_KEY}"}
CHROMIUM = "/usr/bin/chromium"
WEBGPU_ARGS = [
    "--no-sandbox",
    "--headless",
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
    "--enable-features=Vulkan",
]
EMPTY = {
    "shader": "@group(0) @binding(0) var<storage, read_write> out: array<u32>;\n"
    "@compute @workgroup_size(1) fn main() { out[0] = 1u; }",
    "workgroups": [1],
    "buffers": [{"binding": 0, "sizeBytes": 4, "output": True}],
}


def run_job(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{server.url}/api/jobs", json=body, headers=KEY)
    answer.raise_for_status()
    job_id = answer.json()["job"]["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=KEY).json()[
            "job"
        ]
        if job["status"] in ("completed", "failed", "cancelled"):
            if job["status"] != "completed":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('result')}")
            return job
        time.sleep(0.02)
    raise SystemExit(f"job {job_id} did not finish")


def lease_to_report_ms(job: dict[str, Any]) -> float:
    at = {e["event"]: e["at"] for e in job["history"]}
    return (at["reported"] - at["leased"]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--empty-jobs", type=int, default=20)
    args = parser.parse_args()
    server = Server(30.0, "--no-canaries")
    home = Path(tempfile.mkdtemp(prefix="qubix-browser-bench-"))
    native = subprocess.Popen(
        [sys.executable, "-m", "qubix_cli", "worker", "run", "--server", server.url]
        + ["--qubic-address", ADDRESS, "--worker-id", "native", "--no-user-jobs"],
        env={**os.environ, "QUBIX_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=WEBGPU_ARGS
            )
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#address", ADDRESS)
            page.click("#share")
            page.locator("#status").filter(has_text="Sharing: this browser").wait_for(
                timeout=30_000
            )
            web_id = page.evaluate("localStorage.getItem('qubix.workerId')")
            adapter = page.locator("#status").inner_text().split(" computes with ")[1]
            print(f"browser worker {web_id}: {adapter.split(' as ')[0]}")
            print(f"native worker: {sys.platform}, {os.cpu_count()} CPU threads\n")
            time.sleep(2)  # the native worker registered

            print("matmul (the seeded integer product), median of", args.repeats, "runs:")
            print(
                f"{'n':>6} {'browser s':>10} {'browser MAC/s':>14} {'native s':>10} "
                f"{'native MAC/s':>13} {'engine':>7} {'ratio':>7}"
            )
            for n in args.sizes:
                figures = {}
                engine = ""
                for worker in (web_id, "native"):
                    took = []
                    for seed in range(args.repeats):
                        body = {"type": "matmul", "payload": {"seed": seed + 1, "n": n}}
                        job = run_job(server, {**body, "providerId": worker})
                        took.append(float(job["result"]["computeS"]))
                        if worker == "native":
                            engine = job["result"]["engine"]
                    figures[worker] = statistics.median(took)
                web, cpu = figures[web_id], figures["native"]
                print(
                    f"{n:>6} {web:>10.4f} {n**3 / web:>14.3g} {cpu:>10.4f} "
                    f"{n**3 / cpu:>13.3g} {engine:>7} {cpu / web:>6.1f}x"
                )

            overheads, walls = [], []
            for _ in range(args.empty_jobs):
                started = time.monotonic()
                body = {"type": "wgsl", "payload": EMPTY, "requirements": {"hardwareGpu": False}}
                job = run_job(server, body)
                walls.append((time.monotonic() - started) * 1000)
                overheads.append(lease_to_report_ms(job))
            overheads.sort()
            walls.sort()
            print(f"\nempty wgsl job, {args.empty_jobs} in a row:")
            print(
                f"  lease -> report    p50 {statistics.median(overheads):6.1f} ms   "
                f"max {overheads[-1]:6.1f} ms"
            )
            print(
                f"  submit -> completed p50 {statistics.median(walls):6.1f} ms   "
                f"max {walls[-1]:6.1f} ms (includes this script's 20 ms polling)"
            )
            browser.close()
    finally:
        native.terminate()
        native.wait(30)
        server.stop()


if __name__ == "__main__":
    main()
