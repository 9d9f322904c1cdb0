"""Fake hardware tools: small scripts on PATH that print captured outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

_SCRIPT = """#!{python}
import json, sys
args = " ".join(sys.argv[1:])
for needle, code, path in json.loads({rules!r}):
    if needle in args:
        if path:
            sys.stdout.write(open(path).read())
        else:
            sys.stdout.write({refusal!r})
        sys.exit(code)
sys.exit(9)
"""


def fake_tool(bin_dir: Path, name: str, rules: list[tuple[str, int, str | None]]) -> None:
    """A tool that, for the first rule whose text is in its arguments, prints that fixture
    (or, for None, an old driver's refusal of compute_cap) and exits with that code."""
    bin_dir.mkdir(exist_ok=True)
    resolved = [(needle, code, str(FIXTURES / f) if f else None) for needle, code, f in rules]
    refusal = 'Field "compute_cap" is not a valid field to query.\n\n'
    script = _SCRIPT.format(python=sys.executable, rules=json.dumps(resolved), refusal=refusal)
    path = bin_dir / name
    path.write_text(script)
    path.chmod(0o755)


def path_with(bin_dir: Path) -> str:
    """PATH with the fakes first and without any real GPU tools (the system dirs only)."""
    return os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])


def nvidia(
    bin_dir: Path, csv: str, header: str = "nvidia-smi-header.txt", usage: str | None = None
) -> None:
    """`usage`: what it prints for the heartbeat's per-GPU query (else the detection CSV,
    which the worker does not take for usage)."""
    rules: list[tuple[str, int, str | None]] = [("--query-gpu", 0, csv), ("", 0, header)]
    if usage:
        rules.insert(0, ("utilization.gpu", 0, usage))
    fake_tool(bin_dir, "nvidia-smi", rules)


def old_nvidia(bin_dir: Path) -> None:
    fake_tool(
        bin_dir,
        "nvidia-smi",
        [
            ("compute_cap", 2, None),
            ("--query-gpu", 0, "nvidia-smi-470.csv"),
            ("", 0, "nvidia-smi-470-header.txt"),
        ],
    )
