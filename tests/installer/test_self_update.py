"""Workers that update themselves, as real processes: a worker installed by the real `.sh`
in a throwaway HOME takes its coordinator's signed update, refuses one that does not check,
and rolls back one that does not come up."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from qubix_cli.installer import pack
from qubix_cli.installer import render as render_module
from qubix_cli.server import app as app_module
from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from qubix_cli.worker import AGENT_VERSION
from qubix_cli.worker.state import CREDENTIALS
from tests.helpers import ADDRESS, API_KEY, KEY, ServerProcess, free_port, wait_for
from tests.installer.test_install_sh import run_installer

OLD = "0.0.9"


def zipapp_of(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def worker_of_version(version: str) -> bytes:
    """This worker's code, saying it is `version` (as an earlier release would)."""
    files = []
    for name, data in pack.worker_files():
        if name == "qubix_cli/worker/__init__.py":
            line = 'AGENT_VERSION = "{}"'
            data = data.replace(line.format(AGENT_VERSION).encode(), line.format(version).encode())
            assert version.encode() in data
        files.append((name, data))
    return zipapp_of(files)


def install(
    tmp_path: Path, url: str, worker: bytes, key: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Run the real installer for `worker` (with update key `key`) in a throwaway HOME."""
    monkeypatch.setattr(render_module, "build_worker_pyz", lambda: worker)
    built = render_module.render("linux", url, ADDRESS, key)
    script = tmp_path / built.filename
    script.write_bytes(built.content)
    home = tmp_path / "home"
    home.mkdir()
    done = run_installer(script, home)
    assert done.returncode == 0, done.stdout + done.stderr
    return home


def provider(url: str) -> dict[str, Any]:
    (found,) = httpx.get(url + "/api/providers").json()["providers"]
    return dict(found)


def run_a_job(url: str) -> None:
    job = {"type": "sleep", "payload": {"seconds": 0}}
    job_id = httpx.post(url + "/api/jobs", json=job, headers=KEY).json()["job"]["id"]
    wait_for(
        lambda: (
            httpx.get(f"{url}/api/jobs/{job_id}", headers=KEY).json()["job"]["status"]
            == "completed"
        ),
        timeout=30,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", 0.5).start()
    yield proc
    proc.stop()


def uninstall(tmp_path: Path, home: Path) -> None:
    script = next(tmp_path.glob("qubix-installer-*.sh"))
    run_installer(script, home, "--uninstall")


def test_an_older_worker_takes_the_signed_update_and_keeps_its_identity(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = httpx.get(server.url + "/healthz").json()["updateKey"]
    old = worker_of_version(OLD)
    home = install(tmp_path, server.url, old, key, monkeypatch)
    qubix = home / ".qubix"
    try:
        before = json.loads((qubix / CREDENTIALS).read_text())
        wait_for(lambda: provider(server.url)["agentVersion"] == AGENT_VERSION, timeout=60)
        after = json.loads((qubix / CREDENTIALS).read_text())
        assert after == before  # the same worker id and token
        assert provider(server.url)["workerId"] == before["workerId"]
        assert (qubix / "qubix_worker.pyz.prev").read_bytes() == old  # kept for a rollback
        shipped = httpx.get(server.url + "/api/worker/qubix_worker.pyz").content
        assert (qubix / "qubix_worker.pyz").read_bytes() == shipped
        log = (qubix / "worker.log").read_text()
        assert f"updating from {OLD} to {AGENT_VERSION}" in log
        run_a_job(server.url)  # and the next job completes
    finally:
        uninstall(tmp_path, home)


def test_an_update_that_does_not_check_is_refused_and_the_old_version_works_on(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    old = worker_of_version(OLD)
    home = install(tmp_path, server.url, old, other_key, monkeypatch)  # trusts another key
    qubix = home / ".qubix"
    try:
        wait_for(lambda: "is refused" in (qubix / "worker.log").read_text(), timeout=30)
        log = (qubix / "worker.log").read_text()
        assert "signature does not check" in log and f"{OLD} runs on" in log
        assert (qubix / "qubix_worker.pyz").read_bytes() == old
        assert not (qubix / "qubix_worker.pyz.prev").exists()
        run_a_job(server.url)
        assert provider(server.url)["agentVersion"] == OLD
        assert log.count("updating from") == 1  # refused once, not retried at every beat
    finally:
        uninstall(tmp_path, home)


def test_a_new_version_that_does_not_come_up_is_rolled_back_and_not_offered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = zipapp_of(
        [
            (
                "__main__.py",
                b"import sys\n"
                b"if '--version' in sys.argv: print('qubix-worker 9.9.9'); sys.exit(0)\n"
                b"sys.exit('this version is broken')\n",
            )
        ]
    )
    # A coordinator (in this process) that ships a broken 9.9.9, signed with its key.
    monkeypatch.setattr(app_module, "build_worker_pyz", lambda: broken)
    monkeypatch.setattr(app_module, "AGENT_VERSION", "9.9.9")
    settings = Settings(
        data_dir=tmp_path / "data",
        heartbeat_interval_s=0.5,
        api_key=API_KEY,
        canaries=False,
        max_registrations_per_minute=0,
        max_providers_per_ip=0,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: _up(url), timeout=20)
    key = httpx.get(url + "/healthz").json()["updateKey"]
    current = pack.build_worker_pyz()
    home = install(tmp_path, url, current, key, monkeypatch)
    qubix = home / ".qubix"
    try:
        wait_for(lambda: provider(url).get("failedUpdates") == ["9.9.9"], timeout=90)
        log = (qubix / "worker.log").read_text()
        assert "the update to 9.9.9 did not come up" in log
        assert (qubix / "qubix_worker.pyz").read_bytes() == current  # put back
        assert provider(url)["agentVersion"] == AGENT_VERSION
        run_a_job(url)  # the old version works on
        time.sleep(2)  # heartbeats go on: it is offered 9.9.9 no more
        assert (qubix / "worker.log").read_text().count("updating from") == 1
    finally:
        uninstall(tmp_path, home)
        server.should_exit = True
        thread.join(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_worker_too_old_for_the_server_stops_with_why_instead_of_looping(
    tmp_path: Path,
) -> None:
    from tests.helpers import Worker

    server = ServerProcess(tmp_path / "data", 0.5, "--min-agent-version", "99.0").start()
    try:
        pyz = tmp_path / "qubix_worker.pyz"
        pyz.write_bytes(pack.build_worker_pyz())
        for flags in ({}, {"pyz": pyz}):  # from the package, and a zipapp without update key
            worker = Worker(tmp_path, server.url, f"w{len(flags)}", **flags)  # type: ignore[arg-type]
            assert worker.wait(30) == 2
            assert "older than 99.0" in worker.output()
            assert "Traceback" not in worker.output()
    finally:
        server.stop()
