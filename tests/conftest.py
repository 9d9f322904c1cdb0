from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.helpers import API_KEY, ServerProcess, register_body
from tests.pg import Cluster, server_bin

# Tests register many providers from one address; the limits have tests of their own.
NO_LIMITS = {"max_registrations_per_minute": 0, "max_providers_per_ip": 0}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster for the session (tests/pg.py)."""
    if server_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI installs it")
    started = Cluster()
    yield started
    started.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Which store the apps of a test keep their data in: the embedded one in the test's
    data dir (None), or a fresh PostgreSQL database (tests/server runs on both)."""
    backend = getattr(request, "param", "journal")
    if backend == "postgres":
        url: str = request.getfixturevalue("cluster").new_database()
        return url
    return None


@pytest.fixture
def client(tmp_path: Path, database_url: str | None) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", api_key=API_KEY, database_url=database_url, **NO_LIMITS
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def make_client(tmp_path: Path, database_url: str | None) -> Iterator[object]:
    """Factory for an app with other settings (e.g. a short heartbeat interval), on the
    same data each time (a restart)."""
    opened: list[TestClient] = []

    def make(**settings: object) -> TestClient:
        settings = {**NO_LIMITS, "database_url": database_url, **settings}
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
