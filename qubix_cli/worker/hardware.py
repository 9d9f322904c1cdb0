"""Honest hardware detection: every probe runs in a subprocess with a timeout, and every
failure becomes a warning in the report. No GPU found means an empty list, never a guess."""

from __future__ import annotations

import csv
import glob
import json
import os
import platform
import re
import shutil
import subprocess
from typing import Any, Dict

try:
    import psutil
except ImportError:  # the worker runs without it
    psutil = None  # type: ignore[assignment]

PROBE_TIMEOUT_S = 15.0
NVIDIA_FIELDS = [
    "index",
    "uuid",
    "name",
    "memory.total",
    "driver_version",
    "pci.bus_id",
    "compute_cap",
]
_MISSING = ("", "[N/A]", "N/A", "[Not Supported]", "Not Supported")

Gpu = Dict[str, Any]


def run_tool(argv: list[str], timeout: float = PROBE_TIMEOUT_S) -> tuple[int, str] | None:
    """Run a tool and return (exit code, stdout + stderr), or None if it is not installed."""
    path = shutil.which(argv[0])
    if path is None:
        return None
    completed = subprocess.run(
        [path, *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return completed.returncode, completed.stdout.decode("utf-8", "replace")


def _probe(argv: list[str], warnings: list[str]) -> str | None:
    """Run a probe; a missing tool is silent, any failure is a warning."""
    try:
        result = run_tool(argv)
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.append(f"{argv[0]} failed: {exc}")
        return None
    if result is None:
        return None
    code, output = result
    if code != 0:
        warnings.append(f"{' '.join(argv[:2])} exited with {code}: {output.strip()[:200]}")
        return None
    return output


def _value(text: str | None) -> str | None:
    text = (text or "").strip()
    return None if text in _MISSING else text


def _int(text: str | None) -> int | None:
    value = _value(text)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


# -- NVIDIA -------------------------------------------------------------------------------


def nvidia_gpus(warnings: list[str]) -> list[Gpu]:
    """Every NVIDIA GPU from `nvidia-smi`, dropping query fields an old driver rejects."""
    fields = list(NVIDIA_FIELDS)
    while fields:
        argv = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        try:
            result = run_tool(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            warnings.append(f"nvidia-smi failed: {exc}")
            return []
        if result is None:
            return []
        code, output = result
        rejected = re.search(r'Field "([^"]+)" is not a valid field to query', output)
        if code != 0 and rejected and rejected.group(1) in fields:
            warnings.append(f"this driver's nvidia-smi does not know {rejected.group(1)!r}")
            fields.remove(rejected.group(1))
            continue
        if code != 0:
            warnings.append(f"nvidia-smi exited with {code}: {output.strip()[:200]}")
            return []
        cuda = _cuda_version(warnings)
        return [_nvidia_row(dict(zip(fields, row)), cuda) for row in _csv_rows(output)]
    return []


def _csv_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.strip()]
    return [row for row in csv.reader(lines, skipinitialspace=True) if row]


def _nvidia_row(row: dict[str, str], cuda: str | None) -> Gpu:
    return {
        "vendor": "nvidia",
        "model": _value(row.get("name")) or "NVIDIA GPU",
        "vramMb": _int(row.get("memory.total")) or 0,
        "driver": _value(row.get("driver_version")),
        "cudaVersion": cuda,
        "computeCapability": _value(row.get("compute_cap")),
        "uuid": _value(row.get("uuid")),
        "busId": _value(row.get("pci.bus_id")),
    }


def _cuda_version(warnings: list[str]) -> str | None:
    """The CUDA version the driver supports, from the `nvidia-smi` header."""
    output = _probe(["nvidia-smi"], warnings) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", output)
    return match.group(1) if match else None


# -- AMD ----------------------------------------------------------------------------------


def amd_gpus(warnings: list[str], sysfs: str = "/sys") -> list[Gpu]:
    """AMD GPUs from `rocm-smi --json`, else from Linux sysfs."""
    output = _probe(
        ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--showbus", "--json"],
        warnings,
    )
    if output:
        try:
            return _rocm_gpus(json.loads(output))
        except (ValueError, AttributeError, TypeError) as exc:
            warnings.append(f"rocm-smi printed something unexpected: {exc}")
    return sysfs_amd_gpus(sysfs)


def _rocm_gpus(data: dict[str, Any]) -> list[Gpu]:
    gpus = []
    for card, info in sorted(data.items()):
        if not card.startswith("card"):
            continue
        fields = {k.lower(): v for k, v in info.items()}
        vram = _int(fields.get("vram total memory (b)"))
        gpus.append(
            {
                "vendor": "amd",
                "model": _value(fields.get("card series"))
                or _value(fields.get("card model"))
                or "AMD GPU",
                "vramMb": (vram or 0) // 2**20,
                "busId": _value(fields.get("pci bus")),
            }
        )
    return gpus


def sysfs_amd_gpus(sysfs: str = "/sys") -> list[Gpu]:
    gpus = []
    for card in sorted(glob.glob(os.path.join(sysfs, "class", "drm", "card*"))):
        if not re.fullmatch(r"card\d+", os.path.basename(card)):
            continue  # connectors such as card0-DP-1
        device = os.path.join(card, "device")
        if read_file(os.path.join(device, "vendor")) != "0x1002":
            continue
        vram = _int(read_file(os.path.join(device, "mem_info_vram_total")))
        device_id = read_file(os.path.join(device, "device")) or "unknown"
        gpus.append(
            {
                "vendor": "amd",
                "model": f"AMD GPU (device {device_id})",
                "vramMb": (vram or 0) // 2**20,
                "busId": os.path.basename(os.path.realpath(device)),
            }
        )
    return gpus


def read_file(path: str) -> str | None:
    """A small file's text, stripped (sysfs, /proc), or None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# -- Apple --------------------------------------------------------------------------------


def apple_gpus(warnings: list[str]) -> list[Gpu]:
    """GPUs from `system_profiler`; Apple silicon's unified memory is reported as shared."""
    output = _probe(["system_profiler", "SPDisplaysDataType", "-json"], warnings)
    if not output:
        return []
    try:
        items = json.loads(output).get("SPDisplaysDataType", [])
    except (ValueError, AttributeError) as exc:
        warnings.append(f"system_profiler printed something unexpected: {exc}")
        return []
    memory_mb = (_int(_probe(["sysctl", "-n", "hw.memsize"], warnings)) or 0) // 2**20
    return [_apple_gpu(item, memory_mb) for item in items if isinstance(item, dict)]


def _apple_gpu(item: dict[str, Any], memory_mb: int) -> Gpu:
    model = str(item.get("sppci_model") or item.get("_name") or "GPU")
    vendor_text = f"{item.get('spdisplays_vendor', '')} {model}".lower()
    vendor = next(
        (v for v in ("apple", "amd", "nvidia", "intel") if v in vendor_text),
        "amd" if "radeon" in vendor_text else "other",
    )
    dedicated = _size_mb(item.get("spdisplays_vram") or item.get("_spdisplays_vram"))
    shared = _size_mb(item.get("spdisplays_vram_shared"))
    if dedicated:
        return {"vendor": vendor, "model": model, "vramMb": dedicated}
    # No dedicated VRAM: Apple silicon (unified memory) or an integrated GPU.
    return {"vendor": vendor, "model": model, "vramMb": shared or memory_mb, "sharedMemory": True}


def _size_mb(text: Any) -> int | None:
    match = re.match(r"\s*([0-9.]+)\s*(GB|MB)", str(text or ""))
    if not match:
        return None
    return int(float(match.group(1)) * (1024 if match.group(2) == "GB" else 1))


# -- Windows ------------------------------------------------------------------------------

_CIM = (
    "Get-CimInstance Win32_VideoController | "
    "Select-Object Name,AdapterRAM,DriverVersion,PNPDeviceID | ConvertTo-Json"
)


def windows_gpus(warnings: list[str]) -> list[Gpu]:
    output = _probe(["powershell", "-NoProfile", "-NonInteractive", "-Command", _CIM], warnings)
    if not output:
        return []
    try:
        data = json.loads(output)
    except ValueError as exc:
        warnings.append(f"PowerShell printed something unexpected: {exc}")
        return []
    controllers = data if isinstance(data, list) else [data]
    gpus = [_cim_gpu(c) for c in controllers if isinstance(c, dict) and c.get("Name")]
    if gpus:
        warnings.append("VRAM from Windows (CIM) is capped at 4 GB; install NVIDIA drivers")
    return gpus


def _cim_gpu(controller: dict[str, Any]) -> Gpu:
    name = str(controller["Name"])
    lowered = name.lower()
    vendor = next((v for v in ("nvidia", "amd", "intel") if v in lowered), "other")
    if vendor == "other" and "radeon" in lowered:
        vendor = "amd"
    return {
        "vendor": vendor,
        "model": name,
        "vramMb": (_int(str(controller.get("AdapterRAM") or 0)) or 0) // 2**20,
        "driver": _value(str(controller.get("DriverVersion") or "")),
    }


# -- usage, for heartbeats ------------------------------------------------------------


def usage() -> dict[str, Any]:
    """CPU and RAM use for a heartbeat (psutil when present, else /proc, else zero), and
    each GPU's where `nvidia-smi` reports it."""
    used: dict[str, Any]
    if psutil is not None:
        used = {
            "cpuPercent": float(psutil.cpu_percent(interval=None)),
            "ramPercent": float(psutil.virtual_memory().percent),
        }
    else:
        used = {"cpuPercent": _proc_cpu_percent(), "ramPercent": _proc_ram_percent()}
    gpus = nvidia_usage()
    if gpus:
        used["gpus"] = gpus
    return used


NVIDIA_USAGE_FIELDS = "index,utilization.gpu,memory.used,temperature.gpu"


def nvidia_usage() -> list[dict[str, Any]]:
    """Each NVIDIA GPU's use (percent busy, memory used, temperature); [] without
    `nvidia-smi` or when it fails. Values it cannot give, or that make no sense, are left
    out: a heartbeat must never be refused for a tool's odd output."""
    try:
        result = run_tool(
            ["nvidia-smi", f"--query-gpu={NVIDIA_USAGE_FIELDS}", "--format=csv,noheader,nounits"],
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if result is None or result[0] != 0:
        return []
    gpus = []
    for row in _csv_rows(result[1]):
        index = _int(row[0]) if len(row) == 4 else None
        if index is None or not 0 <= index <= 15:
            continue
        entry: dict[str, Any] = {"index": index}
        for key, text, low, high in (
            ("percent", row[1], 0, 100),
            ("memUsedMb", row[2], 0, 4_194_304),
            ("tempC", row[3], -50, 200),
        ):
            value = _int(text)
            if value is not None and low <= value <= high:
                entry[key] = value
        gpus.append(entry)
    return gpus[:16]


_last_cpu: dict[str, float] = {}


def _proc_cpu_percent() -> float:
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle, total = fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)
    last_idle, last_total = _last_cpu.get("idle", idle), _last_cpu.get("total", total)
    _last_cpu.update(idle=idle, total=total)
    busy = (total - last_total) - (idle - last_idle)
    return (
        round(max(0.0, min(100.0, 100 * busy / (total - last_total))), 1)
        if total > last_total
        else 0.0
    )


def _proc_ram_percent() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        total = float(info["MemTotal"].split()[0])
        available = float(info["MemAvailable"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0.0
    return round(100 * (1 - available / total), 1)


# -- the machine --------------------------------------------------------------------------


def detect_gpus(warnings: list[str], system: str | None = None) -> list[Gpu]:
    system = system or platform.system()
    gpus = nvidia_gpus(warnings)
    if system == "Linux":
        gpus += amd_gpus(warnings)
    elif system == "Darwin":
        gpus += apple_gpus(warnings)
    elif system == "Windows" and not gpus:
        gpus += windows_gpus(warnings)
    if not gpus:
        warnings.append("no GPU found: install the GPU driver and its tool (nvidia-smi, rocm-smi)")
    return [{k: v for k, v in g.items() if v is not None} for g in gpus]


def cpu_model(warnings: list[str]) -> str:
    text = read_file("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if match:
            return match.group(1).strip()
    if platform.system() == "Darwin":
        brand = _probe(["sysctl", "-n", "machdep.cpu.brand_string"], warnings)
        if brand and brand.strip():
            return brand.strip()
    if platform.system() == "Windows":
        name = _windows_cpu_name()
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown CPU"


def _windows_cpu_name() -> str | None:
    try:
        import winreg  # type: ignore[import-not-found,unused-ignore]

        key = winreg.OpenKey(  # type: ignore[attr-defined,unused-ignore]
            winreg.HKEY_LOCAL_MACHINE,  # type: ignore[attr-defined,unused-ignore]
            r"HARDWARE\DESCRIPTION\System\CentralProcessor\0",
        )
        return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()  # type: ignore[attr-defined,unused-ignore]
    except (ImportError, OSError):
        return None


def physical_cores() -> int:
    if psutil is not None:
        cores = psutil.cpu_count(logical=False)
        if cores:
            return int(cores)
    text = read_file("/proc/cpuinfo") or ""
    pairs = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", text))
    return len(pairs) or os.cpu_count() or 1


def ram_mb(warnings: list[str]) -> int:
    if psutil is not None:
        return int(psutil.virtual_memory().total // 2**20)
    match = re.search(r"^MemTotal:\s*(\d+) kB", read_file("/proc/meminfo") or "", re.M)
    if match:
        return int(match.group(1)) // 1024
    if platform.system() == "Darwin":
        return (_int(_probe(["sysctl", "-n", "hw.memsize"], warnings)) or 0) // 2**20
    warnings.append("could not read the amount of RAM")
    return 0


def detect(system: str | None = None) -> dict[str, Any]:
    """The full hardware report: gpus, cpu, ramMb, storage, os and the warnings."""
    warnings: list[str] = []
    disk = shutil.disk_usage(os.path.expanduser("~"))
    return {
        "gpus": detect_gpus(warnings, system),
        "cpu": {
            "model": cpu_model(warnings)[:256],
            "cores": physical_cores(),
            "threads": os.cpu_count() or 1,
            "arch": platform.machine()[:32] or None,
        },
        "ramMb": ram_mb(warnings),
        "storage": {
            "totalGb": round(disk.total / 2**30, 1),
            "freeGb": round(disk.free / 2**30, 1),
        },
        "os": {"system": platform.system() or "unknown", "release": platform.release()[:128]},
        "warnings": warnings,
    }
