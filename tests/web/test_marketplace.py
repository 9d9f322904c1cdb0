"""The marketplace page, updated live."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from tests.helpers import ServerProcess, register_body
from tests.web.conftest import open_page, screenshot


def test_the_marketplace_follows_registrations_and_departures(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    httpx.post(
        web_server.url + "/api/providers/quick-register",
        json=register_body(
            "first",
            name="Ada's rig",
            location="Lisbon",
            pricePerHour=0.4,
            capabilities=["sleep", "command"],
            sandbox="bubblewrap",
        ),
    )
    page = open_page(browser)
    page.goto(web_server.url + "/marketplace")
    rows = page.locator("#providers tbody tr")
    expect(rows).to_have_count(1)
    expect(page.locator("#live")).to_have_text("● live")
    small = [{"vendor": "amd", "model": "Radeon RX 6600", "vramMb": 8176}]
    token = httpx.post(
        web_server.url + "/api/providers/quick-register",
        json=register_body("second", gpus=small, capabilities=["command"]),
    ).json()["workerToken"]
    expect(rows).to_have_count(2)  # pushed over the WebSocket
    row = page.locator('tr[data-worker-id="first"]')
    expect(row).to_contain_text("Ada's rig")
    expect(row.locator("a")).to_have_attribute("href", "/providers/first")  # its own page
    expect(row).to_contain_text("NVIDIA GeForce RTX 4090")
    expect(row).to_contain_text("24 GB")
    expect(row).to_contain_text("Lisbon")
    expect(row.locator("td").nth(4)).to_have_text("sandboxed")
    expect(row.locator("td").nth(7)).to_have_text("unverified, 0.00")  # nothing checked yet
    second = page.locator('tr[data-worker-id="second"] td')
    expect(second.nth(4)).to_have_text("unsandboxed")  # it runs renters' code as its user
    screenshot(page, tmp_path, "marketplace")
    # no heartbeats: both go offline after 3 intervals of 1 s
    expect(row.locator("td").nth(1)).to_have_text("offline", timeout=10_000)
    httpx.post(
        web_server.url + "/api/providers/second/heartbeat",
        json={"status": "online"},
        headers={"Authorization": f"Bearer {token}"},
    )
    expect(page.locator('tr[data-worker-id="second"] td').nth(1)).to_have_text("online")
    page.fill("#filter-gpu", "radeon")
    expect(rows).to_have_count(1)
    page.fill("#filter-gpu", "")
    page.select_option("#filter-status", "offline")
    expect(rows).to_have_count(1)
    screenshot(page, tmp_path, "marketplace-offline")


def test_the_marketplace_reconnects(browser: Browser, web_server: ServerProcess) -> None:
    page = open_page(browser)
    page.goto(web_server.url + "/marketplace")
    expect(page.locator("#live")).to_have_text("● live")
    web_server.kill()
    expect(page.locator("#live")).to_contain_text("reconnecting")
    web_server.start()
    expect(page.locator("#live")).to_have_text("● live", timeout=30_000)
    httpx.post(web_server.url + "/api/providers/quick-register", json=register_body("late"))
    expect(page.locator("#providers tbody tr")).to_have_count(1)
