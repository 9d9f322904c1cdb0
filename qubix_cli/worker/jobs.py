"""Running jobs: `sleep`, `benchmark`, the verifiable `matmul` (worker/engine.py), and the
renter's own code: a program (`command`) or a Python script with the environment of its
pinned requirements (`python`), run in the sandbox (worker/sandbox.py) wherever there is
one.

Each runner takes a `Run` (the job, its GPUs, what the provider allows, a `cancelled()`
check) and returns (status, result, metrics).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

from qubix_cli.worker import egress, engine, jobuser, process, sandbox, state
from qubix_cli.worker.client import Client, Transient
from qubix_cli.worker.envs import Envs, pinned_requirements
from qubix_cli.worker.logstream import LogStream
from qubix_cli.worker.transfer import InputError, fetch_inputs, resolve_public, upload_outputs

Outcome = Tuple[str, Any, Dict[str, Any]]
Cancelled = Callable[[], bool]

BENCHMARK_N = 512  # the GPU benchmark's product: 134 million multiply-adds
_TICK_S = 0.1


class JobType:
    """How this worker runs one job type. A `user` type runs the renter's own code: only in
    the sandbox (or where the provider allowed unsandboxed jobs), and a provider can refuse
    them all."""

    def __init__(self, runner: Callable[[Run], Outcome], user: bool = False) -> None:
        self.runner, self.user = runner, user


@dataclass
class Policy:
    """What the provider allows: renters' code at all (`--no-user-jobs` refuses it),
    without a sandbox where none works (`--allow-unsandboxed`), and with the network when
    a job asks (`--allow-network-jobs`)."""

    user_jobs: bool = True
    allow_unsandboxed: bool = False
    allow_network: bool = False

    def runs_user_jobs(self) -> bool:
        return self.user_jobs and (sandbox.available() or self.allow_unsandboxed)


@dataclass
class Run:
    """One job as a runner sees it: the job, the machine's GPUs and the positions of those
    assigned to it, what the provider allows, a memory cap, and a `cancelled()` check."""

    job: dict[str, Any]
    cancelled: Cancelled
    gpus: list[dict[str, Any]] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    memory_mb: int | None = None
    api: Client | None = None  # the coordinator, for inputs, outputs and logs
    attempt: int = 1
    networks: list[str] = field(default_factory=list)  # where URL inputs may be besides
    envs: Envs | None = None  # the cache of `python` jobs' environments
    cpu_threads: int | None = None  # the provider's limit on the CPU threads jobs use


def capabilities(policy: Policy) -> list[str]:
    """The job types this worker runs: what it declares when it registers."""
    return [name for name, kind in JOB_TYPES.items() if not kind.user or policy.runs_user_jobs()]


def run_job(run: Run) -> Outcome:
    started = time.monotonic()
    kind = run.job["type"]
    if kind in capabilities(run.policy):
        status, result, metrics = JOB_TYPES[kind].runner(run)
    else:
        error = f"this worker does not run {kind!r}"
        status, result, metrics = "failed", {"error": error, "failedBy": "worker"}, {}
    metrics["durationS"] = round(time.monotonic() - started, 3)
    return status, result, metrics


def _cancelled_result() -> Outcome:
    return "failed", {"error": "cancelled", "failedBy": "worker"}, {}


def wait_unless(seconds: float, stop: Cancelled) -> bool:
    """Sleep up to `seconds` in short ticks; False as soon as `stop()` is true. (Signal
    handlers only set flags, so every wait in the worker checks them this way.)"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stop():
            return False
        time.sleep(min(_TICK_S, max(0.0, deadline - time.monotonic())))
    return not stop()


def run_sleep(run: Run) -> Outcome:
    seconds = float(run.job["payload"]["seconds"])
    if not wait_unless(seconds, run.cancelled):
        return _cancelled_result()
    return "completed", {"sleptS": seconds}, {}


def run_benchmark(run: Run) -> Outcome:
    """SHA-256 over 1 MiB blocks for a fixed time (the CPU's score, MiB hashed a second),
    and, where the worker has a GPU engine, a 512 x 512 integer product on the GPU (its
    score, multiply-adds a second). Without one the result says plainly that only the
    CPU was measured."""
    seconds = float(run.job["payload"].get("seconds", 2.0))
    block = os.urandom(2**20)
    deadline = time.monotonic() + seconds
    started, hashed = time.monotonic(), 0
    while time.monotonic() < deadline:
        if run.cancelled():
            return _cancelled_result()
        hashlib.sha256(block).digest()
        hashed += 1
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {
        "cpuScore": round(hashed / elapsed, 1) if elapsed else 0.0,
        "cpuScoreUnit": "MiB/s sha256",
        "gpus": run.gpus,
    }
    name, product = engine.find_engine(run.gpus, run.assigned)
    if product is None:
        note = "no GPU engine on this worker: the score is the CPU's, not the GPU's"
        result.update(engine="none", measured="cpu", note=note)
        return "completed", result, {}
    n = BENCHMARK_N
    try:
        _, took = product(*engine.matrices(1, n), n)
    except engine.CudaError as exc:
        result.update(engine="none", measured="cpu", note=f"the GPU engine failed: {exc}")
        return "completed", result, {}
    score = n**3 / max(took, 1e-9)
    result.update(engine=name, measured="gpu", gpuScore=round(score), gpuScoreUnit="MAC/s")
    return "completed", result, {}


def job_environment(extra: dict[str, str]) -> dict[str, str]:
    """The worker's environment without anything of Qubix's own (its secrets live there):
    what an unsandboxed job gets."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("QUBIX")}
    env.update(extra)
    return env


def sandbox_environment(extra: dict[str, str]) -> dict[str, str]:
    """All a sandboxed job gets: a plain PATH, its work dir as HOME, and what the job and
    its GPUs set. Nothing of the provider's environment."""
    env = {"PATH": sandbox.PATH, "HOME": sandbox.WORK, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


# What a program-running job type gives: (argv, extra environment, read-only binds), from
# its work dir and whether it runs in the sandbox. ValueError: the job cannot run.
Program = Callable[[Run, str, bool], Tuple[List[str], Dict[str, str], List[Tuple[str, str]]]]


def command_program(run: Run, workdir: str, boxed: bool) -> Any:
    return list(run.job["payload"]["argv"]), {}, []


def python_program(run: Run, workdir: str, boxed: bool) -> Any:
    """The job's script (inline, or one of its inputs) run by this worker's Python, with
    the environment of its pinned requirements on PYTHONPATH."""
    payload = run.job["payload"]
    seen = sandbox.WORK if boxed else workdir
    if payload.get("scriptInput"):
        script = os.path.join(seen, "input", payload["scriptInput"])
    else:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(payload["script"])
        script = os.path.join(seen, "main.py")
    env = {"PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    binds = sandbox.python_binds() if boxed else []
    if payload.get("requirements"):
        if run.envs is None:
            raise ValueError("this worker keeps no environments for python jobs")
        lines = pinned_requirements(payload["requirements"])
        built, cached = run.envs.get(lines, lambda argv, work, net: _build(run, argv, work, net))
        env["PYTHONPATH"] = "/env" if boxed else built
        binds.append((built, "/env"))
        env["QUBIX_ENV_CACHED"] = "1" if cached else "0"
    return [sys.executable, script, *payload.get("args", [])], env, binds if boxed else []


def _hidden() -> list[str]:
    """What a sandbox must not show even inside a system dir: the provider's home and the
    worker's state dir."""
    return [os.path.expanduser("~"), state.home()]


def _build(run: Run, args: list[str], work: str, network: bool) -> tuple[int, str]:
    """One step of building an environment: this worker's Python with `args`, in the
    sandbox with `work` on its work dir (the network only when `network`), or, unsandboxed, in
    `work` itself."""
    try:
        if sandbox.available():
            argv = sandbox.wrap(
                [sys.executable, *args],
                work_dir=work,
                hide=_hidden(),
                devices=[],
                network=network,
                binds=sandbox.python_binds(),
            )
            jobuser.give(work)
            done = sandbox.run(argv, sandbox_environment({}), timeout_s=1800)
        else:
            inside = sandbox.WORK + "/"
            argv = [sys.executable, *(a.replace(inside, work + "/", 1) for a in args)]
            done = subprocess.run(
                argv,
                cwd=work,
                env=job_environment({}),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=1800,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, f"ERROR: {exc}"
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def run_command(run: Run) -> Outcome:
    return run_program(run, command_program)


def run_python(run: Run) -> Outcome:
    return run_program(run, python_program)


def run_program(run: Run, program: Program) -> Outcome:
    """Fetch the inputs into a fresh work dir, run the program (in the sandbox where there
    is one, at low priority, with a timeout that kills the whole process tree), stream its
    output to the coordinator, keep the last 64 KiB of stdout and stderr, and upload what
    it left in its output dir."""
    payload = run.job["payload"]
    timeout_s = float(run.job.get("timeoutS") or 3600)
    workdir = tempfile.mkdtemp(prefix="qubix-job-")
    boxed, proxy = sandbox.available(), None
    try:
        inputs, outputs = os.path.join(workdir, "input"), os.path.join(workdir, "output")
        os.mkdir(inputs)
        os.mkdir(outputs)
        try:
            if run.api is not None:
                fetch_inputs(run.api, run.job, inputs, run.networks)
            argv, extra, binds = program(run, workdir, boxed)
            if boxed:
                jobuser.give(workdir)  # a root worker's job runs as its own user
        except (InputError, ValueError, OSError, subprocess.SubprocessError) as exc:
            return "failed", {"error": str(exc), "failedBy": "worker"}, {}
        seen = sandbox.WORK if boxed else workdir
        extra = {
            **payload.get("env", {}),
            **extra,
            "QUBIX_INPUT": os.path.join(seen, "input"),
            "QUBIX_OUTPUT": os.path.join(seen, "output"),
            **sandbox.visible_devices(run.gpus, run.assigned),
            **process.thread_limits(run.cpu_threads),
        }
        if boxed and network_asked(run):  # the public internet only, through the proxy
            proxy = egress.Proxy(lambda host, port: resolve_public(host, port, run.networks))
            argv, extra = egress.command(sys.executable, argv), {**extra, **egress.environment()}
            binds = [*binds, *sandbox.python_binds(), (proxy.dir, egress.INSIDE)]
        status = sandbox.Status() if boxed else None
        try:
            proc = _start(run, argv, extra, binds, workdir, status)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            error = f"cannot start {argv[0]!r}: {exc}"
            return "failed", {"error": error, "failedBy": "worker"}, {}
        logs = LogStream(_log_sender(run)) if run.api is not None else None
        out, err = process.Tail(proc.stdout, logs), process.Tail(proc.stderr, logs)
        code, peak_rss_kb, reason = process.supervise(proc, timeout_s, run.cancelled)
        if status is not None and not status.ran() and not reason:
            said = (err.text().strip().splitlines() or ["no reason given"])[-1]
            if not said.startswith("bwrap: execvp"):  # not the job's own missing program
                error = f"the sandbox could not start the job: {said}"
                return "failed", {"error": error, "failedBy": "worker"}, {}
        result: dict[str, Any] = {
            "exitCode": code,
            "stdoutTail": out.text(),
            "stderrTail": err.text(),
        }
        if logs is not None:
            result["droppedLogLines"] = logs.close()
        if run.api is not None:
            result["outputs"] = upload_outputs(run.api, run.job["id"], run.attempt, outputs)
        metrics: dict[str, Any] = {
            "exitCode": code,
            "peakRssKb": peak_rss_kb,
            "sandbox": "bubblewrap" if boxed else "none",
            "gpus": run.assigned,
        }
        if reason:  # out of its time (the job's doing), or the worker stopping (its own)
            by = "worker" if reason == "cancelled" else "job"
            return "failed", {**result, "error": reason, "failedBy": by}, metrics
        if code != 0:
            return "failed", {**result, "failedBy": "job"}, metrics
        return "completed", result, metrics
    finally:
        if proxy is not None:
            proxy.close()
        shutil.rmtree(workdir, ignore_errors=True)


def network_asked(run: Run) -> bool:
    """Whether the job gets the network: it asked, and the provider allows it."""
    return bool(run.job.get("requirements", {}).get("network")) and run.policy.allow_network


def _log_sender(run: Run) -> Callable[[str, int], bool]:
    """Send one chunk of the job's output; False once the coordinator takes no more."""
    api, path = run.api, f"/api/jobs/{run.job['id']}/logs"
    assert api is not None

    def send(text: str, dropped: int) -> bool:
        body = {"attempt": run.attempt, "text": text, "droppedLines": dropped}
        try:
            status, answer = api.request("POST", path, body)
        except Transient:
            return True  # this chunk is lost (and counted by nobody); the next may pass
        return status == 200 and bool(answer.get("stored"))

    return send


def _start(
    run: Run,
    argv: list[str],
    extra: dict[str, str],
    binds: list[tuple[str, str]],
    workdir: str,
    status: sandbox.Status | None,
) -> Any:
    """Start the program: in the sandbox where there is one (`status` hears from it), bwrap
    with an environment and working directory of the worker's and the job's own handed
    over on a descriptor."""
    if status is None:
        return process.spawn(argv, workdir, job_environment(extra), run.memory_mb, run.cpu_threads)
    wrapped = sandbox.wrap(
        argv,
        work_dir=workdir,
        hide=_hidden(),
        devices=sandbox.device_nodes(run.gpus, run.assigned),
        network=False,  # a network job's way out is its proxy (worker/egress.py)
        binds=list(dict.fromkeys(binds)),
        status=status,
    )
    command, handed, before = sandbox.hand_over(wrapped, sandbox_environment(extra))
    with handed:
        fds = (handed.fileno(), status.fd)
        limits = (run.memory_mb, run.cpu_threads)
        try:
            return process.spawn(command, "/", sandbox.HOST_ENV, *limits, fds, before)
        finally:
            status.spawned()


def run_matmul(run: Run) -> Outcome:
    """The verifiable job: a seeded integer matrix product on the best engine here."""
    payload = run.job["payload"]
    result = engine.run_matmul(int(payload["seed"]), int(payload["n"]), run.gpus, run.assigned)
    return "completed", result, {"engine": result["engine"], "computeS": result["computeS"]}


# The job types this worker runs (the server's schemas for them: server/schemas.py JOB_TYPES).
JOB_TYPES: dict[str, JobType] = {
    "benchmark": JobType(run_benchmark),
    "sleep": JobType(run_sleep),
    "command": JobType(run_command, user=True),
    "python": JobType(run_python, user=True),
    "matmul": JobType(run_matmul),
}
