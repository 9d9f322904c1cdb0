"""Signed worker updates: the coordinator's Ed25519 update key, the worker zipapp it ships
with that key's signature, and which workers are offered it.

The key pair is made at the first start; its private half stays in the data directory
(0600) and is never served. Installers embed the public half beside the worker, and a
worker runs an update only if its signature checks against that key (worker/update.py).
What is signed is the version, the SHA-256 and the size of the zipapp, together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from qubix_cli.errors import StorageError, UpgradeRequired
from qubix_cli.server.store import Doc, create_once
from qubix_cli.worker.update import older, signed_message

UPDATE_KEY_FILE = "update-key.pem"
UPDATE_PATH = "/api/worker/qubix_worker.pyz"


def in_rollout(worker_id: str, percent: int) -> bool:
    """Whether a worker is among the first `percent` % of a staged rollout: the same
    workers every time, whatever the order they come in."""
    bucket = int.from_bytes(hashlib.sha256(worker_id.encode()).digest()[:4], "big") % 100
    return bucket < percent


@dataclass(frozen=True)
class Release:
    """The worker zipapp this coordinator ships, and its signature."""

    version: str
    data: bytes
    sha256: str
    signature: str  # hex
    public_key: str  # hex: what installers embed to check it

    def offer(self) -> Doc:
        """What a heartbeat answer (or a 426) offers: where to get it and how to check it."""
        return {
            "version": self.version,
            "url": UPDATE_PATH,
            "sha256": self.sha256,
            "size": len(self.data),
            "signature": self.signature,
        }


def offer_for(provider: Doc, release: Release, rollout: int) -> Doc | None:
    """The update a heartbeat answer offers this worker: the release, if its agent is
    older, it is in the rollout, and it has not rolled back from this version before."""
    if not older(provider.get("agentVersion"), release.version):
        return None
    if release.version in provider.get("failedUpdates", []):
        return None
    return release.offer() if in_rollout(provider["workerId"], rollout) else None


def check_floor(agent_version: str | None, floor: str | None, release: Release) -> None:
    """Turn away an agent older than the operator's floor (426), offering the update."""
    if floor is None or not older(agent_version, floor):
        return
    raise UpgradeRequired(
        f"this worker's agent ({agent_version or 'unknown version'}) is older than {floor}, "
        "the oldest this coordinator accepts: it updates itself from the offer in "
        "details.update, or run the installer from this server again",
        details={
            "minAgentVersion": floor,
            "update": release.offer() if older(agent_version, release.version) else None,
        },
    )


class UpdateKey:
    """The coordinator's update key pair, kept in the data directory."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / UPDATE_KEY_FILE
        try:
            if path.exists():
                pem = path.read_text()
            else:  # made at the first start (replicas starting together get one key)
                made = ECC.generate(curve="ed25519").export_key(format="PEM")
                pem = create_once(path, made.encode()).decode()
            self._key = ECC.import_key(pem)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read or create the update key {path}: {exc}") from exc

    @property
    def public_hex(self) -> str:
        """The public half, as installers embed it (64 hex digits)."""
        raw: bytes = self._key.public_key().export_key(format="raw")
        return raw.hex()

    def sign(self, version: str, data: bytes) -> Release:
        sha256 = hashlib.sha256(data).hexdigest()
        signer = eddsa.new(self._key, "rfc8032")
        signature = signer.sign(signed_message(version, sha256, len(data)))
        return Release(version, data, sha256, signature.hex(), self.public_hex)
