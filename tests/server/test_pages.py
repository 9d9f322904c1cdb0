"""The pages' security headers: their own scripts only, never framed, nothing sniffed."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient


@pytest.mark.parametrize("path", ["/", "/marketplace", "/static/share.js", "/static/style.css"])
def test_pages_and_their_files_carry_the_security_headers(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


def test_with_a_public_url_installers_join_only_this_coordinator(make_client: Any) -> None:
    client = make_client(
        public_url="https://market.example", allow_backends=("https://eu.market.example",)
    )
    default = client.get("/api/installer/linux")
    assert default.status_code == 200 and "'https://market.example'" in default.text
    for allowed in ("https://market.example/", "https://eu.market.example"):
        assert client.get(f"/api/installer/linux?backend={allowed}").status_code == 200
    other = client.get("/api/installer/linux?backend=https://evil.example")
    assert other.status_code == 400 and other.json()["error"] == "backend_not_allowed"
    assert "market.example" in other.json()["message"]


def test_without_a_public_url_installers_follow_the_host_header(client: TestClient) -> None:
    answer = client.get("/api/installer/linux", headers={"Host": "gpu.example:8000"})
    assert "'http://gpu.example:8000'" in answer.text
