"""`qubix watch`, `qubix providers`, the settings precedence and `qubix demo`, as real
processes against a real `qubix serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import ADDRESS, OTHER_ADDRESS, ServerProcess, free_port, register_body


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUBIX")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    env.update({"COLUMNS": "200", **extra})
    return env


def qubix(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qubix_cli", *args],
        capture_output=True,
        text=True,
        env=env_for(tmp_path, **extra),
        timeout=120,
        check=False,
    )


def register_later(server: ServerProcess, delay: float, **overrides: object) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        body = register_body(**overrides)  # type: ignore[arg-type]
        httpx.post(server.url + "/api/providers/quick-register", json=body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_watch_sees_a_worker_that_registers_later(server: ServerProcess, tmp_path: Path) -> None:
    register_later(server, 1.0, worker_id="other", qubicAddress=OTHER_ADDRESS)  # not ours
    thread = register_later(server, 2.0, worker_id="mine")
    result = qubix(
        tmp_path,
        "watch",
        "--server",
        server.url,
        "--qubic-address",
        ADDRESS,
        "--interval",
        "1",
        "--attempts",
        "20",
        "--json",
    )
    thread.join()
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["provider"]["workerId"] == "mine"
    assert 0.5 < answer["seconds"] < 5  # the watch started about 0.6 s after the threads
    # the state file remembers it: `providers show` defaults to it
    shown = qubix(tmp_path, "providers", "show", "--server", server.url, "--json")
    assert json.loads(shown.stdout)["workerId"] == "mine"


def test_watch_display_says_how_long_it_took(server: ServerProcess, tmp_path: Path) -> None:
    thread = register_later(server, 1.0, worker_id="shown", name="Ada's rig")
    result = qubix(tmp_path, "watch", "--server", server.url, "--interval", "1", "--attempts", "10")
    thread.join()
    assert result.returncode == 0, result.stderr
    assert "online after" in result.stdout and "shown" in result.stdout
    assert "NVIDIA GeForce RTX 4090 (24 GB)" in result.stdout and "Ada's rig" in result.stdout


def test_watch_times_out_with_troubleshooting(server: ServerProcess, tmp_path: Path) -> None:
    started = time.monotonic()
    result = qubix(
        tmp_path,
        "watch",
        "--server",
        server.url,
        "--interval",
        "0.5",
        "--attempts",
        "3",
        "--qubic-address",
        ADDRESS,
    )
    assert result.returncode == 1
    assert 1.0 < time.monotonic() - started < 15
    assert f"curl {server.url}/healthz" in result.stderr
    assert "worker.log" in result.stderr and ADDRESS in result.stderr
    assert "Traceback" not in result.stderr
    as_json = qubix(
        tmp_path, "watch", "--server", server.url, "--interval", "0.5", "--attempts", "1", "--json"
    )
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"] == "timeout"


def test_watch_counts_a_worker_that_is_online_already(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The installer finished before the watch began: named by id or address, it counts."""
    httpx.post(server.url + "/api/providers/quick-register", json=register_body("early"))
    for given in (["--worker-id", "early"], ["--qubic-address", ADDRESS]):
        started = time.monotonic()
        result = qubix(
            tmp_path, "watch", "--server", server.url, "--attempts", "3", *given, "--json"
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["provider"]["workerId"] == "early"
        assert time.monotonic() - started < 10  # not a single 5 s attempt waited
    other = ["--qubic-address", OTHER_ADDRESS, "--interval", "0.5", "--attempts", "1"]
    assert qubix(tmp_path, "watch", "--server", server.url, *other).returncode == 1


def test_watch_troubleshooting_reads_well_at_80_columns(
    server: ServerProcess, tmp_path: Path
) -> None:
    args = ["watch", "--server", server.url, "--interval", "0.5", "--attempts", "3"]
    result = qubix(tmp_path, *args, COLUMNS="80")
    assert "within 1.5 seconds." in result.stderr  # not "0.025 minutes"
    assert all(len(line) <= 80 for line in result.stderr.splitlines())
    body = register_body("solo")
    httpx.post(server.url + "/api/providers/quick-register", json=body)
    listed = qubix(tmp_path, "providers", "list", "--server", server.url)
    assert "1 provider\n" in listed.stdout


def test_watch_an_unreachable_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = qubix(
        tmp_path, "watch", "--server", url, "--interval", "0.5", "--attempts", "2", "--json"
    )
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert "cannot reach the Qubix server" in answer["message"]
    assert "Traceback" not in result.stderr


def test_ctrl_c_exits_130(server: ServerProcess, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qubix_cli", "watch", "--server", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
    )
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "Traceback" not in stderr


def test_follow_shows_the_fleet_live(server: ServerProcess, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qubix_cli", "watch", "--server", server.url, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
    )
    time.sleep(2)
    register_later(server, 0, worker_id="fleet-member").join()
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "fleet-member" in stdout and "online" in stdout


def test_providers_list_and_show(server: ServerProcess, tmp_path: Path) -> None:
    register_later(server, 0, worker_id="big").join()
    small = [{"vendor": "amd", "model": "Radeon RX 6600", "vramMb": 8176}]
    register_later(server, 0, worker_id="small", gpus=small).join()
    table = qubix(tmp_path, "providers", "list", "--server", server.url)
    assert table.returncode == 0 and "big" in table.stdout and "2 providers" in table.stdout
    listed = qubix(
        tmp_path, "providers", "list", "--server", server.url, "--min-vram-mb", "16000", "--json"
    )
    assert [p["workerId"] for p in json.loads(listed.stdout)] == ["big"]
    shown = qubix(tmp_path, "providers", "show", "small", "--server", server.url)
    assert "Radeon RX 6600 (8 GB)" in shown.stdout
    missing = qubix(tmp_path, "providers", "show", "nobody", "--server", server.url)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_settings_precedence_flag_env_config_default(server: ServerProcess, tmp_path: Path) -> None:
    register_later(server, 0, worker_id="seen").join()
    config = tmp_path / "config" / "qubix"
    config.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"server": server.url}))
    from_config = qubix(tmp_path, "providers", "list", "--json")
    assert [p["workerId"] for p in json.loads(from_config.stdout)] == ["seen"]
    dead = f"http://127.0.0.1:{free_port()}"
    env_wins = qubix(tmp_path, "providers", "list", QUBIX_SERVER=dead)
    assert env_wins.returncode == 1 and dead in env_wins.stderr
    flag_wins = qubix(tmp_path, "providers", "list", "--server", server.url, QUBIX_SERVER=dead)
    assert flag_wins.returncode == 0
    (config / "config.json").write_text("{broken")
    broken = qubix(tmp_path, "providers", "list")
    assert broken.returncode == 1 and "config.json" in broken.stderr


def test_demo_runs_the_whole_journey(tmp_path: Path) -> None:
    started = time.monotonic()
    result = qubix(tmp_path, "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The whole journey works on this machine." in result.stdout
    assert "completed: CPU score" in result.stdout
    assert time.monotonic() - started < 90
    leftovers = [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("qubix-demo-*")]
    assert leftovers == []


def test_providers_list_outdated_and_show_the_agent(server: ServerProcess, tmp_path: Path) -> None:
    httpx.post(server.url + "/api/providers/quick-register", json=register_body("new"))
    old = register_body("old", agentVersion="0.0.9")
    httpx.post(server.url + "/api/providers/quick-register", json=old)
    listed = qubix(tmp_path, "providers", "list", "--outdated", "--json", "--server", server.url)
    assert [p["workerId"] for p in json.loads(listed.stdout)] == ["old"]
    shown = qubix(tmp_path, "providers", "show", "old", "--server", server.url)
    assert "0.0.9 (outdated: the server ships a newer one)" in shown.stdout
    table = qubix(tmp_path, "providers", "list", "--server", server.url)
    assert "outdated" in table.stdout
