"""The server crashing and restarting while 100 real workers run: they all come back online
by themselves, as the same 100 providers."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from qubix_cli.installer.pack import build_worker_pyz
from tests.helpers import ServerProcess, Worker, all_providers, job, submit, wait_for

WORKERS = 100


def providers(server: ServerProcess) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = all_providers(server.url)
    return listed


def test_100_workers_come_back_after_a_server_crash(tmp_path: Path) -> None:
    pyz = tmp_path / "qubix_worker.pyz"
    pyz.write_bytes(build_worker_pyz())  # what the installers ship
    server = ServerProcess(tmp_path / "data", heartbeat_interval_s=1).start()
    workers = [Worker(tmp_path, server.url, f"w{i:03d}", pyz=pyz) for i in range(WORKERS)]
    try:
        wait_for(
            lambda: sum(p["status"] == "online" for p in providers(server)) == WORKERS,
            timeout=120,
            step=0.5,
        )
        server.kill()
        time.sleep(2)
        server.start()
        restarted = time.time()

        def all_back() -> bool:
            listed = providers(server)
            return len(listed) == WORKERS and all(
                p["status"] == "online" and float(p["lastSeenAt"]) > restarted  # type: ignore[arg-type]
                for p in listed
            )

        wait_for(all_back, timeout=120, step=0.5)
        ids = [p["workerId"] for p in providers(server)]
        assert sorted(ids) == [f"w{i:03d}" for i in range(WORKERS)]  # no duplicates, none new
        job_id = submit(server, type="sleep", payload={"seconds": 0})
        wait_for(lambda: job(server, job_id)["status"] == "completed")
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        codes = [w.wait(30) for w in workers]
        server.stop()
    assert codes == [0] * WORKERS
    assert all("Traceback" not in w.output() for w in workers)
