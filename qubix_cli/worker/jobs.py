"""Running jobs: `sleep`, `benchmark` and (only when allowed) `command`.

Each runner takes the job and a `cancelled()` check, and returns (status, result, metrics).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Tuple

Outcome = Tuple[str, Any, Dict[str, Any]]
Cancelled = Callable[[], bool]

TAIL_BYTES = 64 * 1024
_TICK_S = 0.1


class JobType:
    """How this worker runs one job type, and whether the provider must opt in."""

    def __init__(self, runner: Callable[..., Outcome], opt_in: bool = False) -> None:
        self.runner, self.opt_in = runner, opt_in


def capabilities(allow_command: bool) -> list[str]:
    """The job types this worker runs: what it declares when it registers."""
    return [name for name, kind in JOB_TYPES.items() if not kind.opt_in or allow_command]


def run_job(job: dict[str, Any], cancelled: Cancelled, allow_command: bool, gpus: Any) -> Outcome:
    started = time.monotonic()
    kind = job["type"]
    if kind in capabilities(allow_command):
        status, result, metrics = JOB_TYPES[kind].runner(job, cancelled, gpus)
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


def run_sleep(job: dict[str, Any], cancelled: Cancelled, gpus: Any) -> Outcome:
    seconds = float(job["payload"]["seconds"])
    if not wait_unless(seconds, cancelled):
        return _cancelled_result()
    return "completed", {"sleptS": seconds}, {}


def run_benchmark(job: dict[str, Any], cancelled: Cancelled, gpus: Any) -> Outcome:
    """SHA-256 over 1 MiB blocks for a fixed time: the score is MiB hashed per second."""
    seconds = float(job["payload"].get("seconds", 2.0))
    block = os.urandom(2**20)
    deadline = time.monotonic() + seconds
    started, hashed = time.monotonic(), 0
    while time.monotonic() < deadline:
        if cancelled():
            return _cancelled_result()
        hashlib.sha256(block).digest()
        hashed += 1
    elapsed = time.monotonic() - started
    score = round(hashed / elapsed, 1) if elapsed else 0.0
    return "completed", {"cpuScore": score, "cpuScoreUnit": "MiB/s sha256", "gpus": gpus}, {}


def job_environment(extra: dict[str, str]) -> dict[str, str]:
    """The worker's environment without anything of Qubix's own (its secrets live there)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("QUBIX")}
    env.update(extra)
    return env


def run_command(job: dict[str, Any], cancelled: Cancelled, gpus: Any) -> Outcome:
    """argv without a shell, in a fresh directory, at low priority, with a timeout that
    kills the whole process tree, and the last 64 KiB of stdout and stderr."""
    payload = job["payload"]
    timeout_s = float(payload.get("timeoutS") or job.get("timeoutS") or 3600)
    workdir = tempfile.mkdtemp(prefix="qubix-job-")
    try:
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = _spawn(
                    payload["argv"], workdir, job_environment(payload.get("env", {})), out, err
                )
            except OSError as exc:
                return "failed", {"error": f"cannot start {payload['argv'][0]!r}: {exc}"}, {}
            code, peak_rss_kb, reason = _supervise(proc, timeout_s, cancelled)
        result = {
            "exitCode": code,
            "stdoutTail": _tail(out_path),
            "stderrTail": _tail(err_path),
        }
        metrics: dict[str, Any] = {"exitCode": code, "peakRssKb": peak_rss_kb}
        if reason:
            result["error"] = reason
            return "failed", result, metrics
        return ("completed" if code == 0 else "failed"), result, metrics
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _spawn(argv: list[str], cwd: str, env: dict[str, str], out: Any, err: Any) -> Any:
    options: dict[str, Any] = {
        "cwd": cwd,
        "env": env,
        "stdin": subprocess.DEVNULL,
        "stdout": out,
        "stderr": err,
    }
    if sys.platform == "win32":
        options["creationflags"] = (
            subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS  # type: ignore[attr-defined,unused-ignore]
        )
        return subprocess.Popen(argv, **options)
    proc = subprocess.Popen(argv, start_new_session=True, **options)
    try:
        os.setpriority(os.PRIO_PROCESS, proc.pid, 10)  # below the owner's own work
    except OSError:
        pass
    return proc


def _supervise(proc: Any, timeout_s: float, cancelled: Cancelled) -> tuple[int, int | None, str]:
    """Wait for the process; kill its tree on timeout or cancellation."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, peak = _poll(proc)
        if code is not None:
            return code, peak, ""
        reason = ""
        if cancelled():
            reason = "cancelled"
        elif time.monotonic() > deadline:
            reason = f"timed out after {timeout_s:g} s"
        if reason:
            _kill_tree(proc)
            code, peak = _poll(proc, block=True)
            return code if code is not None else -9, peak, reason
        time.sleep(_TICK_S)


def _poll(proc: Any, block: bool = False) -> tuple[int | None, int | None]:
    """The exit code and, on POSIX, the peak RSS (KiB) of the finished child."""
    if not hasattr(os, "wait4"):
        code = proc.wait() if block else proc.poll()
        return code, None
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None, None
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


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - TAIL_BYTES))
        return f.read().decode("utf-8", "replace")


# The job types this worker runs (the server's schemas for them: server/schemas.py JOB_TYPES).
JOB_TYPES: dict[str, JobType] = {
    "benchmark": JobType(run_benchmark),
    "sleep": JobType(run_sleep),
    "command": JobType(run_command, opt_in=True),
}
