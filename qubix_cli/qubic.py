"""Qubic identities: 60 letters A-Z, a public key in base 26 and a KangarooTwelve checksum.

The coordinator checks addresses with the worker's own code (standard library only, so
that installers run the same check before they install anything)."""

from qubix_cli.errors import InvalidInput
from qubix_cli.worker.qubic import identity_from_public_key, public_key

__all__ = ["identity_from_public_key", "public_key_from_identity", "validate_identity"]


def public_key_from_identity(identity: str) -> bytes:
    """Decode an identity's public key; raise `InvalidInput` if it is not valid."""
    try:
        return public_key(identity)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def validate_identity(identity: str) -> str:
    """Return the identity unchanged if it is valid, else raise `InvalidInput`."""
    public_key_from_identity(identity)
    return identity
