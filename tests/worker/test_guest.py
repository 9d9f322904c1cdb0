"""The provider's preferences: a schedule, not on battery, a GPU temperature ceiling; read
from fake sources (a sysfs tree laid out as a laptop's, `pmset` output), and a real worker
that hands its job back and pauses when the machine goes on battery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from qubix_cli.worker import guest
from tests.helpers import KEY, ServerProcess, Worker, job, submit, wait_for


def at(day: int, hour: int, minute: int = 0) -> time.struct_time:
    """A local time on weekday `day` (0 = Monday) of a week in 2026."""
    return time.struct_time((2026, 11, 23 + day, hour, minute, 0, day, 327 + day, 0))


def test_a_schedule_with_day_ranges_and_nights() -> None:
    windows = guest.parse_schedule("mon-fri 18:00-08:00; sat,sun 00:00-24:00")
    assert guest.in_schedule(windows, at(0, 19))  # Monday evening
    assert guest.in_schedule(windows, at(1, 7, 59))  # Tuesday morning, from Monday's night
    assert not guest.in_schedule(windows, at(1, 8))  # Tuesday 08:00: over
    assert not guest.in_schedule(windows, at(2, 12))  # Wednesday noon
    assert guest.in_schedule(windows, at(5, 12)) and guest.in_schedule(windows, at(6, 23, 59))
    assert guest.in_schedule(windows, at(5, 7))  # Saturday 07:00: Friday's night, and Saturday
    assert guest.in_schedule(guest.parse_schedule("fri-mon 09:00-17:00"), at(0, 10))  # wraps
    assert guest.in_schedule([], at(2, 3))  # no schedule: any time
    for bad in ("weekdays 9-5", "mon 09:00-09:00", "mon 25:00-26:00", "xyz 01:00-02:00"):
        with pytest.raises(guest.PreferenceError):
            guest.parse_schedule(bad)


def laptop(root: Path, on_mains: bool) -> None:
    """/sys/class/power_supply as a laptop has it: AC (Mains) and BAT0 (Battery)."""
    for name, kind in (("AC", "Mains"), ("BAT0", "Battery")):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "type").write_text(kind + "\n")
    (root / "AC" / "online").write_text("1\n" if on_mains else "0\n")


def test_on_battery_from_sysfs_and_pmset(tmp_path: Path) -> None:
    laptop(tmp_path / "ps", on_mains=True)
    assert guest.linux_on_battery(str(tmp_path / "ps")) is False
    laptop(tmp_path / "ps", on_mains=False)
    assert guest.linux_on_battery(str(tmp_path / "ps")) is True
    (tmp_path / "desktop").mkdir()
    assert guest.linux_on_battery(str(tmp_path / "desktop")) is None  # no battery at all
    assert guest.linux_on_battery(str(tmp_path / "missing")) is None
    ac = "Now drawing from 'AC Power'\n -InternalBattery-0 (id=4653155)\t100%; charged;"
    batt = "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=4653155)\t87%; discharging;"
    assert guest.macos_on_battery(ac) is False and guest.macos_on_battery(batt) is True
    assert guest.macos_on_battery("") is None


def test_a_hot_gpu_rests_until_it_cools_by_the_margin() -> None:
    prefs = {"maxGpuTempC": 85}
    usage = {"gpus": [{"index": 0, "tempC": 60}, {"index": 1, "tempC": 86}]}
    assert guest.hottest_c(usage) == 86
    noon = at(2, 12)
    why = guest.reason_to_rest(prefs, noon, None, 86, None)
    assert why == "GPU at 86 °C, its ceiling is 85 °C"
    assert guest.reason_to_rest(prefs, noon, None, 82, why) is not None  # not cool enough
    assert guest.reason_to_rest(prefs, noon, None, 80, why) is None  # 5 below: work again
    assert guest.reason_to_rest(prefs, noon, None, 82, None) is None
    assert guest.reason_to_rest({"notOnBattery": True}, noon, True, None, None) == "on battery"
    assert guest.reason_to_rest({"notOnBattery": False}, noon, True, None, None) is None
    night_only = {"schedule": "mon-sun 22:00-06:00"}
    assert guest.reason_to_rest(night_only, noon, None, None, None) == (
        "outside the provider's schedule"
    )


def test_a_worker_hands_its_job_back_and_rests_on_battery(
    server: ServerProcess, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    supplies = tmp_path / "power_supply"
    laptop(supplies, on_mains=True)
    worker = workers("w1", "--not-on-battery", env={"QUBIX_POWER_SUPPLY_DIR": str(supplies)})
    shown = lambda: httpx.get(f"{server.url}/api/providers/w1").json().get("provider") or {}  # noqa: E731
    wait_for(lambda: shown().get("status") == "online")
    job_id = submit(server, type="sleep", payload={"seconds": 60}, maxAttempts=1)
    wait_for(lambda: job(server, job_id)["status"] == "assigned")
    laptop(supplies, on_mains=False)  # unplugged
    wait_for(lambda: job(server, job_id)["status"] == "queued", timeout=30)
    preempted = [e for e in job(server, job_id)["history"] if e["event"] == "preempted"]
    assert preempted[0]["reason"] == "on battery"
    wait_for(lambda: shown().get("status") == "paused", timeout=15)
    assert shown()["pausedReason"] == "on battery"
    laptop(supplies, on_mains=True)  # plugged in again: it takes the job back
    wait_for(lambda: job(server, job_id)["status"] == "assigned", timeout=30)
    assert shown()["trust"]["failed"] == 0
    httpx.post(f"{server.url}/api/jobs/{job_id}/cancel", headers=KEY)
    worker.signal(signal.SIGTERM)
    assert os.path.exists(worker.home / "preferences.json")


LOGINCTL_IDLE = "IdleHint=yes\nIdleSinceHint={}\n"  # `loginctl show-session ID -p ... -p ...`
LOGINCTL_BUSY = "IdleHint=no\nIdleSinceHint=0\n"
IOREG = '    |   |   "HIDIdleTime" = 123456789012\n    |   |   "HIDParameters" = {}\n'


def test_idle_time_from_logind_and_ioreg() -> None:
    now = 1_800_000_000.0
    assert guest.linux_idle_s(LOGINCTL_IDLE.format(int((now - 600) * 1e6)), now) == 600
    assert guest.linux_idle_s(LOGINCTL_BUSY, now) == 0.0
    assert guest.linux_idle_s("", now) is None  # no session: it cannot tell
    assert guest.macos_idle_s(IOREG) == pytest.approx(123.456789012)
    assert guest.macos_idle_s("") is None
    prefs = {"idleMinutes": 5}
    noon = at(2, 12)
    assert guest.reason_to_rest(prefs, noon, None, None, None, 600) is None
    assert guest.reason_to_rest(prefs, noon, None, None, None, 60) == "the computer is in use"
    assert "not supported" in str(guest.reason_to_rest(prefs, noon, None, None, None, None))


def test_a_worker_that_works_only_when_idle_hands_back_when_someone_comes(
    server: ServerProcess, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    state = tmp_path / "logind-state"
    state.write_text(LOGINCTL_IDLE.format(int((time.time() - 3600) * 1e6)))
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "loginctl").write_text(f"#!/bin/sh\ncat {state}\n")
    (fake / "loginctl").chmod(0o755)
    path = f"{fake}:{tmp_path / 'bin'}:{os.environ['PATH']}"
    worker = workers("w1", "--idle-only", "1", env={"PATH": path})
    shown = lambda: httpx.get(f"{server.url}/api/providers/w1").json().get("provider") or {}  # noqa: E731
    wait_for(lambda: shown().get("status") == "online")
    job_id = submit(server, type="sleep", payload={"seconds": 60}, maxAttempts=1)
    wait_for(lambda: job(server, job_id)["status"] == "assigned")
    state.write_text(LOGINCTL_BUSY)  # someone sits down at it
    wait_for(lambda: job(server, job_id)["status"] == "queued", timeout=30)
    preempted = [e for e in job(server, job_id)["history"] if e["event"] == "preempted"]
    assert preempted[0]["reason"] == "the computer is in use"
    wait_for(lambda: shown().get("pausedReason") == "the computer is in use", timeout=15)
    state.write_text(LOGINCTL_IDLE.format(int((time.time() - 120) * 1e6)))  # away again
    wait_for(lambda: job(server, job_id)["status"] == "assigned", timeout=30)
    assert shown()["idleOnly"] is True  # declared: a job handed back twice goes elsewhere
    prefs = worker.home / "preferences.json"
    prefs.write_text(json.dumps({**json.loads(prefs.read_text()), "idleMinutes": 0}))
    wait_for(lambda: shown().get("idleOnly") is False, timeout=30)  # said again, no restart
    httpx.post(f"{server.url}/api/jobs/{job_id}/cancel", headers=KEY)
    worker.signal(signal.SIGTERM)


def test_max_gpus_offers_only_the_first_ones(
    server: ServerProcess, workers: Callable[..., Worker]
) -> None:
    workers("w1", "--max-gpus", "1")  # the fake nvidia-smi has two
    shown = lambda: httpx.get(f"{server.url}/api/providers/w1").json().get("provider") or {}  # noqa: E731
    wait_for(lambda: shown().get("status") == "online")
    assert len(shown()["gpus"]) == 1 and shown()["concurrency"] == 1


def test_max_cpu_percent_holds_jobs_to_that_share_of_the_cpus(
    server: ServerProcess, workers: Callable[..., Worker]
) -> None:
    threads = os.cpu_count() or 1
    allowed = max(1, threads * 50 // 100)
    workers("w1", "--max-cpu-percent", "50")
    shown = lambda: httpx.get(f"{server.url}/api/providers/w1").json().get("provider") or {}  # noqa: E731
    wait_for(lambda: shown().get("status") == "online")
    assert shown()["cpu"]["threads"] == allowed  # offered as what jobs may use
    script = (
        'python3 -c "import os; print(len(os.sched_getaffinity(0)))"; echo "omp=$OMP_NUM_THREADS"'
    )
    job_id = submit(server, type="command", payload={"argv": ["/bin/sh", "-c", script]})
    done = wait_for(lambda: (j := job(server, job_id))["status"] == "completed" and j)
    out = done["result"]["stdoutTail"].split()
    assert out == [str(allowed), f"omp={allowed}"], done["result"]
    assert threads == 1 or allowed < threads


def test_a_hot_gpu_hands_back_and_rests_until_it_cools(
    server: ServerProcess, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    from tests.worker.fakes import nvidia

    temps = tmp_path / "usage.csv"  # what the fake nvidia-smi says of each GPU's use
    temps.write_text("0, 90, 1000, 60\n1, 0, 1, 40\n")
    nvidia(tmp_path / "bin", "nvidia-smi-2gpu.csv", usage=str(temps))
    workers("w1", "--max-gpu-temp", "85")
    shown = lambda: httpx.get(f"{server.url}/api/providers/w1").json().get("provider") or {}  # noqa: E731
    wait_for(lambda: shown().get("status") == "online")
    job_id = submit(server, type="sleep", payload={"seconds": 60}, maxAttempts=1)
    wait_for(lambda: job(server, job_id)["status"] == "assigned")
    temps.write_text("0, 100, 1000, 88\n1, 0, 1, 40\n")  # it heats up
    wait_for(lambda: job(server, job_id)["status"] == "queued", timeout=30)
    preempted = [e for e in job(server, job_id)["history"] if e["event"] == "preempted"]
    assert preempted[0]["reason"] == "GPU at 88 °C, its ceiling is 85 °C"
    wait_for(lambda: shown().get("status") == "paused", timeout=15)
    temps.write_text("0, 0, 1000, 82\n1, 0, 1, 40\n")  # cooler, not by the 5 degrees yet
    time.sleep(12)  # the preferences are looked at every 10 s
    assert shown()["status"] == "paused" and job(server, job_id)["status"] == "queued"
    temps.write_text("0, 0, 1000, 79\n1, 0, 1, 40\n")
    wait_for(lambda: job(server, job_id)["status"] == "assigned", timeout=30)
    assert shown()["trust"]["failed"] == 0
    httpx.post(f"{server.url}/api/jobs/{job_id}/cancel", headers=KEY)


def test_outside_its_schedule_it_rests_and_a_new_schedule_applies_without_a_restart(
    server: ServerProcess, workers: Callable[..., Worker]
) -> None:
    now = time.localtime()
    day = guest.DAYS[(now.tm_wday + 2) % 7]  # a window two days away: not now
    worker = workers("w1", "--schedule", f"{day} 10:00-11:00")
    shown = lambda: httpx.get(f"{server.url}/api/providers/w1").json().get("provider") or {}  # noqa: E731
    wait_for(lambda: shown().get("pausedReason") == "outside the provider's schedule", timeout=15)
    job_id = submit(server, type="sleep", payload={"seconds": 0.1})
    time.sleep(2)
    assert job(server, job_id)["status"] == "queued"
    diagnosis = httpx.get(f"{server.url}/api/providers/w1/diagnosis", headers=KEY).json()
    assert any("outside the provider's schedule" in r for r in diagnosis["reasons"]), diagnosis
    changed = subprocess.run(
        [sys.executable, "-m", "qubix_cli", "worker", "preferences", "--schedule", ""],
        env={**os.environ, "QUBIX_HOME": str(worker.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert changed.returncode == 0, changed.stderr  # any time, from now on
    wait_for(lambda: job(server, job_id)["status"] == "completed", timeout=30)


def test_a_hand_edited_preference_that_cannot_be_used_is_refused_not_a_crash(
    tmp_path: Path,
) -> None:
    for wrong, says in (
        ({"maxGpuTempC": "85"}, "--max-gpu-temp must be between 30 and 120"),
        ({"maxGpuTempC": -300}, "--max-gpu-temp must be between 30 and 120"),
        ({"idleMinutes": "10"}, "--idle-only must be between 0 and 10080"),
        ({"idleMinutes": 10**20}, "--idle-only must be between 0 and 10080"),
        ({"schedule": 5}, "--schedule: write it as text"),
        ({"notOnBattery": "yes"}, "notOnBattery must be true or false"),
        ({"maxCpuPercent": True}, "--max-cpu-percent must be between 1 and 100"),
    ):
        with pytest.raises(guest.PreferenceError, match=re.escape(says)):
            guest.check(wrong)
        (tmp_path / "preferences.json").write_text(json.dumps(wrong))
        assert guest.load(str(tmp_path)) == {}  # the worker works as if it had none
    env = {**os.environ, "QUBIX_HOME": str(tmp_path)}
    prefs = [sys.executable, "-m", "qubix_cli", "worker", "preferences"]
    for damaged in ("garbage{", "[1, 2]", '{"schedule": 5}'):
        (tmp_path / "preferences.json").write_text(damaged)
        said = subprocess.run([*prefs, "--max-gpus", "2"], env=env, capture_output=True, text=True)
        assert said.returncode == 2 and "qubix: error:" in said.stderr, said.stderr
        assert (tmp_path / "preferences.json").read_text() == damaged  # not overwritten
    said = subprocess.run(
        [*prefs, "--max-gpu-temp", "1000"], env=env, capture_output=True, text=True
    )
    assert said.returncode == 2 and "between 30 and 120" in said.stderr
    fixed = subprocess.run(
        [*prefs, "--reset", "--max-gpus", "2"], env=env, capture_output=True, text=True
    )
    assert fixed.returncode == 0 and json.loads(fixed.stdout) == {"maxGpus": 2}
