"""A provider's page and an address's page, in Chromium against a real `qubix serve`."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from tests.helpers import KEY, OTHER_ADDRESS, ServerProcess, register_body
from tests.web.conftest import open_page, screenshot


def run_a_paid_job(url: str, worker_id: str, token: str) -> str:
    """A renter's sleep job, leased and reported by the worker; its id."""
    job = {"type": "sleep", "payload": {"seconds": 0}, "requirements": {"maxPricePerHour": 36}}
    job_id: str = httpx.post(f"{url}/api/jobs", json=job, headers=KEY).json()["job"]["id"]
    headers = {"Authorization": f"Bearer {token}"}
    leased = httpx.get(f"{url}/api/jobs/pending/{worker_id}", headers=headers).json()
    assert leased["job"]["id"] == job_id
    report = {"attempt": 1, "status": "completed", "result": {"slept": 0}}
    assert httpx.post(f"{url}/api/jobs/{job_id}/complete", json=report, headers=headers).is_success
    return job_id


def test_a_providers_page_shows_status_why_hardware_trust_jobs_and_earnings_live(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    url = web_server.url
    body = register_body("ada-box", name="Ada's rig", pricePerHour=36.0, capabilities=["sleep"])
    token = httpx.post(f"{url}/api/providers/quick-register", json=body).json()["workerToken"]
    run_a_paid_job(url, "ada-box", token)
    errors: list[str] = []
    page = open_page(browser)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/providers/ada-box")
    expect(page.locator("#live")).to_have_text("● live")
    expect(page.locator("#title")).to_have_text("Ada's rig (ada-box)")
    expect(page.locator("#summary strong")).to_have_text("online")
    expect(page.locator("#why")).to_contain_text("It is online and asks for work")
    expect(page.locator("#hardware")).to_contain_text("NVIDIA GeForce RTX 4090 (24 GB)")
    expect(page.locator("#trust")).to_contain_text("0 passed, 0 failed")
    jobs = page.locator("#jobs tbody tr")
    expect(jobs).to_have_count(1)
    expect(jobs.first.locator("td").nth(0)).to_have_text("sleep")
    expect(jobs.first.locator("td").nth(1)).to_have_text("completed")
    earned = jobs.first.locator("td").nth(4).inner_text()
    assert float(earned) >= 0  # 36 an hour for the few milliseconds it ran
    figures = page.locator("#earnings dd")
    expect(figures).to_have_count(4)
    assert figures.nth(3).inner_text() == earned  # all time: this one job
    screenshot(page, tmp_path, "provider")
    # no heartbeats (1 s interval): it goes offline, and the page says so by itself
    expect(page.locator("#summary strong")).to_have_text("offline", timeout=10_000)
    expect(page.locator("#why")).to_contain_text("It is offline since")
    page.click("text=all workers of its address")
    expect(page).to_have_url(f"{url}/address/{body['qubicAddress']}")
    assert errors == []


def test_an_address_page_lists_its_workers_only_with_links(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    url = web_server.url
    for worker_id, address in (("one", None), ("two", None), ("elsewhere", OTHER_ADDRESS)):
        extra = {"qubicAddress": address} if address else {}
        httpx.post(f"{url}/api/providers/quick-register", json=register_body(worker_id, **extra))
    address = register_body()["qubicAddress"]
    page = open_page(browser)
    page.goto(f"{url}/address/{address}")
    rows = page.locator("#workers tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("a")).to_have_attribute("href", "/providers/one")
    expect(page.locator("#summary")).to_have_text(address)
    screenshot(page, tmp_path, "address")


def test_an_unknown_worker_says_so(browser: Browser, web_server: ServerProcess) -> None:
    page = open_page(browser)
    page.goto(f"{web_server.url}/providers/nobody")
    expect(page.locator("#error")).to_contain_text("There is no worker nobody here")


def test_the_provider_page_at_phone_width(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    body = register_body("phone-box", pricePerHour=1.5, capabilities=["sleep"])
    httpx.post(f"{web_server.url}/api/providers/quick-register", json=body)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{web_server.url}/providers/phone-box")
    expect(page.locator("#hardware")).to_contain_text("RTX 4090")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert errors == []
    screenshot(page, tmp_path, "phone-provider")
    context.close()


def test_a_paused_provider_says_until_when(browser: Browser, web_server: ServerProcess) -> None:
    url = web_server.url
    body = register_body("resting", capabilities=["sleep"])
    token = httpx.post(f"{url}/api/providers/quick-register", json=body).json()["workerToken"]
    beat = {"status": "paused", "pausedReason": "by the provider", "pausedUntil": 4102444800}
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(
        f"{url}/api/providers/resting/heartbeat", json=beat, headers=headers
    ).is_success
    page = open_page(browser)
    page.goto(f"{url}/providers/resting")
    expect(page.locator("#summary strong")).to_have_text("paused")
    expect(page.locator("#why")).to_contain_text(
        "It is paused by the provider until 2100-01-01 00:00:00 UTC"
    )
