"""The command examples in docs/ are run, in order, against a real `qubix serve`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import API_KEY, ServerProcess

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def to_script(markdown: str) -> str:
    """Each command runs with its output kept; `# => text` asserts that output has text."""
    lines = ["set -euo pipefail", "out="]
    for block in BLOCK.findall(markdown):
        for line in block.splitlines():
            if line.startswith("# => "):
                expected = shlex.quote(line[5:])
                lines.append(
                    f'grep -qF -- {expected} <<<"$out" || '
                    f'{{ echo "expected "{expected}" in: $out" >&2; exit 1; }}'
                )
            elif re.match(r"^[A-Z_]+=", line):
                lines.append(line)
            elif line.strip() and not line.startswith("#"):
                # A failing command is judged by its expected output, like any other.
                lines.append(f'out=$({line} 2>&1) || true; printf "%s\\n" "$out"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "page",
    ["api.md", "cli.md", "jobs.md", "worker.md", "accounts.md", "billing.md", "installing.md"],
)
def test_the_examples_in_docs_run(page: str, server: ServerProcess, tmp_path: Path) -> None:
    script = to_script((ROOT / "docs" / page).read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUBIX_")}
    env.update(QUBIX_SERVER=server.url, QUBIX_API_KEY=API_KEY, COLUMNS="200")
    env["QUBIX_HOME"] = str(tmp_path / "worker-home")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "python -m pytest"
    assert "\npython -m pytest\n" in readme
