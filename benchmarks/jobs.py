"""What running jobs costs, each figure beside its baseline in the same run:

1. The sandbox: the same `true` run by the worker's own runner with and without
   bubblewrap, alternating so that both see the same machine. Each run is the whole path
   a `command` job takes on the worker: a fresh work dir, the spawn (wrapped in bwrap for
   the sandbox), the output pipes, the wait and the clean-up.
2. A `python` job with one pinned requirement: its start with a fresh environment (pip
   fetches the wheel from the package index and installs it, in the sandbox) and with the
   cached one.
3. Files: a 100 MB output uploaded by the worker (PUT, under its lease) and downloaded
   by the renter (checked against its SHA-256) through a real `qubix serve` over
   loopback, against `cp` of the same file.

    python benchmarks/jobs.py [--runs 200] [--python-runs 3] [--size-mb 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import httpx
from _server import API_KEY, Server, register_body

from qubix_cli.client import Client as RenterClient
from qubix_cli.worker import jobs, sandbox
from qubix_cli.worker.client import Client as WorkerClient
from qubix_cli.worker.envs import Envs


def once(run: jobs.Run, sandboxed: bool) -> float:
    with mock.patch.object(sandbox, "available", lambda: sandboxed):
        started = time.perf_counter()
        status, result, _ = jobs.run_job(run)
        elapsed = time.perf_counter() - started
    assert status == "completed", result
    return elapsed * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def python_jobs(runs: int) -> None:
    """A python job importing one pinned requirement: fresh environment vs cached."""
    job = {
        "id": "job_bench",
        "type": "python",
        "payload": {"script": "import six\n", "requirements": "six==1.16.0\n"},
    }
    fresh, cached = [], []
    for _ in range(runs):
        root = tempfile.mkdtemp(prefix="qubix-envs-")
        run = jobs.Run(job, lambda: False, envs=Envs(root, 2**30))
        for times in (fresh, cached):
            started = time.perf_counter()
            status, result, _ = jobs.run_job(run)
            assert status == "completed", result
            times.append(time.perf_counter() - started)
        shutil.rmtree(root)
    print(f"\npython job start, {runs} runs each (s)")
    print(f"{'':<20}{'median':>8}{'min':>8}")
    for name, values in (("fresh environment", fresh), ("cached environment", cached)):
        print(f"{name:<20}{statistics.median(values):>8.2f}{min(values):>8.2f}")
    print(f"saving: {statistics.median(fresh) - statistics.median(cached):.2f} s a job")


def files(size_mb: int) -> None:
    """A job's output through the coordinator and back, against cp of the same file."""
    tmp = Path(tempfile.mkdtemp(prefix="qubix-files-"))
    source = tmp / "output.bin"
    with source.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(2**20))
    size = source.stat().st_size
    with Server() as server:
        body = {**register_body("bench-worker"), "capabilities": ["command"]}
        token = httpx.post(f"{server.url}/api/providers/quick-register", json=body).json()[
            "workerToken"
        ]
        key = {"Authorization": f"Bearer {API_KEY}"}
        job = {"type": "command", "payload": {"argv": ["true"]}}
        job_id = httpx.post(f"{server.url}/api/jobs", json=job, headers=key).json()["job"]["id"]
        worker = WorkerClient(server.url)
        worker.token = token
        worker.request("GET", "/api/jobs/pending/bench-worker")
        started = time.perf_counter()
        with source.open("rb") as f:
            status, answer = worker.upload(
                f"/api/jobs/{job_id}/artifacts/output.bin?attempt=1", f, size
            )
        upload_s = time.perf_counter() - started
        assert status == 200, answer
        with RenterClient(server.url, API_KEY, timeout_s=120) as renter:
            started = time.perf_counter()
            renter.download_artifact(job_id, answer["artifact"], tmp / "downloaded.bin")
            download_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(tmp / "copied.bin")], check=True)
    copy_s = time.perf_counter() - started
    shutil.rmtree(tmp)
    mb = size / 1e6
    print(f"\na {mb:.0f} MB output over loopback (MB/s)")
    for name, seconds in (
        ("upload (worker)", upload_s),
        ("download (renter)", download_s),
        ("cp", copy_s),
    ):
        print(f"{name:<20}{mb / seconds:>8.0f}")
    slowest = mb / max(upload_s, download_s)
    print(f"target: >= 100 MB/s each way: {'met' if slowest >= 100 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--python-runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    if not sandbox.available():
        raise SystemExit("bubblewrap cannot run here: install it (apt-get install bubblewrap)")
    job = {"id": "job_bench", "type": "command", "payload": {"argv": ["true"]}}
    run = jobs.Run(job, lambda: False, policy=jobs.Policy(allow_unsandboxed=True))
    direct: list[float] = []
    boxed: list[float] = []
    for _ in range(args.runs):
        direct.append(once(run, False))
        boxed.append(once(run, True))
    print(f"{args.runs} runs of `true` as a command job (ms)")
    print(f"{'':<12}{'p50':>8}{'p99':>8}{'mean':>8}")
    for name, values in (("direct", direct), ("sandboxed", boxed)):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{name:<12}{p50:>8.1f}{p99:>8.1f}{statistics.mean(values):>8.1f}")
    overhead = [b - d for b, d in zip(boxed, direct, strict=True)]
    p50, p99 = percentile(overhead, 50), percentile(overhead, 99)
    print(f"{'overhead':<12}{p50:>8.1f}{p99:>8.1f}{statistics.mean(overhead):>8.1f}")
    print(f"target: overhead p50 < 50 ms: {'met' if p50 < 50 else 'NOT met'}")
    python_jobs(args.python_runs)
    files(args.size_mb)


if __name__ == "__main__":
    main()
