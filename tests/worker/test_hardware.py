"""Hardware detection with fake tools on PATH that print outputs captured from real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qubix_cli.worker import hardware
from tests.worker.fakes import fake_tool, nvidia, old_nvidia, path_with


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", path_with(bin_dir))
    return bin_dir


def test_two_nvidia_gpus(fakebin: Path) -> None:
    nvidia(fakebin, "nvidia-smi-2gpu.csv")
    warnings: list[str] = []
    gpus = hardware.nvidia_gpus(warnings)
    assert warnings == []
    assert [g["model"] for g in gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"]
    first = gpus[0]
    assert first["vramMb"] == 24564 and first["driver"] == "550.54.14"
    assert first["cudaVersion"] == "12.4" and first["computeCapability"] == "8.9"
    assert first["uuid"].startswith("GPU-5f3c") and first["busId"] == "00000000:01:00.0"


def test_na_values_become_null_not_errors(fakebin: Path) -> None:
    nvidia(fakebin, "nvidia-smi-na.csv")
    warnings: list[str] = []
    (gpu,) = hardware.nvidia_gpus(warnings)
    assert gpu["model"] == "NVIDIA GB10" and gpu["vramMb"] == 0
    assert gpu["computeCapability"] == "12.1"


def test_an_old_driver_that_rejects_compute_cap_still_reports_its_gpus(fakebin: Path) -> None:
    old_nvidia(fakebin)
    warnings: list[str] = []
    gpus = hardware.nvidia_gpus(warnings)
    assert [g["model"] for g in gpus] == ["Tesla K80", "Tesla K80"]
    assert gpus[0]["computeCapability"] is None and gpus[0]["cudaVersion"] == "11.4"
    assert any("compute_cap" in w for w in warnings)


def test_a_failing_nvidia_smi_is_a_warning(fakebin: Path) -> None:
    fake_tool(fakebin, "nvidia-smi", [("", 9, "nvidia-smi-header.txt")])
    warnings: list[str] = []
    assert hardware.nvidia_gpus(warnings) == []
    assert any("nvidia-smi exited with 9" in w for w in warnings)


def test_amd_from_rocm_smi(fakebin: Path) -> None:
    fake_tool(fakebin, "rocm-smi", [("--json", 0, "rocm-smi.json")])
    warnings: list[str] = []
    (gpu,) = hardware.amd_gpus(warnings, sysfs=str(fakebin / "nosys"))
    assert gpu == {
        "vendor": "amd",
        "model": "Radeon RX 7900 XT",
        "vramMb": 20464,
        "busId": "0000:03:00.0",
    }


def test_amd_from_sysfs_when_rocm_smi_is_missing(fakebin: Path, tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    pci = sysfs / "devices" / "pci0000:00" / "0000:03:00.0"
    pci.mkdir(parents=True)
    (pci / "vendor").write_text("0x1002\n")
    (pci / "device").write_text("0x73bf\n")
    (pci / "mem_info_vram_total").write_text(str(16 * 2**30) + "\n")
    drm = sysfs / "class" / "drm"
    (drm / "card1").mkdir(parents=True)
    (drm / "card1" / "device").symlink_to(pci)
    (drm / "card1-DP-1").mkdir()
    intel = sysfs / "devices" / "pci0000:00" / "0000:00:02.0"
    intel.mkdir()
    (intel / "vendor").write_text("0x8086\n")
    (drm / "card0").mkdir()
    (drm / "card0" / "device").symlink_to(intel)
    gpus = hardware.amd_gpus([], sysfs=str(sysfs))
    assert gpus == [
        {
            "vendor": "amd",
            "model": "AMD GPU (device 0x73bf)",
            "vramMb": 16384,
            "busId": "0000:03:00.0",
        }
    ]


def test_apple_silicon_memory_is_shared(fakebin: Path) -> None:
    fake_tool(fakebin, "system_profiler", [("SPDisplaysDataType", 0, "system_profiler-m3.json")])
    (fakebin / "memsize").write_text("38654705664\n")
    fake_tool(fakebin, "sysctl", [("hw.memsize", 0, str(fakebin / "memsize"))])
    gpus = hardware.detect_gpus([], system="Darwin")
    assert gpus == [
        {"vendor": "apple", "model": "Apple M3 Pro", "vramMb": 36864, "sharedMemory": True}
    ]


def test_an_intel_mac_with_a_discrete_gpu(fakebin: Path) -> None:
    fake_tool(fakebin, "system_profiler", [("", 0, "system_profiler-intel-amd.json")])
    gpus = hardware.apple_gpus([])
    assert gpus[0] == {
        "vendor": "intel",
        "model": "Intel UHD Graphics 630",
        "vramMb": 1536,
        "sharedMemory": True,
    }
    assert gpus[1] == {"vendor": "amd", "model": "AMD Radeon Pro 5300M", "vramMb": 4096}


def test_windows_video_controllers_from_cim() -> None:
    controllers = [
        {"Name": "AMD Radeon RX 6600", "AdapterRAM": 4293918720, "DriverVersion": "31.0.21912.14"},
        {"Name": "Intel(R) UHD Graphics 770", "AdapterRAM": 2147479552, "DriverVersion": None},
    ]
    gpus = [hardware._cim_gpu(c) for c in controllers]
    assert gpus[0] == {
        "vendor": "amd",
        "model": "AMD Radeon RX 6600",
        "vramMb": 4095,
        "driver": "31.0.21912.14",
    }
    assert gpus[1]["vendor"] == "intel" and gpus[1]["driver"] is None


def test_no_tools_at_all_means_no_gpu_and_a_warning(fakebin: Path) -> None:
    warnings: list[str] = []
    assert hardware.detect_gpus(warnings, system="Linux") == []
    assert any("no GPU found" in w for w in warnings)


def _detect_json(fakebin: Path, tmp_path: Path) -> dict[str, object]:
    env = {**os.environ, "PATH": path_with(fakebin), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "qubix_cli", "worker", "detect", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_worker_detect_json_reports_the_machine(fakebin: Path, tmp_path: Path) -> None:
    nvidia(fakebin, "nvidia-smi-2gpu.csv")
    report = _detect_json(fakebin, tmp_path)
    gpus = report["gpus"]
    assert isinstance(gpus, list) and len(gpus) == 2
    cpu = report["cpu"]
    assert isinstance(cpu, dict) and cpu["cores"] >= 1 and cpu["model"]
    assert report["ramMb"] > 0  # type: ignore[operator]
    assert report["os"] == {"system": "Linux", "release": os.uname().release}


def test_worker_detect_without_a_gpu_invents_nothing(fakebin: Path, tmp_path: Path) -> None:
    report = _detect_json(fakebin, tmp_path)
    assert report["gpus"] == []
    assert any("no GPU found" in w for w in report["warnings"])  # type: ignore[attr-defined]


def test_cpu_model_comes_from_proc_cpuinfo() -> None:
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    if not names:
        pytest.skip("this CPU's /proc/cpuinfo has no model name line")
    expected = names[0]
    assert hardware.cpu_model([]) == expected
