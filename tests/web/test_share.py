"""The "Share My GPU" page in a real browser."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.helpers import ADDRESS, ServerProcess, register_body
from tests.web.conftest import NO_GPU, open_page, screenshot

WEBGL = """
Object.defineProperty(navigator, 'gpu', {value: undefined});
const real = HTMLCanvasElement.prototype.getContext;
HTMLCanvasElement.prototype.getContext = function (kind) {
  if (kind !== 'webgl' && kind !== 'webgl2') return real.call(this, kind);
  return {VENDOR: 1, RENDERER: 2,
    getExtension: () => ({UNMASKED_VENDOR_WEBGL: 3, UNMASKED_RENDERER_WEBGL: 4}),
    getParameter: (p) => ({3: 'Google Inc. (AMD)',
                           4: 'ANGLE (AMD, Radeon RX 6600 Direct3D11)'})[p]};
};
"""
_CHROME = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
USER_AGENTS = {
    "windows": f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_CHROME}",
    "macos": f"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) {_CHROME}",
    "linux": f"Mozilla/5.0 (X11; Linux x86_64) {_CHROME}",
}


def browser_providers(server: ServerProcess) -> list[dict[str, object]]:
    providers: list[dict[str, object]] = httpx.get(server.url + "/api/providers").json()[
        "providers"
    ]
    return [p for p in providers if p["type"] == "browser"]


def test_webgl_is_the_fallback(browser: Browser, web_server: ServerProcess, tmp_path: Path) -> None:
    page = open_page(browser, WEBGL)
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS)
    page.click("#share")
    expect(page.locator("#status")).to_contain_text("via WebGL only, and runs no jobs")
    (provider,) = browser_providers(web_server)
    assert provider["gpus"][0]["vendor"] == "amd"  # type: ignore[index]
    assert provider["capabilities"] == [] and not provider["gpus"][0].get("software")  # type: ignore[index]


@pytest.mark.parametrize("os_name", ["windows", "macos", "linux"])
def test_native_path_downloads_the_installer_and_follows_the_worker(
    browser: Browser, web_server: ServerProcess, tmp_path: Path, os_name: str
) -> None:
    page = open_page(browser, NO_GPU, USER_AGENTS[os_name])
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS)
    with page.expect_download() as info:
        page.click("#share")
    download = info.value
    suffix = ".bat" if os_name == "windows" else ".sh"
    assert download.suggested_filename == f"qubix-installer-{os_name}{suffix}"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    content = saved.read_bytes()
    assert web_server.url.encode() in content and ADDRESS.encode() in content
    status = page.locator("#status")
    expect(status).to_contain_text(
        f"Installer downloaded! Please run {download.suggested_filename}"
    )
    expect(status).to_contain_text(f"SHA-256: {hashlib.sha256(content).hexdigest()}")
    expect(status).to_contain_text("To choose when it may work")
    expect(status).to_contain_text("preferences --help")
    expect(page.locator("#progress-text")).to_contain_text("Waiting for the worker")
    screenshot(page, tmp_path, f"native-waiting-{os_name}")
    body = register_body(f"native-{os_name}")
    httpx.post(web_server.url + "/api/providers/quick-register", json=body)
    expect(status).to_contain_text(f"Online: worker native-{os_name}")
    screenshot(page, tmp_path, f"native-online-{os_name}")


def test_the_install_button_skips_browser_sharing(
    browser: Browser, web_server: ServerProcess
) -> None:
    page = open_page(browser, "", USER_AGENTS["linux"])
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS)
    with page.expect_download() as info:
        page.click("#native")
    assert info.value.suggested_filename == "qubix-installer-linux.sh"
    assert browser_providers(web_server) == []


def test_an_unknown_os_gets_links_to_all_installers(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    page = open_page(browser, NO_GPU, "Mozilla/5.0 (PlayStation 5 3.11) AppleWebKit/605.1.15")
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS)
    page.click("#share")
    status = page.locator("#status")
    expect(status).to_contain_text("could not tell which system")
    hrefs = [status.locator("a").nth(i).get_attribute("href") for i in range(3)]
    assert [re.sub(r"\?.*", "", h or "") for h in hrefs] == [
        "/api/installer/windows",
        "/api/installer/macos",
        "/api/installer/linux",
    ]
    screenshot(page, tmp_path, "unknown-os")


def test_an_invalid_address(browser: Browser, web_server: ServerProcess, tmp_path: Path) -> None:
    page = open_page(browser)
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS[:59])
    expect(page.locator("#address-help")).to_have_text("59 of 60 letters.")
    page.click("#share")
    expect(page.locator("#status")).to_contain_text("60 capital letters")
    page.fill("#address", ADDRESS[:-1] + "A")  # the right shape, a wrong checksum
    page.click("#share")
    expect(page.locator("#status")).to_contain_text("checksum does not match")
    expect(page.locator("#status")).to_contain_text("This is not a valid Qubic address")
    expect(page.locator("#status")).not_to_contain_text("body.")  # no field paths
    screenshot(page, tmp_path, "invalid-address")
    assert browser_providers(web_server) == []


def test_a_server_error_is_shown(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    page = open_page(browser)
    page.route(
        "**/api/providers/quick-register",
        lambda route: route.fulfill(status=500, body='{"error":"internal","message":"boom"}'),
    )
    page.goto(web_server.url + "/")
    page.fill("#address", ADDRESS)
    page.click("#share")
    expect(page.locator("#status")).to_contain_text("The server failed (500)")
    screenshot(page, tmp_path, "server-error")


def test_an_unreachable_server_is_shown(browser: Browser, web_server: ServerProcess) -> None:
    page = open_page(browser)
    page.goto(web_server.url + "/")
    page.route("**/api/providers/quick-register", lambda route: route.abort())
    page.fill("#address", ADDRESS)
    page.click("#share")
    expect(page.locator("#status")).to_contain_text("Cannot reach the Qubix server")


def test_the_timeout_shows_troubleshooting(
    browser: Browser, web_server: ServerProcess, tmp_path: Path
) -> None:
    page = open_page(browser, NO_GPU, USER_AGENTS["linux"])
    page.goto(web_server.url + "/?timeoutS=3")
    page.fill("#address", ADDRESS)
    with page.expect_download():
        page.click("#share")
    status = page.locator("#status")
    expect(status).to_contain_text("has not come online", timeout=20_000)
    expect(status).to_contain_text("worker.log")
    expect(status).to_contain_text(web_server.url)
    screenshot(page, tmp_path, "timeout")


@pytest.mark.parametrize("path", ["/", "/marketplace"])
def test_readable_on_a_phone_without_console_errors(
    webgpu_browser: Browser, web_server: ServerProcess, tmp_path: Path, path: str
) -> None:
    context = webgpu_browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(web_server.url + path)
    if path == "/":
        page.fill("#address", ADDRESS)
        page.click("#share")
        expect(page.locator("#status")).to_contain_text("Sharing: this browser")
    else:
        expect(page.locator("#live")).to_have_text("● live")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert errors == []
    screenshot(page, tmp_path, "phone-share" if path == "/" else "phone-marketplace")
    context.close()
