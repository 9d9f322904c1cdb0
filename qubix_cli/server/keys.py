"""API keys, stored only as hashes in the store's `keys` table."""

from __future__ import annotations

from qubix_cli.server.http import token_hash
from qubix_cli.server.providers import Clock
from qubix_cli.server.store import Doc, Store


async def find_key(store: Store, key: str) -> Doc | None:
    """The stored record of a presented key, or None (the hash is looked up, so the
    comparison takes the same time whatever the key)."""
    found = await store.scan("keys", where={"hash": token_hash(key)})
    return found[0] if found else None


async def install_start_key(store: Store, key: str, clock: Clock) -> None:
    """Make the key the server was started with (`--api-key`, `QUBIX_API_KEY` or the
    data dir's key file) the operator's key; a key a previous start used stops working."""
    async with store.transaction() as tx:
        for old in await tx.scan("keys", where={"startKey": True}):
            if old["hash"] != token_hash(key):
                tx.delete("keys", old["id"])
        if not await tx.scan("keys", where={"hash": token_hash(key)}):
            doc = {"id": key[:12], "hash": token_hash(key), "startKey": True, "createdAt": clock()}
            tx.put("keys", doc)
