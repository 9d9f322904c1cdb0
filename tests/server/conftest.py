"""The server's suites run on both stores: the embedded one and PostgreSQL."""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", ["journal", "postgres"], indirect=True)
