"""Running jobs: `sleep`, `benchmark` and the renter's own code (`command`), which runs
in the sandbox (worker/sandbox.py) wherever there is one.

Each runner takes a `Run` (the job, its GPUs, what the provider allows, a `cancelled()`
check) and returns (status, result, metrics).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

from qubix_cli.worker import sandbox, state

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

Outcome = Tuple[str, Any, Dict[str, Any]]
Cancelled = Callable[[], bool]

TAIL_BYTES = 64 * 1024
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


def capabilities(policy: Policy) -> list[str]:
    """The job types this worker runs: what it declares when it registers."""
    return [name for name, kind in JOB_TYPES.items() if not kind.user or policy.runs_user_jobs()]


def run_job(run: Run) -> Outcome:
    started = time.monotonic()
    kind = run.job["type"]
    if kind in capabilities(run.policy):
        status, result, metrics = JOB_TYPES[kind].runner(run)
    else:
        status, result, metrics = "failed", {"error": f"this worker does not run {kind!r}"}, {}
    metrics["durationS"] = round(time.monotonic() - started, 3)
    return status, result, metrics


def _cancelled_result() -> Outcome:
    return "failed", {"error": "cancelled"}, {}


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
    """SHA-256 over 1 MiB blocks for a fixed time: the score is MiB hashed per second. This
    worker has no GPU engine yet, so the result says plainly that it measured the CPU."""
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
    score = round(hashed / elapsed, 1) if elapsed else 0.0
    result = {
        "cpuScore": score,
        "cpuScoreUnit": "MiB/s sha256",
        "engine": "none",
        "measured": "cpu",
        "note": "no GPU engine on this worker: the score is the CPU's, not the GPU's",
        "gpus": run.gpus,
    }
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


def run_command(run: Run) -> Outcome:
    """argv without a shell, in a fresh work dir, in the sandbox where there is one, at low
    priority, with a timeout that kills the whole process tree, and the last 64 KiB of
    stdout and stderr (the rest is read and dropped, never stored)."""
    payload = run.job["payload"]
    timeout_s = float(payload.get("timeoutS") or run.job.get("timeoutS") or 3600)
    workdir = tempfile.mkdtemp(prefix="qubix-job-")
    try:
        argv, env = _command_line(run, payload, workdir)
        try:
            proc = _spawn(argv, workdir, env, run.memory_mb)
        except OSError as exc:
            return "failed", {"error": f"cannot start {payload['argv'][0]!r}: {exc}"}, {}
        out, err = Tail(proc.stdout), Tail(proc.stderr)
        code, peak_rss_kb, reason = _supervise(proc, timeout_s, run.cancelled)
        result = {"exitCode": code, "stdoutTail": out.text(), "stderrTail": err.text()}
        metrics: dict[str, Any] = {
            "exitCode": code,
            "peakRssKb": peak_rss_kb,
            "sandbox": "bubblewrap" if sandbox.available() else "none",
            "gpus": run.assigned,
        }
        if reason:
            result["error"] = reason
            return "failed", result, metrics
        return ("completed" if code == 0 else "failed"), result, metrics
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _command_line(
    run: Run, payload: dict[str, Any], workdir: str
) -> tuple[list[str], dict[str, str]]:
    """The argv to start and its environment: wrapped in the sandbox where there is one."""
    extra = {**payload.get("env", {}), **sandbox.visible_devices(run.gpus, run.assigned)}
    if not sandbox.available():
        return list(payload["argv"]), job_environment(extra)
    network = bool(run.job.get("requirements", {}).get("network")) and run.policy.allow_network
    argv = sandbox.wrap(
        list(payload["argv"]),
        work_dir=workdir,
        hide=[os.path.expanduser("~"), state.home()],
        devices=sandbox.device_nodes(run.gpus, run.assigned),
        network=network,
    )
    return argv, sandbox_environment(extra)


def _spawn(argv: list[str], cwd: str, env: dict[str, str], memory_mb: int | None) -> Any:
    options: dict[str, Any] = {
        "cwd": cwd,
        "env": env,
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
    }
    if sys.platform == "win32":
        options["creationflags"] = (
            subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS  # type: ignore[attr-defined,unused-ignore]
        )
        return subprocess.Popen(argv, **options)

    def limits() -> None:  # in the child, before exec: plain system calls only
        os.nice(10)  # below the owner's own work
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_mb:
            size = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))

    return subprocess.Popen(argv, start_new_session=True, preexec_fn=limits, **options)


class Tail:
    """Reads a pipe to its end in a thread, keeping only its last `TAIL_BYTES`."""

    def __init__(self, pipe: Any) -> None:
        self._pipe, self._kept = pipe, bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._pipe:
            for chunk in iter(lambda: self._pipe.read1(65536), b""):
                self._kept += chunk
                del self._kept[:-TAIL_BYTES]

    def text(self) -> str:
        """The tail once the writers are gone (a process that escaped the tree and keeps
        the pipe open is not waited for long)."""
        self._thread.join(2)
        return bytes(self._kept[-TAIL_BYTES:]).decode("utf-8", "replace")


def _supervise(proc: Any, timeout_s: float, cancelled: Cancelled) -> tuple[int, int | None, str]:
    """Wait for the process (a thread reaps it, so its end is seen at once); kill its tree
    on timeout or cancellation."""
    ended: dict[str, Any] = {}
    done = threading.Event()

    def reap() -> None:
        ended["code"], ended["peak"] = _reap(proc)
        done.set()

    threading.Thread(target=reap, name="reap", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    reason = ""
    while not done.wait(_TICK_S):
        if cancelled():
            reason = "cancelled"
        elif time.monotonic() > deadline:
            reason = f"timed out after {timeout_s:g} s"
        if reason:
            _kill_tree(proc)
            done.wait(30)
            break
    return ended.get("code", -9), ended.get("peak"), reason


def _reap(proc: Any) -> tuple[int, int | None]:
    """Wait for the child: its exit code and, on POSIX, its peak RSS (KiB)."""
    if not hasattr(os, "wait4"):
        return proc.wait(), None
    _, status, usage = os.wait4(proc.pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    proc.returncode = code
    peak = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return code, int(peak)


def _kill_tree(proc: Any) -> None:
    if sys.platform == "win32":
        subprocess.run(
            ["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, check=False
        )
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


# The job types this worker runs (the server's schemas for them: server/schemas.py JOB_TYPES).
JOB_TYPES: dict[str, JobType] = {
    "benchmark": JobType(run_benchmark),
    "sleep": JobType(run_sleep),
    "command": JobType(run_command, user=True),
}
