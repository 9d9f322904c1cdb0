"""A real `qubix serve` with a short heartbeat, and real worker processes against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServerProcess, Worker


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", heartbeat_interval_s=0.5).start()
    yield proc
    proc.stop()


@pytest.fixture
def workers(tmp_path: Path, server: ServerProcess) -> Iterator[Callable[..., Worker]]:
    """Start workers (`Worker`'s arguments after the server's URL); all killed at the end."""
    started: list[Worker] = []

    def start(worker_id: str = "w1", *flags: str, **options: Any) -> Worker:
        worker = Worker(tmp_path, server.url, worker_id, *flags, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
