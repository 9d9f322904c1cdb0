"""The coordinator's and CLI's Python floor (pyproject's `requires-python`) is one that the
code runs on: nothing outside `worker/` needs a newer Python (the worker keeps its own
3.8 check, tests/worker/test_rules.py), and ruff and the README say the same floor."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from qubix_cli.installer.pack import PACKAGE_ROOT

ROOT = PACKAGE_ROOT.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def floor() -> str:
    """`3.11` of `requires-python = ">=3.11"`."""
    found = re.fullmatch(r">=(3\.\d+)", PROJECT["project"]["requires-python"])
    assert found, PROJECT["project"]["requires-python"]
    return found.group(1)


def test_the_floor_is_311_where_timeouts_and_datetime_utc_are_what_the_code_expects() -> None:
    # 3.10's asyncio.TimeoutError is not the builtin TimeoutError the long-polls catch
    assert tuple(int(n) for n in floor().split(".")) >= (3, 11)


def test_nothing_outside_the_worker_needs_a_python_newer_than_the_floor() -> None:
    every = sorted(PACKAGE_ROOT.rglob("*.py"))
    files = [str(p) for p in every if p.relative_to(PACKAGE_ROOT).parts[0] != "worker"]
    assert len(files) > 20
    vermin = Path(sys.executable).parent / "vermin"
    result = subprocess.run(
        [str(vermin), f"-t={floor()}-", "--no-tips", "--violations", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_and_the_readme_say_the_same_floor() -> None:
    ruff = PROJECT["tool"]["ruff"]
    assert ruff["target-version"] == "py" + floor().replace(".", "")
    assert ruff["per-file-target-version"] == {"qubix_cli/worker/**": "py38"}
    assert f"Python {floor()} or newer" in (ROOT / "README.md").read_text()
