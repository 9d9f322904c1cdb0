"""CLI settings: flag > environment (QUBIX_SERVER, QUBIX_API_KEY) > the config file in the
platform's config dir > the default; and a small state file (the last worker seen)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs

from qubix_cli.errors import QubixError

DEFAULT_SERVER = "http://127.0.0.1:8000"


def config_path() -> Path:
    """`config.json` in the user config dir (~/.config/qubix on Linux)."""
    return Path(platformdirs.user_config_dir("qubix", appauthor=False)) / "config.json"


def state_path() -> Path:
    """`state.json` in the user state dir (~/.local/state/qubix on Linux)."""
    return Path(platformdirs.user_state_dir("qubix", appauthor=False)) / "state.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise QubixError(f"cannot read {path}: {exc}; fix or delete it") from exc
    if not isinstance(data, dict):
        raise QubixError(f"{path} must hold a JSON object; fix or delete it")
    return data


def server_url(flag: str | None) -> str:
    return (
        flag
        or os.environ.get("QUBIX_SERVER")
        or _read(config_path()).get("server")
        or (DEFAULT_SERVER)
    )


def api_key(flag: str | None, server: str) -> str | None:
    """flag > QUBIX_API_KEY > the key `qubix login` stored for this server > the config
    file's `apiKey`."""
    stored = _read(config_path())
    keys = stored.get("keys")
    saved = keys.get(server.rstrip("/")) if isinstance(keys, dict) else None
    key = flag or os.environ.get("QUBIX_API_KEY") or saved or stored.get("apiKey")
    return str(key) if key else None


def login(server: str, key: str) -> Path:
    """Store `key` for `server` and make that server the default: the config file is
    written whole and atomically, readable by its owner only (0600)."""
    path = config_path()
    stored = _read(path)
    keys = stored.get("keys")
    keys = keys if isinstance(keys, dict) else {}
    stored.update(server=server.rstrip("/"), keys={**keys, server.rstrip("/"): key})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(stored, indent=2) + "\n")
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except OSError as exc:
        raise QubixError(f"cannot write {path}: {exc.strerror}") from exc
    return path


def remember_worker(worker_id: str) -> None:
    """Keep the last worker seen by `qubix watch`, for commands that default to it."""
    path = state_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**_read(path), "lastWorkerId": worker_id}))
    except OSError as exc:
        raise QubixError(f"cannot write {path}: {exc.strerror}") from exc


def last_worker() -> str | None:
    value = _read(state_path()).get("lastWorkerId")
    return str(value) if value else None
