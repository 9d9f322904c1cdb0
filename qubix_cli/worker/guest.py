"""A good guest on the provider's machine: when the worker may take work.

The provider's preferences (`preferences.json` in the state dir, or `worker run` options,
which are written there) say: a weekly schedule of hours when it may work, not while the
machine runs on battery, not while someone uses the computer, not while a GPU is hotter
than a ceiling (it resumes below the ceiling less a margin), and at most so many GPUs and
CPU threads. `reason_to_rest` names the first one that says no, in the words the
marketplace shows ("on battery"); the agent then pauses as for `qubix worker pause
--hand-back`. What the machine says is read by one small function per source, whose root
tests point at fakes (`QUBIX_POWER_SUPPLY_DIR`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Tuple

from qubix_cli.worker.hardware import read_file

PREFERENCES_FILE = "preferences.json"
POWER_SUPPLY_DIR = "/sys/class/power_supply"
HOT_MARGIN_C = 5
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Window = Tuple[Tuple[int, ...], int, int]  # days (0 = Monday), start and end minute


class PreferenceError(ValueError):
    """A preference that cannot be understood (the message says how to write it)."""


def parse_schedule(text: str) -> list[Window]:
    """`mon-fri 18:00-08:00; sat,sun 00:00-24:00`: on those days from the first time to the
    second (one that ends earlier than it starts runs on into the next morning)."""
    windows: list[Window] = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        match = re.fullmatch(r"([a-z,\-]+)\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", part.lower())
        if not match:
            raise PreferenceError(
                f"{part!r} is not a schedule window: write it as 'mon-fri 18:00-08:00' "
                "(days, then hours; windows separated by semicolons)"
            )
        days = _days(match.group(1))
        start = int(match.group(2)) * 60 + int(match.group(3))
        end = int(match.group(4)) * 60 + int(match.group(5))
        if start > 24 * 60 or end > 24 * 60 or start == end:
            raise PreferenceError(f"{part!r}: hours run from 00:00 to 24:00, and differ")
        windows.append((days, start, end))
    return windows


def _days(text: str) -> tuple[int, ...]:
    found: list[int] = []
    for item in text.split(","):
        first, _, last = item.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise PreferenceError(f"{item!r} is not a day or a range of days (mon ... sun)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        found += [d % 7 for d in range(a, b + 1 if b >= a else b + 8)]
    return tuple(sorted(set(found)))


def in_schedule(windows: list[Window], now: time.struct_time) -> bool:
    """Whether local time `now` is inside one of the windows (no windows: any time)."""
    if not windows:
        return True
    day, minute = now.tm_wday, now.tm_hour * 60 + now.tm_min
    for days, start, end in windows:
        if start < end and day in days and start <= minute < end:
            return True
        if start > end:  # over midnight: the evening of a listed day, the next morning
            if (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end):
                return True
    return False


def on_battery() -> bool | None:
    """Whether the machine runs on battery now (None: it cannot tell, or has none)."""
    if sys.platform.startswith("linux"):
        return linux_on_battery(os.environ.get("QUBIX_POWER_SUPPLY_DIR", POWER_SUPPLY_DIR))
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["pmset", "-g", "batt"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return macos_on_battery(out)
    if sys.platform == "win32":
        return windows_on_battery()
    return None


def linux_on_battery(root: str) -> bool | None:
    """From sysfs: on battery when a battery is there and no mains or USB supply is
    online."""
    try:
        names = os.listdir(root)
    except OSError:
        return None
    kinds: dict[str, list[str]] = {}
    for name in names:
        kind = read_file(os.path.join(root, name, "type"))
        online = read_file(os.path.join(root, name, "online"))
        kinds.setdefault(kind or "", []).append(online or "")
    if "Battery" not in kinds:
        return None
    mains = kinds.get("Mains", []) + kinds.get("USB", [])
    return not any(online == "1" for online in mains)


def macos_on_battery(pmset_output: str) -> bool | None:
    """From `pmset -g batt`: "Now drawing from 'Battery Power'" or "'AC Power'"."""
    if "'Battery Power'" in pmset_output:
        return True
    if "'AC Power'" in pmset_output:
        return False
    return None


def windows_on_battery() -> bool | None:  # pragma: no cover - Windows only
    import ctypes

    class Status(ctypes.Structure):
        _fields_ = [
            ("ACLineStatus", ctypes.c_byte),
            ("BatteryFlag", ctypes.c_byte),
            ("BatteryLifePercent", ctypes.c_byte),
            ("SystemStatusFlag", ctypes.c_byte),
            ("BatteryLifeTime", ctypes.c_ulong),
            ("BatteryFullLifeTime", ctypes.c_ulong),
        ]

    status = Status()
    if not ctypes.windll.kernel32.GetSystemPowerStatus(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    if status.BatteryFlag == -128 or status.BatteryFlag & 128:  # no system battery
        return None
    return bool(status.ACLineStatus == 0)


def idle_seconds(now: float) -> float | None:
    """How long the person at the computer has not touched it, or None where this cannot
    be told (a server with no login session, an OS without a source)."""
    if sys.platform.startswith("linux"):
        session = os.environ.get("XDG_SESSION_ID")
        args = ["loginctl", "show-session", session] if session else ["loginctl", "show-user"]
        return linux_idle_s(_output([*args, "-p", "IdleHint", "-p", "IdleSinceHint"]), now)
    if sys.platform == "darwin":
        return macos_idle_s(_output(["ioreg", "-c", "IOHIDSystem", "-d", "4"]))
    if sys.platform == "win32":
        return windows_idle_s()
    return None


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def linux_idle_s(loginctl_output: str, now: float) -> float | None:
    """From logind (`loginctl show-session ID -p IdleHint -p IdleSinceHint`): 0 while the
    session is in use, else the seconds since it went idle."""
    values = dict(line.split("=", 1) for line in loginctl_output.splitlines() if "=" in line)
    if values.get("IdleHint") == "no":
        return 0.0
    since = values.get("IdleSinceHint", "")
    if values.get("IdleHint") != "yes" or not since.isdigit() or int(since) == 0:
        return None
    return max(0.0, now - int(since) / 1e6)


def macos_idle_s(ioreg_output: str) -> float | None:
    """From `ioreg -c IOHIDSystem`: "HIDIdleTime" = nanoseconds since the last input."""
    match = re.search(r'"HIDIdleTime"\s*=\s*(\d+)', ioreg_output)
    return int(match.group(1)) / 1e9 if match else None


def windows_idle_s() -> float | None:  # pragma: no cover - Windows only
    import ctypes

    class LastInput(ctypes.Structure):
        _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]

    info = LastInput()
    info.cbSize = ctypes.sizeof(info)
    if not ctypes.windll.user32.GetLastInputInfo(ctypes.byref(info)):  # type: ignore[attr-defined]
        return None
    ticks: int = ctypes.windll.kernel32.GetTickCount()  # type: ignore[attr-defined]
    return float((ticks - info.dwTime) & 0xFFFFFFFF) / 1000.0


def hottest_c(usage: dict[str, Any] | None) -> float | None:
    """The hottest GPU in a heartbeat's usage (`usage.gpus[].tempC`), if any says."""
    temps = [g["tempC"] for g in (usage or {}).get("gpus", []) if g.get("tempC") is not None]
    return max(temps) if temps else None


def reason_to_rest(
    prefs: dict[str, Any],
    now: time.struct_time,
    battery: bool | None,
    temp_c: float | None,
    resting: str | None,
    idle_s: float | None = None,
) -> str | None:
    """Why the worker must take no work now, in the marketplace's words, or None.
    `resting` is the reason it rests already (a hot GPU must cool by the margin)."""
    if not in_schedule(parse_schedule(prefs.get("schedule") or ""), now):
        return "outside the provider's schedule"
    if prefs.get("notOnBattery") and battery:
        return "on battery"
    idle_minutes = prefs.get("idleMinutes")
    if idle_minutes:
        if idle_s is None:
            return "cannot tell whether the computer is in use (idle-only is not supported here)"
        if idle_s < idle_minutes * 60:
            return "the computer is in use"
    ceiling = prefs.get("maxGpuTempC")
    if ceiling is not None and temp_c is not None:
        hot = resting is not None and resting.startswith("GPU at")
        if temp_c >= ceiling or (hot and temp_c > ceiling - HOT_MARGIN_C):
            return f"GPU at {temp_c:g} °C, its ceiling is {ceiling} °C"
    return None


# Each preference: its option, and for numbers the least and the most it may be.
OPTIONS = {
    "schedule": "--schedule",
    "notOnBattery": "--not-on-battery",
    "idleMinutes": "--idle-only",
    "maxGpus": "--max-gpus",
    "maxGpuTempC": "--max-gpu-temp",
    "maxCpuPercent": "--max-cpu-percent",
}
BOUNDS = {
    "idleMinutes": (0, 7 * 24 * 60),
    "maxGpus": (0, 64),
    "maxGpuTempC": (30, 120),
    "maxCpuPercent": (1, 100),
}


def check(prefs: dict[str, Any]) -> None:
    """PreferenceError, saying which and how to write it, for a preference that cannot
    be used (a hand-edited file may hold anything)."""
    schedule = prefs.get("schedule")
    if schedule is not None and not isinstance(schedule, str):
        raise PreferenceError("--schedule: write it as text such as 'mon-fri 18:00-08:00'")
    try:
        parse_schedule(schedule or "")
    except PreferenceError as exc:
        raise PreferenceError(f"--schedule: {exc}") from None
    if not isinstance(prefs.get("notOnBattery", False), bool):
        raise PreferenceError("--not-on-battery: notOnBattery must be true or false")
    for key, (least, most) in BOUNDS.items():
        value = prefs.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most
        ):
            raise PreferenceError(f"{OPTIONS[key]} must be between {least} and {most}")


def cpu_threads(prefs: dict[str, Any], threads: int) -> int | None:
    """How many of the machine's CPU threads jobs may use (`maxCpuPercent` of them, at
    least one), or None without a limit."""
    percent = prefs.get("maxCpuPercent")
    if not isinstance(percent, int) or not 0 < percent < 100:
        return None
    return max(1, threads * percent // 100)


def offered(report: dict[str, Any], prefs: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The machine as the worker offers it: the hardware report less the GPUs the provider
    keeps for itself (`maxGpus`: neither offered nor used) and with only the CPU threads
    jobs may use; and that many threads (None without a limit)."""
    most = prefs.get("maxGpus")
    if isinstance(most, int) and 0 <= most < len(report["gpus"]):
        report = {**report, "gpus": report["gpus"][:most]}
    cpu = report["cpu"]
    threads = cpu_threads(prefs, int(cpu.get("threads") or 1))
    if threads is not None:
        limited = {"threads": threads, "cores": min(cpu["cores"], threads)}
        report = {**report, "cpu": {**cpu, **limited}}
    return report, threads


def load(state_dir: str) -> dict[str, Any]:
    """The preferences kept in the state dir ({} if none, unreadable or unusable: the
    worker then works as if it had none, and says why once it checks them)."""
    try:
        return load_strict(state_dir)
    except PreferenceError:
        return {}


def load_strict(state_dir: str) -> dict[str, Any]:
    """The preferences kept in the state dir ({} if none); PreferenceError if the file is
    there but damaged or holds a preference that cannot be used."""
    path = os.path.join(state_dir, PREFERENCES_FILE)
    try:
        with open(path) as f:
            found = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PreferenceError(f"{path} cannot be read ({exc}): fix it, or --reset") from None
    if not isinstance(found, dict):
        raise PreferenceError(f"{path} is not a JSON object: fix it, or --reset")
    check(found)
    return found


def save(state_dir: str, prefs: dict[str, Any]) -> None:
    from qubix_cli.worker.state import write_private

    write_private(os.path.join(state_dir, PREFERENCES_FILE), json.dumps(prefs).encode())
