"""Python environments for `python` jobs: one per requirements hash, built in the
sandbox, cached on disk with a cap (least recently used go first), and reused.

A build is two steps, and no renter code runs in either:
1. `pip download --only-binary :all:` (with `--require-hashes` when the requirements
   carry hashes) fetches wheels from the package index into a fresh directory. Only pip
   runs here, in the sandbox with the network, seeing nothing of the provider's home. The
   requirements may hold pinned names only (`name==version`, extras, `--hash`): no URLs,
   paths or pip options, so pip reaches the index and nothing else.
2. `pip install --no-index` of exactly those wheels into the environment, in the sandbox
   *without* the network. Installing a wheel unpacks it; no setup script exists to run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from typing import Callable, List, Tuple

from qubix_cli.worker.sandbox import WORK

# name[extras]==version, then optional --hash=sha256:... options, nothing else.
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"
    r"==(?P<version>[A-Za-z0-9.!+_-]+)"
    r"(?P<hashes>(?:\s+--hash=sha256:[0-9a-f]{64})*)\s*$"
)
USED = ".used"  # touched each time an environment is used: the LRU order
Build = Callable[[List[str], str, bool], Tuple[int, str]]  # (pip args, build dir, network)


def pinned_requirements(text: str) -> list[str]:
    """The requirement lines of a requirements file, each `name==version` with optional
    extras and `--hash=sha256:...`; ValueError naming the first line that is anything
    else (a URL, a path, a pip option, a range). Comments and blank lines are dropped."""
    lines, pending = [], ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line:
            continue
        if not _PIN.match(line):
            raise ValueError(
                f"requirements line {number} ({raw.strip()[:80]!r}) is not a pinned "
                "requirement: write name==version (extras and --hash=sha256:... allowed; "
                "no URLs, paths or pip options)"
            )
        lines.append(" ".join(line.split()))
    if pending:
        raise ValueError("the requirements end with a line continuation")
    hashed = ["--hash=" in line for line in lines]
    if any(hashed) != all(hashed):
        raise ValueError("give a --hash for every requirement, or for none")
    return lines


def requirements_hash(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


class Envs:
    """The cache of built environments under `root`, at most `cap_bytes` on disk."""

    def __init__(self, root: str, cap_bytes: int) -> None:
        self.root, self.cap_bytes = root, cap_bytes
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, lines: list[str], build: Build) -> tuple[str, bool]:
        """The directory of the environment for these requirements, built with `build`
        unless cached; and whether it was cached. ValueError with pip's reason if it
        cannot be built."""
        key = requirements_hash(lines)
        target = os.path.join(self.root, key)
        with self._lock(key):
            cached = os.path.isdir(target)
            if not cached:
                self._build(lines, target, build)
            _touch(os.path.join(target, USED))
        self._trim(keep=target)
        return target, cached

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _build(self, lines: list[str], target: str, build: Build) -> None:
        work = f"{target}.building"
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(os.path.join(work, "wheels"))
        os.makedirs(os.path.join(work, "env"))
        try:
            with open(os.path.join(work, "requirements.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
            hashes = ["--require-hashes"] if "--hash=" in lines[0] else []
            at = WORK  # where the build dir is, as pip sees it
            download = ["download", "--only-binary", ":all:", *hashes, "-d", f"{at}/wheels"]
            install = ["install", "--no-index", "--find-links", f"{at}/wheels", *hashes]
            for step, network in ((download, True), (install + ["--target", f"{at}/env"], False)):
                argv = ["-m", "pip", "--isolated", "--no-cache-dir", "--disable-pip-version-check"]
                code, output = build([*argv, *step, "-r", f"{at}/requirements.txt"], work, network)
                if code != 0:
                    raise ValueError(_pip_reason(output))
            os.rename(os.path.join(work, "env"), target)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _trim(self, keep: str) -> None:
        """Remove the least recently used environments until the cache fits its cap."""
        envs = []
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if os.path.isdir(path) and not name.endswith(".building"):
                envs.append((_used_at(path), path, _size(path)))
        total = sum(size for _, _, size in envs)
        for _, path, size in sorted(envs):
            if total <= self.cap_bytes:
                break
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)
                total -= size


def _pip_reason(output: str) -> str:
    """pip's own words for why it failed, said plainly when it is a source-only package."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    reason = " ".join(errors)[-600:] or output.strip()[-600:] or "pip failed"
    if "No matching distribution" in reason or "from versions: none" in reason:
        return (
            f"no wheel for this machine ({reason}); packages that exist only as source "
            "distributions are refused, because building one runs its own setup code"
        )
    return f"the environment could not be built: {reason}"


def _touch(path: str) -> None:
    with open(path, "a"):
        pass
    now = time.time()
    os.utime(path, (now, now))


def _used_at(path: str) -> float:
    try:
        return os.stat(os.path.join(path, USED)).st_mtime
    except OSError:
        return 0.0


def _size(path: str) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total
