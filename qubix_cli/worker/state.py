"""Where the worker keeps its state (~/.qubix or QUBIX_HOME), its identity and its token."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

CREDENTIALS = "credentials.json"
WORKER_ID_FILE = "worker-id"
STOPPED_FILE = "stopped"  # why the worker last stopped with an error
PAUSE_FILE = "paused.json"  # `pause`: {"until": unix time or null, "handBack": bool}


def home() -> str:
    """The worker's state directory, created private (0700)."""
    path = os.environ.get("QUBIX_HOME") or os.path.join(os.path.expanduser("~"), ".qubix")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def write_private(path: str, data: bytes) -> None:
    """Write a file readable only by its owner (0600), atomically and durably."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def default_worker_id(state_dir: str) -> str:
    """This machine's worker id: random (64 bits, so nobody can guess it and register it
    first), made once and kept in the state dir, so it survives restarts and upgrades. An
    install from before keeps the id it registered under (its credentials name it)."""
    path = os.path.join(state_dir, WORKER_ID_FILE)
    try:
        with open(path) as f:
            saved = f.read().strip()
        if saved:
            return saved
    except OSError:
        pass
    registered = (load_credentials(state_dir) or {}).get("workerId")
    chosen = registered if isinstance(registered, str) and registered else None
    chosen = chosen or "qx-" + secrets.token_hex(8)
    write_private(path, chosen.encode())
    return chosen


def load_credentials(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, CREDENTIALS)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def saved_token(state_dir: str, worker_id: str, server: str) -> str | None:
    """The stored token, if it was issued to `worker_id` by `server`."""
    saved = load_credentials(state_dir)
    if saved and saved.get("workerId") == worker_id and saved.get("server") == server:
        token = saved.get("token")
        return token if isinstance(token, str) else None
    return None


def save_credentials(state_dir: str, worker_id: str, server: str, token: str) -> None:
    body = {"workerId": worker_id, "server": server, "token": token}
    write_private(os.path.join(state_dir, CREDENTIALS), json.dumps(body).encode())


def save_stop_reason(state_dir: str, reason: str) -> None:
    write_private(os.path.join(state_dir, STOPPED_FILE), reason.encode())


def clear_stop_reason(state_dir: str) -> None:
    try:
        os.unlink(os.path.join(state_dir, STOPPED_FILE))
    except OSError:
        pass


def stop_reason(state_dir: str, since: float) -> str | None:
    """Why the worker stopped with an error at `since` or later, or None."""
    path = os.path.join(state_dir, STOPPED_FILE)
    try:
        if os.stat(path).st_mtime < since:
            return None
        with open(path) as f:
            return f.read().strip() or "it stopped"
    except OSError:
        return None


def pause(state_dir: str, until: float | None, hand_back: bool) -> None:
    """Ask the running worker (which watches this file) to take no jobs until `until`
    (None: until `resume`); with `hand_back`, to hand its running jobs back too."""
    body = {"until": until, "handBack": hand_back}
    write_private(os.path.join(state_dir, PAUSE_FILE), json.dumps(body).encode())


def resume(state_dir: str) -> bool:
    """End a pause; whether there was one."""
    try:
        os.unlink(os.path.join(state_dir, PAUSE_FILE))
    except FileNotFoundError:
        return False
    return True


def paused(state_dir: str, now: float) -> dict[str, Any] | None:
    """The pause in force now, if any (one whose time is up is removed)."""
    path = os.path.join(state_dir, PAUSE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    until = found.get("until")
    if isinstance(until, (int, float)) and until <= now:
        resume(state_dir)
        return None
    return found
