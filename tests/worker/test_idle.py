"""An idle worker sleeps: no ticking while it long-polls and waits to heartbeat, and yet a
signal stops it at once (real processes; wake-ups counted from /proc)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.helpers import ServerProcess, Worker, wait_for


def wakeups(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_an_idle_worker_blocks_and_a_signal_still_stops_it_at_once(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", 30.0).start()  # heartbeats every 30 s
    worker = Worker(tmp_path, server.url, "idle")
    try:
        wait_for(
            lambda: httpx.get(f"{server.url}/api/providers/idle").status_code == 200, timeout=20
        )
        time.sleep(2)  # registered, first heartbeat sent, long-polling
        before, started = wakeups(worker.proc.pid), time.monotonic()
        time.sleep(5)
        rate = (wakeups(worker.proc.pid) - before) / (time.monotonic() - started)
        print(f"idle worker: {rate:.2f} wake-ups a second")
        assert rate <= 2.0  # one tick a second at most (it was about 15 before)
        stopping = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        assert time.monotonic() - stopping < 3  # the long-poll is cut short, not waited out
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
        server.stop()
