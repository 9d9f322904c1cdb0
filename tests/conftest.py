from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.helpers import API_KEY, ServerProcess, register_body

# Tests register many providers from one address; the limits have tests of their own.
NO_LIMITS = {"max_registrations_per_minute": 0, "max_providers_per_ip": 0}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path / "data", api_key=API_KEY, **NO_LIMITS))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[object]:
    """Factory for an app with other settings (e.g. a short heartbeat interval)."""
    opened: list[TestClient] = []

    def make(**settings: object) -> TestClient:
        settings = {**NO_LIMITS, **settings}
        app = create_app(Settings(data_dir=tmp_path / "data", api_key=API_KEY, **settings))  # type: ignore[arg-type]
        c = TestClient(app)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.stop()


def register(client: TestClient, worker_id: str = "worker-1", **overrides: object) -> str:
    """Register a provider and return its worker token."""
    response = client.post(
        "/api/providers/quick-register", json=register_body(worker_id, **overrides)
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["workerToken"]
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
