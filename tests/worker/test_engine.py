"""The verifiable job's engine: the reference product, and the CUDA driver API call
sequence against a fake `libcuda` (no GPU here) that does the product on the host."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from qubix_cli.worker import engine


def test_the_product_is_exact_and_seeded() -> None:
    a, b = engine.matrices(7, 3)
    assert engine.matrices(7, 3) == (a, b) and engine.matrices(8, 3) != (a, b)
    c = engine.cpu_product(a, b, 3)
    for i in range(3):
        for j in range(3):
            assert c[i * 3 + j] == sum(a[i * 3 + k] * b[k * 3 + j] for k in range(3))
    assert engine.expected_digest(7, 3) == engine.digest(c)


class FakeCuda:
    """The driver API as far as the engine uses it: handles are counters, device memory is
    host bytearrays, and the launch does the product. It records every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.memory: dict[int, bytearray] = {}
        self.next = 1000
        self.ptx = b""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self._call(name, *args)

    def _out(self, ref: Any, value: int) -> None:
        ref._obj.value = value

    def _call(self, name: str, *args: Any) -> int:
        self.calls.append(name)
        if name in ("cuCtxCreate_v2", "cuModuleGetFunction"):
            self._out(args[0], self._handle())
        elif name == "cuModuleLoadData":
            self.ptx = args[1]
            self._out(args[0], self._handle())
        elif name == "cuMemAlloc_v2":
            handle = self._handle()
            self.memory[handle] = bytearray(args[1])
            self._out(args[0], handle)
        elif name == "cuMemcpyHtoD_v2":
            self.memory[args[0].value][:] = bytes(args[1])[: args[2]]
        elif name == "cuMemcpyDtoH_v2":
            ctypes.memmove(args[0], bytes(self.memory[args[1].value]), args[2])
        elif name == "cuLaunchKernel":
            self._launch(args[9])
        return 0

    def _handle(self) -> int:
        self.next += 1
        return self.next

    def _launch(self, params: Any) -> None:
        pa, pb, pc = (ctypes.cast(params[i], ctypes.POINTER(ctypes.c_uint64))[0] for i in range(3))
        n = ctypes.cast(params[3], ctypes.POINTER(ctypes.c_uint32))[0]
        a = list((ctypes.c_uint32 * (n * n)).from_buffer(self.memory[pa]))
        b = list((ctypes.c_uint32 * (n * n)).from_buffer(self.memory[pb]))
        c = (ctypes.c_uint32 * (n * n)).from_buffer(self.memory[pc])
        c[:] = engine.cpu_product(a, b, n)


def test_the_cuda_engine_drives_the_driver_api_in_order_and_frees_everything() -> None:
    cuda = FakeCuda()
    a, b = engine.matrices(42, 16)
    c, seconds = engine.cuda_product(cuda, 0)(a, b, 16)
    assert c == engine.cpu_product(a, b, 16) and seconds >= 0
    assert cuda.calls == [
        "cuInit",
        "cuDeviceGet",
        "cuCtxCreate_v2",
        "cuModuleLoadData",
        "cuModuleGetFunction",
        *["cuMemAlloc_v2"] * 3,
        *["cuMemcpyHtoD_v2"] * 2,
        "cuLaunchKernel",
        "cuCtxSynchronize",
        "cuMemcpyDtoH_v2",
        *["cuMemFree_v2"] * 3,
        "cuModuleUnload",
        "cuCtxDestroy_v2",
    ]
    assert b".entry matmul" in cuda.ptx and cuda.ptx.endswith(b"\0")


def test_a_failing_driver_call_is_an_error_and_the_worker_falls_back_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = FakeCuda()
    cuda._call = lambda name, *args: 999 if name == "cuModuleLoadData" else 0  # type: ignore[method-assign]
    with pytest.raises(engine.CudaError, match="cuModuleLoadData failed with CUDA error 999"):
        engine.cuda_product(cuda, 0)(*engine.matrices(1, 8), 8)
    monkeypatch.setattr(engine, "load_libcuda", lambda: cuda)
    gpus = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}]
    result = engine.run_matmul(1, 8, gpus, [0])
    assert result["engine"] == "none" and "computed on the CPU" in result["note"]
    assert result["digest"] == engine.expected_digest(1, 8)


def test_without_an_nvidia_gpu_or_driver_the_engine_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert engine.find_engine([], [])[0] == "none"
    monkeypatch.setattr(engine, "load_libcuda", lambda: None)
    gpus = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}]
    assert engine.find_engine(gpus, [0])[0] == "none"  # no driver here, no torch
    monkeypatch.setattr(engine, "load_libcuda", FakeCuda)
    assert engine.find_engine(gpus, [0])[0] == "cuda"
    assert engine.run_matmul(3, 16, gpus, [0])["engine"] == "cuda"


def test_a_real_worker_passes_its_canaries_and_its_claim_is_unverified_without_an_engine(
    tmp_path: Any,
) -> None:
    import httpx

    from tests.helpers import ServerProcess, Worker, submit, wait_for

    server = ServerProcess(tmp_path / "data", 0.5, "--canaries").start()
    worker = Worker(tmp_path, server.url, "w1")
    try:
        job_id = submit(server, type="sleep", payload={"seconds": 0})

        def shown() -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(f"{server.url}/api/providers/w1").json()
            return found.get("provider") or {}

        wait_for(lambda: shown().get("trust", {}).get("canariesPassed", 0) >= 1, timeout=30)
        trust = shown()["trust"]
        assert trust["claim"] == "unverified" and not trust["quarantined"]  # 2 GPUs, no driver
        assert trust["canariesFailed"] == 0
        wait_for(
            lambda: (
                httpx.get(
                    f"{server.url}/api/jobs/{job_id}",
                    headers={"Authorization": "Bearer test-api-key"},
                ).json()["job"]["status"]
                == "completed"
            ),
            timeout=30,
        )
    finally:
        worker.proc.kill()
        worker.proc.wait()
        server.stop()


def test_an_idle_worker_logs_why_it_gets_no_jobs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from qubix_cli.worker import agent
    from tests.helpers import ADDRESS, ServerProcess, submit, wait_for

    server = ServerProcess(tmp_path / "data", 0.5).start()
    monkeypatch.setenv("QUBIX_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(agent, "IDLE_DIAGNOSIS_S", 0.3)
    submit(server, type="command", payload={"argv": ["true"]}, requirements={"gpus": 9})
    report = {
        "gpus": [],
        "cpu": {"model": "x", "cores": 1},
        "ramMb": 1024,
        "storage": {"totalGb": 1, "freeGb": 1},
        "os": {"system": "Linux", "release": "6"},
    }
    worker = agent.Agent(agent.Config(server.url, ADDRESS, worker_id="idle"), report=report)
    worker.poll_wait_s = 0.2
    thread = threading.Thread(target=worker._loop, daemon=True)
    try:
        caplog.set_level("INFO", logger="qubix.worker")
        assert worker.register()
        thread.start()
        wait_for(lambda: "no jobs for an hour" in caplog.text, timeout=20)
        assert "1 of the 1 queued jobs need more GPUs than it has." in caplog.text
    finally:
        worker.draining = True
        thread.join(10)
        server.stop()


def test_the_benchmark_measures_the_gpu_with_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from qubix_cli.worker import jobs

    monkeypatch.setattr(engine, "load_libcuda", FakeCuda)
    monkeypatch.setattr(jobs, "BENCHMARK_N", 16)  # the fake computes on the host
    gpus = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}]
    job = {"id": "job_1", "type": "benchmark", "payload": {"seconds": 0.1}}
    status, result, _ = jobs.run_job(jobs.Run(job, lambda: False, gpus=gpus, assigned=[0]))
    assert status == "completed" and result["measured"] == "gpu" and result["engine"] == "cuda"
    assert result["gpuScore"] > 0 and result["cpuScore"] > 0


def test_a_job_whose_report_cannot_be_kept_still_frees_its_slot(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uninstall that removed the state dir while a job ran (its outbox is gone) must
    not leave the worker waiting for that job for ever when it is told to stop."""
    from qubix_cli.worker import agent
    from tests.helpers import ADDRESS

    monkeypatch.setenv("QUBIX_HOME", str(tmp_path / "home"))
    report = {"gpus": [], "cpu": {"model": "x", "cores": 1}, "ramMb": 1024}
    worker = agent.Agent(agent.Config("http://127.0.0.1:9", ADDRESS, worker_id="w"), report)

    def gone(*args: Any) -> None:
        raise FileNotFoundError("the outbox was removed")

    monkeypatch.setattr(worker.outbox, "put", gone)
    job = {"id": "job_1", "type": "sleep", "payload": {"seconds": 0}}
    worker.slots.running["job_1"] = []
    worker.slots._run(job, 1, [], [])
    assert worker.slots.running == {} and worker.slots.done == 1
    worker.slots.wait_all()  # returns at once


def test_a_flooding_job_s_log_holds_whole_lines_only(tmp_path: Any) -> None:
    """400,000 lines on stdout and some on stderr, faster than the log is sent: what is
    kept is whole lines, in order, none spliced or invented, and the rest is counted."""
    import re

    from qubix_cli.worker import jobs

    class Api:
        def __init__(self) -> None:
            self.texts: list[str] = []

        def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            self.texts.append(body["text"])
            return 200, {"stored": sum(map(len, self.texts)) < 2**20}

    script = (  # written in slices that end mid-line, with pauses past a send or two
        "import os, sys, time\n"
        "text = ''.join(f'flood line {i:07d} ' + 'x' * 40 + '\\n' for i in range(400000))\n"
        "for n, start in enumerate(range(0, len(text), 10007)):\n"
        "    os.write(1, text[start:start + 10007].encode())\n"
        "    if n % 100 == 0: print(f'error {n:07d}', file=sys.stderr, flush=True)\n"
        "    if n % 500 == 0: time.sleep(0.3)\n"
    )
    api = Api()
    job = {
        "id": "job_1",
        "type": "command",
        "payload": {"argv": ["/usr/bin/python3", "-c", script]},
    }
    status, result, _ = jobs.run_job(jobs.Run(job, lambda: False, api=api))  # type: ignore[arg-type]
    assert status == "completed", result
    lines = "".join(api.texts).splitlines()
    pattern = re.compile(r"^(flood line \d{7} x{40}|error \d{7})$")
    assert [line for line in lines if not pattern.match(line)] == []
    numbers = [int(line.split()[2]) for line in lines if line.startswith("flood")]
    assert numbers[0] == 0 and numbers == sorted(numbers)  # the head, in order
    assert result["droppedLogLines"] > 0
    assert len(lines) + result["droppedLogLines"] == 400000 + 24  # every line, once
