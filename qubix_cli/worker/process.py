"""A job's process tree on the host: started below the owner's work (low priority, no core
dumps, within its memory and CPUs), its output read to the end with only its tail kept,
and the whole tree killed on a timeout or a cancel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from qubix_cli.worker.logstream import LogStream

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

Cancelled = Callable[[], bool]

TAIL_BYTES = 64 * 1024
LINE_CAP = 64 * 1024  # a longer line is sent to the log in pieces
_TICK_S = 0.1


THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_MAX_THREADS",
)


def thread_limits(cpu_threads: int | None) -> dict[str, str]:
    """What tells the usual thread pools (OpenMP, BLAS, NumPy's) to use no more threads
    than the provider allows."""
    return {name: str(cpu_threads) for name in THREAD_VARIABLES} if cpu_threads else {}


def spawn(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    memory_mb: int | None,
    cpu_threads: int | None,
    pass_fds: tuple[int, ...] = (),
    before: Callable[[], None] | None = None,
) -> Any:
    """Start a job's program below the owner's work: at low priority, without core dumps,
    within its memory, and (Linux) on only as many CPUs as the provider allows; `before`
    runs in the child last, before exec (the sandbox's: it drops to the job's user)."""
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

    cpus: set[int] = set()
    if cpu_threads and hasattr(os, "sched_getaffinity"):
        cpus = set(sorted(os.sched_getaffinity(0))[:cpu_threads])

    def limits() -> None:  # in the child, before exec: plain system calls only
        os.nice(10)  # below the owner's own work
        if cpus:
            os.sched_setaffinity(0, cpus)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_mb:
            size = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
        if before is not None:
            before()

    options["pass_fds"] = pass_fds
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=limits, **options)


class Tail:
    """Reads a pipe to its end in a thread, keeping only its last `TAIL_BYTES`, and
    passing it on to the log stream (if there is one) in whole lines: what the stream
    drops, it drops a line at a time, and stdout and stderr never splice mid-line."""

    def __init__(self, pipe: Any, logs: LogStream | None = None) -> None:
        self._pipe, self._kept, self._logs = pipe, bytearray(), logs
        self._partial = b""  # the last line read, not yet ended
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._pipe:
            for chunk in iter(lambda: self._pipe.read1(65536), b""):
                if self._logs is not None:
                    self._lines(chunk)
                self._kept += chunk
                del self._kept[:-TAIL_BYTES]
        if self._logs is not None and self._partial:
            self._logs.feed(self._partial)

    def _lines(self, chunk: bytes) -> None:
        assert self._logs is not None
        data = self._partial + chunk
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) > LINE_CAP:
            end = len(data)  # a line longer than a chunk goes on in pieces
        if end:
            self._logs.feed(data[:end])
        self._partial = data[end:]

    def text(self) -> str:
        """The tail once the writers are gone (a process that escaped the tree and keeps
        the pipe open is not waited for long)."""
        self._thread.join(2)
        return bytes(self._kept[-TAIL_BYTES:]).decode("utf-8", "replace")


def supervise(proc: Any, timeout_s: float, cancelled: Cancelled) -> tuple[int, int | None, str]:
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
