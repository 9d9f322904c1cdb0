"""An idle worker's footprint: RSS, CPU and wake-ups over a minute, against a local server.

Starts a real `qubix serve` (default 30 s heartbeat), then the worker as the installers
ship it (`python qubix_worker.pyz run`) and as `qubix worker run`, both idle (long-polling,
heartbeating), and a bare `python -c 'sleep'` as the baseline, and samples each process.
Wake-ups are the voluntary context switches of all of a process's threads (from
`/proc/PID/task/*/status`): each is the process going to sleep after it woke.

    python benchmarks/worker_idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _server import ADDRESS, Server

from qubix_cli.installer.pack import build_worker_pyz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    server = Server()
    tmp = Path(tempfile.mkdtemp(prefix="qubix-worker-bench-"))
    pyz = tmp / "qubix_worker.pyz"
    pyz.write_bytes(build_worker_pyz())
    common = ["run", "--server", server.url, "--qubic-address", ADDRESS]
    commands = {
        "qubix_worker.pyz run": [sys.executable, str(pyz), *common, "--worker-id", "pyz"],
        "qubix worker run": [
            sys.executable,
            "-m",
            "qubix_cli",
            "worker",
            *common,
            "--worker-id",
            "cli",
        ],
        "baseline: python sleeping": [sys.executable, "-c", "import time; time.sleep(3600)"],
    }
    procs = {}
    try:
        for number, (name, argv) in enumerate(commands.items()):
            env = {**os.environ, "QUBIX_HOME": str(tmp / f"home-{number}")}
            procs[name] = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        time.sleep(3)  # registered and settled
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with {p.returncode}")
        watched = {name: psutil.Process(p.pid) for name, p in procs.items()}
        cpu0 = {n: sum(p.cpu_times()[:2]) for n, p in watched.items()}
        woke0 = {n: wakeups(p.pid) for n, p in watched.items()}
        peak = dict.fromkeys(watched, 0.0)
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            for name, p in watched.items():
                peak[name] = max(peak[name], p.memory_info().rss / 2**20)
            time.sleep(1)
        elapsed = time.monotonic() - started
        print(f"idle for {elapsed:.0f} s, heartbeat every 30 s, long-poll wait 25 s")
        print(f"{'process':<28}{'peak RSS MB':>12}{'CPU %':>8}{'wake-ups/s':>12}")
        for name, p in watched.items():
            cpu = (sum(p.cpu_times()[:2]) - cpu0[name]) / elapsed * 100
            woke = (wakeups(p.pid) - woke0[name]) / elapsed
            print(f"{name:<28}{peak[name]:>12.1f}{cpu:>8.2f}{woke:>12.2f}")
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(30)
        server.stop()


def wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


if __name__ == "__main__":
    main()
