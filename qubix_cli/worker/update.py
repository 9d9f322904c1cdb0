"""Taking a signed update: download it from the worker's own coordinator, check its size,
SHA-256 and Ed25519 signature against the key the installer left (`update-key` in the
state dir), keep the running zipapp as `.prev`, put the new one in its place atomically,
and restart through a trial that rolls back a version that does not come up.

The trial is run by the previous (known good) code: `update-trial` starts the new version
with `--update-trial FILE`; that one registers, heartbeats once, writes FILE and exits.
Only then does the trial hand over to it for good. If it exits or stays silent longer than
the bound, the previous zipapp is put back and started with `--update-failed VERSION`, so
that the coordinator stops offering that version to this worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from typing import Any

from qubix_cli.worker import AGENT_VERSION, ed25519, state
from qubix_cli.worker.client import Client, Transient

log = logging.getLogger("qubix.worker")
KEY_FILE = "update-key"
TRIAL_FILE = "update-trial.json"
TRIAL_BOUND_MIN_S = 60.0


class Refused(Exception):
    """An update that failed a check: the running version carries on."""


def signed_message(version: str, sha256: str, size: int) -> bytes:
    """The bytes an update's signature covers (the coordinator signs the same)."""
    return f"qubix-worker-update\n{version}\n{sha256}\n{size}\n".encode()


def version_key(version: str) -> tuple[int, ...]:
    """`1.10.2` -> (1, 10, 2); a part that is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def older(version: str | None, than: str) -> bool:
    """Whether a version is older than `than` (an unknown one is)."""
    return version is None or version_key(version) < version_key(than)


def running_zipapp() -> str | None:
    """The zipapp this process runs from, or None (run from the `qubix` package)."""
    path = os.path.abspath(sys.argv[0])
    return path if path.endswith(".pyz") and zipfile.is_zipfile(path) else None


def update_key(state_dir: str) -> bytes | None:
    try:
        with open(os.path.join(state_dir, KEY_FILE)) as f:
            return bytes.fromhex(f.read().strip())
    except (OSError, ValueError):
        return None


def check(offer: dict[str, Any], data: bytes, key: bytes) -> None:
    """Refused unless `data` is the offered size, has the offered SHA-256, and the offer
    (version, SHA-256, size) is signed with `key`."""
    if len(data) != offer["size"]:
        raise Refused(f"it is {len(data)} bytes, not the {offer['size']} offered")
    digest = hashlib.sha256(data).hexdigest()
    if digest != offer["sha256"]:
        raise Refused(f"its SHA-256 is {digest}, not the {offer['sha256']} offered")
    message = signed_message(offer["version"], offer["sha256"], offer["size"])
    try:
        signature = bytes.fromhex(offer["signature"])
    except ValueError:
        signature = b""
    if not ed25519.verify(key, message, signature):
        raise Refused("its signature does not check against this worker's update key")


def fetch(client: Client, offer: dict[str, Any], target: str) -> bytes:
    """Download the offered zipapp to `target`; its bytes (Refused if it cannot be had)."""
    try:
        status, answer = client.download(offer["url"], target)
    except Transient as exc:
        raise Refused(f"it could not be downloaded ({exc})") from exc
    if status != 200:
        raise Refused(f"the download answered {status}")
    with open(target, "rb") as f:
        return f.read(offer["size"] + 1)


def install(client: Client, offer: dict[str, Any], pyz: str, state_dir: str) -> None:
    """Check the offered update and put it in place of `pyz` (kept as `pyz.prev`)."""
    key = update_key(state_dir)
    if key is None:
        raise Refused(f"there is no update key in {state_dir} (run the installer again)")
    new = pyz + ".new"
    try:
        check(offer, fetch(client, offer, new), key)
        os.chmod(new, 0o644)
        shutil.copy2(pyz, pyz + ".prev.tmp")
        os.replace(pyz + ".prev.tmp", pyz + ".prev")
        os.replace(new, pyz)
    except BaseException:
        for leftover in (new, pyz + ".prev.tmp"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise


def restart(pyz: str, run_args: list[str], version: str, interval_s: float) -> None:
    """Hand over to the new version through a trial run by the previous code."""
    bound = max(TRIAL_BOUND_MIN_S, 2 * interval_s)
    trial = {"version": version, "from": AGENT_VERSION, "boundS": bound}
    state.write_private(os.path.join(state.home(), TRIAL_FILE), json.dumps(trial).encode())
    logging.shutdown()
    argv = [sys.executable, pyz + ".prev", "update-trial", pyz, *run_args]
    _exec(argv)


def run_trial(pyz: str, run_args: list[str]) -> int:
    """`update-trial`: start the new version on trial; keep it if it registers and
    heartbeats within the bound, else put the previous one back. Never returns on Unix."""
    home = state.home()
    try:
        with open(os.path.join(home, TRIAL_FILE)) as f:
            trial = json.load(f)
    except (OSError, ValueError):
        trial = {"version": "unknown", "boundS": TRIAL_BOUND_MIN_S}
    ok = os.path.join(home, "update-ok")
    if os.path.exists(ok):
        os.unlink(ok)
    child = subprocess.Popen([sys.executable, pyz, *run_args, "--update-trial", ok])
    deadline = time.monotonic() + float(trial["boundS"])
    while time.monotonic() < deadline and child.poll() is None and not os.path.exists(ok):
        time.sleep(0.2)
    if os.path.exists(ok):
        child.wait(30)
        log.info("the update to %s came up; running it", trial["version"])
        _exec([sys.executable, pyz, *run_args])
    if child.poll() is None:
        child.kill()
        child.wait()
    log.warning(
        "the update to %s did not come up within %g s; back to %s",
        trial["version"],
        trial["boundS"],
        AGENT_VERSION,
    )
    shutil.copy2(pyz + ".prev", pyz + ".rollback")
    os.replace(pyz + ".rollback", pyz)
    _exec([sys.executable, pyz, *run_args, "--update-failed", str(trial["version"])])
    return 1  # only where exec returns (never on Unix)


def _exec(argv: list[str]) -> None:
    """Become `argv` (on Windows, which cannot, start it and exit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":
        subprocess.Popen(argv)
        os._exit(0)
    os.execv(argv[0], argv)
