"""The server's suites run on both stores: the embedded one and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS
from tests.helpers import API_KEY


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", ["journal", "postgres"], indirect=True)


class Clock:
    """The server's time, moved on by the test (and by a microsecond at each reading, so
    that jobs are made in order)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app_client(tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    """An app on the embedded store with canaries off and the test's own clock."""
    settings = Settings(data_dir=tmp_path / "data", api_key=API_KEY, canaries=False, **NO_LIMITS)  # type: ignore[arg-type]
    with TestClient(create_app(settings, clock)) as c:
        yield c
