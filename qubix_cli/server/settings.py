"""Server settings and the secrets kept in the data directory."""

from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from qubix_cli.errors import StorageError

API_KEY_FILE = "api-key"


def default_data_dir() -> Path:
    """`QUBIX_DATA_DIR`, else the platform's user data dir (~/.local/share/qubix on Linux)."""
    env = os.environ.get("QUBIX_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("qubix", appauthor=False))


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    heartbeat_interval_s: float = 30.0
    api_key: str | None = None
    public_url: str | None = None  # where workers and browsers reach this server
    allow_backends: tuple[str, ...] = ()  # other coordinators installers may be built for
    allow_origins: tuple[str, ...] = ()  # other pages' origins that may open /api/events

    def allowed_origins(self) -> list[str]:
        """Origins besides the request's own that may open the events stream."""
        public = [origin_of(self.public_url)] if self.public_url else []
        return [*public, *(origin_of(o) for o in self.allow_origins)]

    @property
    def offline_after_s(self) -> float:
        """A provider is offline after three missed heartbeats."""
        return 3 * self.heartbeat_interval_s

    @property
    def lease_s(self) -> float:
        """A job's lease lasts three heartbeat intervals; heartbeats naming it renew it."""
        return 3 * self.heartbeat_interval_s

    @property
    def poll_wait_s(self) -> float:
        """How long a worker's long-poll for a job waits (below common proxy timeouts)."""
        return 25.0


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, as a browser sends it in `Origin`."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def load_or_create_api_key(data_dir: Path) -> tuple[str, bool]:
    """Return the API key kept in the data dir, creating it (mode 0600) on first use."""
    path = data_dir / API_KEY_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            key = path.read_text().strip()
            if key:
                return key, False
        key = "qbx_" + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        return key, True
    except OSError as exc:
        raise StorageError(f"cannot read or create the API key file {path}: {exc}") from exc
