"""Playwright driving Debian's Chromium against a real `qubix serve`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.helpers import ServerProcess

CHROMIUM = "/usr/bin/chromium"
DOCS_SHOTS = Path(__file__).parents[2] / "docs" / "web"

NO_GPU = """
Object.defineProperty(navigator, 'gpu', {value: undefined});
HTMLCanvasElement.prototype.getContext = () => null;
Object.defineProperty(navigator, 'userAgentData', {value: undefined});
"""


BROWSER_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A real WebGPU adapter on SwiftShader, a software Vulkan: headless Chromium offers WebGPU
# to pages and Web Workers only with these.
WEBGPU_ARGS = [
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
    "--enable-features=Vulkan",
]


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} is missing, so the pages are not tested in a browser: install "
            "Debian's chromium package (sudo apt-get install chromium); CI installs it"
        )
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium as it comes: no WebGPU adapter (WebGL on SwiftShader)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def webgpu_browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS + WEBGPU_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", heartbeat_interval_s=1).start()
    yield proc
    proc.stop()


def open_page(browser: Browser, init_script: str = "", user_agent: str | None = None) -> Page:
    context = browser.new_context(
        user_agent=user_agent, accept_downloads=True, viewport={"width": 900, "height": 700}
    )
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """Saved under the test's tmp dir; QUBIX_DOCS_SCREENSHOTS=1 also refreshes docs/web/."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("QUBIX_DOCS_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS_SHOTS / path.name)
    return path
