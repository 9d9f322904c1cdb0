"""The provider registry: registration records are durable, liveness lives in memory."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

from qubix_cli.server.events import EventBus
from qubix_cli.server.http import ApiError, not_found, token_hash, token_matches
from qubix_cli.server.schemas import CheckNewQuery, Heartbeat, ProviderListQuery, Register
from qubix_cli.server.settings import Settings
from qubix_cli.server.store import Doc, Store, json_members, json_object, write_atomically

LIVENESS_FILE = "liveness.json"
LIVENESS_CHUNK = 500
CHECK_NEW_DEFAULT_S = 300.0


class Registry:
    """Providers, their tokens and whether they are online."""

    def __init__(self, store: Store, events: EventBus, settings: Settings) -> None:
        self.store, self.events, self.settings = store, events, settings
        self._liveness_path = settings.data_dir / LIVENESS_FILE
        self.live: dict[str, dict[str, Any]] = _load_liveness(self._liveness_path)
        self._liveness_dirty = False
        self._registered = asyncio.Event()
        self._by_token = {d["tokenHash"]: d["workerId"] for d in store.values("providers")}

    # -- registration ----------------------------------------------------------------

    async def register(self, body: Register, token: str | None) -> tuple[Doc, str | None]:
        """Create or update a provider. Returns its record and a new token if created."""
        existing = self.store.get("providers", body.workerId)
        if existing is not None and not token_matches(token, existing["tokenHash"]):
            raise ApiError(
                409,
                "worker_id_taken",
                f"workerId {body.workerId!r} is already registered. Re-register with its "
                "worker token (Authorization: Bearer <token>), or use another workerId.",
            )
        now = time.time()
        new_token = None if existing else secrets.token_urlsafe(32)
        doc = body.model_dump(exclude={"gpu", "gpus"}, exclude_none=True)
        doc.update(
            gpus=[g.model_dump(exclude_none=True) for g in body.gpu_list()],
            registeredAt=existing["registeredAt"] if existing else now,
            lastRegisteredAt=now,
            tokenHash=existing["tokenHash"] if existing else token_hash(new_token or ""),
        )
        self.store.put("providers", doc)
        self._by_token[doc["tokenHash"]] = body.workerId
        await self.store.sync()
        was_online = self.is_online(body.workerId)
        self._touch(body.workerId, "online", None, None)
        if existing is None:
            self.events.publish("PROVIDER_REGISTERED", self.public(doc))
        elif not was_online:
            self.events.publish("PROVIDER_ONLINE", self.public(doc))
        self._registered.set()
        self._registered = asyncio.Event()
        return doc, new_token

    def _doc(self, worker_id: str) -> Doc:
        """The stored record of a provider, or 404."""
        doc = self.store.get("providers", worker_id)
        if doc is None:
            raise not_found(f"provider {worker_id!r}")
        return doc

    def authenticate(self, worker_id: str, token: str) -> Doc:
        """The provider whose token this is: 404 if unknown, 403 if the token is not its."""
        doc = self._doc(worker_id)
        if not token_matches(token, doc["tokenHash"]):
            raise ApiError(403, "forbidden", f"this token does not belong to {worker_id!r}")
        return doc

    def worker_for_token(self, token: str) -> Doc:
        """The provider that holds this worker token (401 if none does)."""
        worker_id = self._by_token.get(token_hash(token))
        doc = self.store.get("providers", worker_id) if worker_id else None
        if doc is None:
            raise ApiError(401, "unauthorized", "this worker token is not valid; register again")
        return doc

    async def delete(self, worker_id: str) -> None:
        doc = self._doc(worker_id)
        view = {**self.public(doc), "status": "offline", "deleted": True}
        self.store.delete("providers", worker_id)
        await self.store.sync()
        self._by_token.pop(doc["tokenHash"], None)
        self.live.pop(worker_id, None)
        self._liveness_dirty = True
        self.events.publish("PROVIDER_OFFLINE", view)

    # -- liveness --------------------------------------------------------------------

    def heartbeat(self, worker_id: str, body: Heartbeat) -> None:
        was_online = self.is_online(worker_id)
        usage = body.usage.model_dump(exclude_none=True) if body.usage else None
        self._touch(worker_id, body.status, usage, body.currentJobId)
        if not was_online:
            self.events.publish("PROVIDER_ONLINE", self.get(worker_id))

    def polled(self, worker_id: str) -> None:
        """A job poll is a sign of life: it brings an offline provider back online (after a
        server restart its heartbeats may still be in their reconnect backoff)."""
        if not self.is_online(worker_id):
            self._touch(worker_id, "online", None, None)
            self.events.publish("PROVIDER_ONLINE", self.get(worker_id))

    def _touch(self, worker_id: str, status: str, usage: Any, job_id: str | None) -> None:
        self.live[worker_id] = {
            "status": status,
            "lastSeenAt": time.time(),
            "usage": usage,
            "currentJobId": job_id,
        }
        self._liveness_dirty = True

    def is_online(self, worker_id: str) -> bool:
        live = self.live.get(worker_id)
        return live is not None and live["status"] != "offline"

    def sweep(self) -> None:
        """Turn providers offline after three missed heartbeats."""
        cutoff = time.time() - self.settings.offline_after_s
        for worker_id, live in self.live.items():
            if live["status"] != "offline" and live["lastSeenAt"] < cutoff:
                live["status"] = "offline"
                live["currentJobId"] = None
                self._liveness_dirty = True
                doc = self.store.get("providers", worker_id)
                if doc is not None:
                    self.events.publish("PROVIDER_OFFLINE", self.public(doc))

    async def save_liveness(self) -> None:
        """Saved every few seconds and at shutdown: heartbeats never touch the database.

        Encoded here on the event loop, 500 entries (about 3 ms) at a time with pauses
        between for the requests, and written from a thread: one json.dumps of 10,000 entries
        holds the loop for 60 ms, and encoding them in a thread slowed every request for
        longer (the two take turns with the GIL)."""
        if not self._liveness_dirty:
            return
        self._liveness_dirty = False
        try:
            members: list[str] = []
            for member in json_members(self.live, per=LIVENESS_CHUNK):
                members.append(member)
                await asyncio.sleep(0.005)
            data = json_object(members).encode()
            await asyncio.to_thread(write_atomically, self._liveness_path, data)
        except BaseException:
            self._liveness_dirty = True  # not saved (cancelled at shutdown, or the disk): again
            raise

    # -- reading ---------------------------------------------------------------------

    def public(self, doc: Doc) -> Doc:
        """What anyone may see of a provider: never its token hash."""
        live = self.live.get(doc["workerId"]) or {"status": "offline", "lastSeenAt": None}
        view = {k: v for k, v in doc.items() if k != "tokenHash"}
        view.update(
            status=live["status"],
            lastSeenAt=live["lastSeenAt"],
            usage=live.get("usage"),
            currentJobId=live.get("currentJobId"),
        )
        return view

    def get(self, worker_id: str) -> Doc:
        return self.public(self._doc(worker_id))

    def search(self, query: ProviderListQuery) -> list[Doc]:
        found = []
        for doc in self.store.values("providers"):
            view = self.public(doc)
            if _matches_listing(view, query):
                found.append(view)
        found.sort(key=lambda p: p["registeredAt"])
        return found

    async def check_new(self, query: CheckNewQuery) -> list[Doc]:
        """Providers (re)registered after `since`; with `wait`, answers as soon as one is."""
        since = query.since if query.since is not None else time.time() - CHECK_NEW_DEFAULT_S
        deadline = time.monotonic() + query.wait
        while True:
            registered = self._registered
            found = [
                self.public(doc)
                for doc in self.store.values("providers")
                if doc["lastRegisteredAt"] > since and _matches_filter(doc, query)
            ]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return sorted(found, key=lambda p: p["lastRegisteredAt"])
            try:
                await asyncio.wait_for(registered.wait(), remaining)
            except TimeoutError:
                pass


def best_vram_mb(provider: Doc) -> int:
    return max((g["vramMb"] for g in provider.get("gpus", [])), default=0)


def _matches_filter(doc: Doc, query: CheckNewQuery) -> bool:
    if query.qubicAddress and doc["qubicAddress"] != query.qubicAddress:
        return False
    return not query.workerId or doc["workerId"] == query.workerId


def _matches_listing(view: Doc, query: ProviderListQuery) -> bool:
    if query.status and view["status"] != query.status:
        return False
    if query.minVramMb is not None and best_vram_mb(view) < query.minVramMb:
        return False
    gpu = (query.gpu or "").lower()
    return not gpu or any(gpu in g["model"].lower() for g in view.get("gpus", []))


def _load_liveness(path: Path) -> dict[str, dict[str, Any]]:
    """Liveness is a cache: if the file is missing or damaged, everyone starts offline."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
