"""Server settings and the secrets kept in the data directory."""

from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from qubix_cli.errors import InvalidInput, StorageError
from qubix_cli.server.store import create_once

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
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For is believed
    max_registrations_per_minute: int = 30  # new workerIds per client IP; 0: no limit
    max_providers_per_ip: int = 64  # registered providers per client IP; 0: no limit
    forget_offline_after_s: float = 30 * 86_400  # remove providers offline this long
    retention_s: float = 30 * 86_400  # keep finished jobs, their logs and outputs this long
    max_input_bytes: int = 1024 * 2**20  # one uploaded input
    max_output_bytes: int = 1024 * 2**20  # one output file of a job
    max_job_outputs_bytes: int = 4096 * 2**20  # all output files of one job
    renter_storage_mb: int = 10240  # a renter's inputs unless its quota says; 0: no limit
    min_free_mb: int = 1024  # uploads are refused (507) below this much free disk; 0: off
    input_networks: tuple[str, ...] = ()  # networks URL inputs may be in besides public
    canaries: bool = True  # check workers with canaries (off: a fleet of one's own machines)
    secrets_min_reputation: float = 0.5  # jobs with `env` go to workers this trusted at least
    replication_floor: float = 0.05  # the least share of a trusted worker's jobs replicated
    replica_prefix: tuple[int, int] = (24, 48)  # replicas come from different such networks
    preempt_share: float = 0.2  # a worker's preemptions past this share of its jobs are failures
    max_price_per_hour: float = 1000.0  # the most a provider may ask; a job's default limit
    metrics_public: bool = False  # GET /metrics without an operator's key
    update_rollout: int = 100  # offer the worker update to this share of workers (percent)
    min_agent_version: str | None = None  # older agents are turned away (426)
    log_format: str = "text"  # or "json": one JSON object a line, for log shippers
    database_url: str | None = None  # postgresql://...: PostgreSQL instead of the data dir's store

    def allowed_origins(self) -> list[str]:
        """Origins besides the request's own that may open the events stream."""
        public = [origin_of(self.public_url)] if self.public_url else []
        return [*public, *(origin_of(o) for o in self.allow_origins)]

    def forget_after_s(self, provider_type: str) -> float:
        """Browser providers are forgotten after a day offline (a closed tab rarely comes
        back), native ones after `forget_offline_after_s`."""
        if provider_type == "browser":
            return min(86_400.0, self.forget_offline_after_s)
        return self.forget_offline_after_s

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


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `30d`, `12h`, `15m` or `4s`."""
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.replace(".", "", 1).isdigit() or float(number) <= 0:
        raise InvalidInput(f"{text!r} is not a duration: write it as 30d, 12h, 15m or 4s")
    return float(number) * units[unit]


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
            path.unlink(missing_ok=True)  # empty (an old version's crash): replaced
        key = "qbx_" + secrets.token_urlsafe(32)
        kept = create_once(path, (key + "\n").encode()).decode().strip()
        return kept, kept == key  # servers starting together on one data dir: one key
    except OSError as exc:
        raise StorageError(f"cannot read or create the API key file {path}: {exc}") from exc
