"""The .sh installer, executed for real in a throwaway HOME against a real `qubix serve`."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
import zipapp
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from qubix_cli import __version__
from qubix_cli.installer.render import render
from qubix_cli.worker.jobuser import JOB_USER
from tests.helpers import ADDRESS, KEY, ServerProcess, register_body


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", heartbeat_interval_s=1).start()
    yield proc
    proc.stop()


def run_installer(
    script: Path, home: Path, *args: str, path: str | None = None, address_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "PATH": path or f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env["QUBIX_ALLOW_ROOT"] = "1"  # tests may run as root (CI does)
    if address_env:
        env["QUBIC_ADDRESS"] = address_env
    return subprocess.run(
        ["/bin/sh", str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=240,
        check=False,
    )


def worker_processes(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(home) in cmdline and "qubix_worker.pyz" in cmdline and "run" in cmdline:
            found.append(proc)
    return found


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH with every tool of this machine's but `missing` (symlinks in one directory)."""
    bin_dir = tmp_path / "path-without"
    bin_dir.mkdir()
    for directory in (Path(sys.executable).parent, Path("/usr/bin"), Path("/bin")):
        for tool in directory.iterdir():
            if tool.name not in missing and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    return str(bin_dir)


def pretend_older(pyz: Path, version: str) -> None:
    """Put a zipapp that says it is `version` where the installed worker is (the running
    one has its code loaded), as an earlier release would have left it."""
    source = pyz.parent.parent / "older-worker"  # beside the install, not in it
    source.mkdir()
    (source / "__main__.py").write_text(f"print('qubix-worker {version}')\n")
    zipapp.create_archive(source, pyz)


def test_install_run_a_job_upgrade_and_uninstall(server: ServerProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "qubix-installer-linux.sh"
    script.write_bytes(render("linux", server.url).content)  # the address comes from the env
    no_sandbox = path_without(tmp_path, "bwrap", "sudo", "apt-get", "dnf")
    fresh = os.geteuid() == 0 and subprocess.run(["userdel", JOB_USER], check=False).returncode == 0
    try:
        first = run_installer(script, home, path=no_sandbox, address_env=ADDRESS)
        assert first.returncode == 0, first.stdout + first.stderr
        if os.geteuid() == 0:  # as root it makes the user that renters' jobs run as
            assert pwd.getpwnam(JOB_USER).pw_uid != 0
            assert (f"creating the user {JOB_USER}" in first.stdout) == fresh, first.stdout
        assert "is online at" in first.stdout
        # No bubblewrap and no way to install it: it says how, and runs no renters' code.
        assert "bubblewrap is not installed" in first.stdout
        assert "install bubblewrap with your package manager" in first.stdout
        (provider,) = httpx.get(server.url + "/api/providers").json()["providers"]
        assert provider["sandbox"] == "none" and "command" not in provider["capabilities"]
        qubix = home / ".qubix"
        for name in [
            "venv",
            "qubix_worker.pyz",
            "start_worker.sh",
            "stop_worker.sh",
            "worker.conf",
            "credentials.json",
        ]:
            assert (qubix / name).exists(), name
        assert (qubix / "credentials.json").stat().st_mode & 0o777 == 0o600
        providers = httpx.get(server.url + "/api/providers").json()["providers"]
        assert len(providers) == 1 and providers[0]["qubicAddress"] == ADDRESS
        worker_id = providers[0]["workerId"]

        job = httpx.post(
            server.url + "/api/jobs",
            headers=KEY,
            json={"type": "sleep", "payload": {"seconds": 0.2}},
        ).json()["job"]
        deadline = time.monotonic() + 30
        while (
            httpx.get(f"{server.url}/api/jobs/{job['id']}", headers=KEY).json()["job"]["status"]
            != "completed"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)

        (old,) = worker_processes(home)
        pretend_older(qubix / "qubix_worker.pyz", "0.0.9")
        night = "mon-sun 20:00-08:00"  # upgrade in place, with the provider's preferences
        prefs = ("--schedule", night, "--not-on-battery", "--idle-only", "10")
        second = run_installer(script, home, *prefs, "--max-cpu-percent", "50", address_env=ADDRESS)
        assert second.returncode == 0, second.stdout + second.stderr
        kept = json.loads((qubix / "preferences.json").read_text())
        assert kept == {
            "schedule": night,
            "notOnBattery": True,
            "idleMinutes": 10,
            "maxCpuPercent": 50,
        }
        assert "preferences: " in second.stdout
        assert f"upgrading the worker from 0.0.9 to {__version__}" in second.stdout
        assert "stopped the old worker" in second.stdout
        assert "creating a virtual environment" not in second.stdout
        assert "bubblewrap" not in second.stdout  # it is there now
        providers = httpx.get(server.url + "/api/providers").json()["providers"]
        assert [p["workerId"] for p in providers] == [worker_id]
        assert providers[0]["idleOnly"] is True
        assert providers[0]["sandbox"] == "bubblewrap" and "command" in providers[0]["capabilities"]
        (new,) = worker_processes(home)
        assert new.pid != old.pid and not old.is_running()

        gone = run_installer(script, home, "--uninstall")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not qubix.exists()
        assert worker_processes(home) == []
        # It deregistered itself first: its id is free, and a reinstall registers again.
        assert f"worker {worker_id} deregistered" in gone.stdout
        assert httpx.get(f"{server.url}/api/providers/{worker_id}").status_code == 404
    finally:
        for proc in worker_processes(home):
            proc.kill()


def test_missing_python_prints_the_command_to_install_it(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["uname"]:
        os.symlink(
            f"/bin/{tool}" if os.path.exists(f"/bin/{tool}") else f"/usr/bin/{tool}", bin_dir / tool
        )
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "apt-get").chmod(0o755)
    script = tmp_path / "install.sh"
    script.write_bytes(render("linux", "http://127.0.0.1:9", ADDRESS).content)
    result = run_installer(script, tmp_path, path=str(bin_dir))
    assert result.returncode == 1
    assert "sudo apt-get install -y python3 python3-venv" in result.stderr
    assert not (tmp_path / ".qubix").exists()


def test_no_address_and_no_terminal_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_bytes(render("linux", "http://127.0.0.1:9").content)
    result = run_installer(script, tmp_path)
    assert result.returncode == 1
    assert "Qubic address" in result.stderr and "QUBIC_ADDRESS" in result.stderr


def test_a_tampered_worker_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    text = render("linux", "http://127.0.0.1:9", ADDRESS).content.decode()
    head, payload = text.split("__QUBIX_WORKER_PYZ_BASE64__\n", 1)
    script.write_text(head + "__QUBIX_WORKER_PYZ_BASE64__\n" + "QUJD" + payload[4:])
    result = run_installer(script, tmp_path)
    assert result.returncode != 0
    assert "does not match its SHA-256" in result.stderr
    assert not (tmp_path / ".qubix" / "qubix_worker.pyz").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it checks that root is refused")
def test_the_installer_refuses_root_unless_asked(tmp_path: Path) -> None:
    script = tmp_path / "qubix-installer-linux.sh"
    script.write_bytes(render("linux", "http://127.0.0.1:9", ADDRESS).content)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(
        ["/bin/sh", str(script)], capture_output=True, text=True, env=env, check=False
    )
    assert refused.returncode == 1
    assert "refuses to run as root" in refused.stderr and "QUBIX_ALLOW_ROOT=1" in refused.stderr
    assert not (tmp_path / ".qubix").exists()  # nothing installed


def test_a_wrong_checksum_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    wrong = ADDRESS[:-4] + "AAAA"  # 60 capital letters, but not a Qubic address
    script = tmp_path / "qubix-installer-linux.sh"
    script.write_bytes(render("linux", "http://127.0.0.1:9").content)
    started = time.monotonic()
    result = run_installer(script, tmp_path, address_env=wrong)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "checksum does not match" in result.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / ".qubix").exists()  # nothing installed


def test_the_installer_stops_waiting_when_the_worker_stops(tmp_path: Path) -> None:
    """The server refuses this machine's worker (its address already holds as many providers
    as it may): the installer says so at once instead of waiting out its 60 s."""
    server = ServerProcess(tmp_path / "data", 30.0, "--max-providers-per-ip", "1").start()
    try:
        assert (
            httpx.post(
                server.url + "/api/providers/quick-register", json=register_body("first")
            ).status_code
            == 201
        )
        script = tmp_path / "qubix-installer-linux.sh"
        script.write_bytes(render("linux", server.url, ADDRESS).content)
        home = tmp_path / "home"
        home.mkdir()
        started = time.monotonic()
        result = run_installer(script, home)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "the worker stopped" in result.stdout
        assert "429" in result.stdout + result.stderr  # the worker's log, with the reason
        assert time.monotonic() - started < 45
    finally:
        server.stop()
        for proc in worker_processes(tmp_path / "home"):
            proc.kill()


def test_a_wrong_preference_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    script = tmp_path / "qubix-installer-linux.sh"
    script.write_bytes(render("linux", "http://127.0.0.1:9", ADDRESS).content)
    for wrong in (["--schedule", "weekdays 9-5"], ["--max-cpu-percent", "0"], ["--colour"]):
        result = run_installer(script, tmp_path, *wrong)
        assert result.returncode != 0, result.stdout + result.stderr
        assert wrong[0] in result.stderr  # the worker's own message names the option
        assert not (tmp_path / ".qubix").exists()  # nothing installed
