"""The worker's rules: standard library only (psutil optional), Python 3.8+, and the zipapp
runs the very same code."""

from __future__ import annotations

import ast
import glob
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qubix_cli.installer.pack import PACKAGE_ROOT, build_worker_pyz, worker_files

WORKER = PACKAGE_ROOT / "worker"


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(module, inside a try block) for every import in a module."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_try: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, in_try) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((child.module or "", in_try))
            visit(child, in_try or isinstance(child, ast.Try))

    visit(tree, False)
    return found


def test_the_worker_imports_only_the_standard_library_and_itself() -> None:
    for path in sorted(WORKER.glob("*.py")):
        for module, in_try in _imports(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if module.startswith("qubix_cli.worker") or module == "__future__":
                continue
            if top in ("psutil", "torch"):  # used when present (torch: the GPU engine)
                assert in_try, f"{path.name}: {top} must be optional (inside try/except)"
                continue
            if top in ("winreg",):
                continue  # Windows only, imported where it is used
            assert top in sys.stdlib_module_names, f"{path.name} imports {module}"


def test_the_worker_needs_nothing_newer_than_python_3_8() -> None:
    vermin = Path(sys.executable).parent / "vermin"
    result = subprocess.run(
        [str(vermin), "-t=3.8-", "--no-tips", "--violations", str(WORKER)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_zipapp_holds_the_package_byte_for_byte() -> None:
    data = build_worker_pyz()
    assert data == build_worker_pyz()  # reproducible
    assert data.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert "__main__.py" in names
        for path in WORKER.glob("*.py"):
            assert archive.read(f"qubix_cli/worker/{path.name}") == path.read_bytes()
    assert len(names) == len(worker_files())


def _python38() -> str | None:
    """A working Python 3.8, if this machine has one (on PATH or under pyenv)."""
    candidates = [
        shutil.which("python3.8"),
        *glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")),
    ]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode == 0:
            return candidate
    return None


@pytest.mark.parametrize("python", ["current", "3.8"])
def test_the_zipapp_runs_stand_alone(python: str, tmp_path: Path) -> None:
    interpreter = sys.executable if python == "current" else _python38()
    if interpreter is None:
        pytest.skip("Python 3.8 is not installed here")
    pyz = tmp_path / "qubix_worker.pyz"
    pyz.write_bytes(build_worker_pyz())
    # -I: isolated, so that nothing but the archive can be imported from the project
    result = subprocess.run(
        [interpreter, "-I", str(pyz), "detect", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"cpu"' in result.stdout
    version = subprocess.run(
        [interpreter, "-I", str(pyz), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == "qubix-worker 0.1.0"


def test_the_agent_version_is_the_package_version() -> None:
    from qubix_cli import __version__
    from qubix_cli.worker import AGENT_VERSION

    assert AGENT_VERSION == __version__
