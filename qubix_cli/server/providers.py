"""The provider registry: registrations are durable, liveness is volatile state."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import secrets
from collections.abc import Callable
from typing import Any

from qubix_cli.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    RateLimited,
    StorageError,
    Unauthorized,
)
from qubix_cli.server.events import EventBus
from qubix_cli.server.http import not_found, token_hash, token_matches
from qubix_cli.server.schemas import CheckNewQuery, Heartbeat, ProviderListQuery, Register
from qubix_cli.server.settings import Settings
from qubix_cli.server.store import Doc, Store, Transaction, run_later
from qubix_cli.server.trust import BOOK, TRUST, hardware_gpus, trust_of
from qubix_cli.worker import AGENT_VERSION
from qubix_cli.worker.update import older

CHECK_NEW_DEFAULT_S = 300.0
OFFLINE: Doc = {"status": "offline", "lastSeenAt": None}
PRIVATE = ("tokenHash", "clientIp", BOOK)  # fields of a provider's record that no answer shows
Clock = Callable[[], float]


class Registry:
    """Providers, their tokens and whether they are online."""

    def __init__(self, store: Store, events: EventBus, settings: Settings, clock: Clock) -> None:
        self.store, self.events, self.settings, self.clock = store, events, settings, clock
        # check-new long-polls waiting in this process, with what each waits for and since
        self._watchers: dict[asyncio.Future[Doc], tuple[CheckNewQuery, float]] = {}
        self._reading: set[asyncio.Task[None]] = set()  # providers changed elsewhere

    # -- registration ----------------------------------------------------------------

    async def register(
        self, body: Register, token: str | None, client_ip: str
    ) -> tuple[Doc, str | None]:
        """Create or update a provider. Returns its record and a new token if created.
        New registrations are limited per client IP (re-registering with the token is not)."""
        now = self.clock()
        most = self.settings.max_price_per_hour
        if body.pricePerHour is not None and body.pricePerHour > most:
            raise InvalidInput(
                f"pricePerHour {body.pricePerHour:g} is over this server's maximum, {most:g} "
                "an hour: ask for less (worker run --price)",
                code="price_too_high",
            )
        async with self.store.transaction() as tx:
            existing = await tx.get("providers", body.workerId)
            if existing is not None and not token_matches(token, existing["tokenHash"]):
                raise Conflict(
                    f"workerId {body.workerId!r} is already registered. Re-register with its "
                    "worker token (Authorization: Bearer <token>), or use another workerId.",
                    code="worker_id_taken",
                )
            if existing is None:
                await self._admit(tx, client_ip, now)
            new_token = None if existing else secrets.token_urlsafe(32)
            doc = body.model_dump(exclude={"gpu", "gpus", "updateFailed"}, exclude_none=True)
            doc.update(
                gpus=[g.model_dump(exclude_none=True) for g in body.gpu_list()],
                registeredAt=existing["registeredAt"] if existing else now,
                lastRegisteredAt=now,
                tokenHash=existing["tokenHash"] if existing else token_hash(new_token or ""),
                clientIp=existing.get("clientIp", client_ip) if existing else client_ip,
            )
            for kept in (TRUST, BOOK):  # a record is earned, never reset by re-registering
                if existing is not None and kept in existing:
                    doc[kept] = existing[kept]
            failed = existing.get("failedUpdates", []) if existing else []
            if body.updateFailed and body.updateFailed not in failed:
                failed = [*failed[-9:], body.updateFailed]  # not offered to it again
            if failed:
                doc["failedUpdates"] = failed
            tx.put("providers", doc)
        was_online = await self.is_online(body.workerId)
        self._touch(body.workerId, "online", None, [])
        if existing is None:
            self.events.publish("PROVIDER_REGISTERED", await self.public(doc))
        elif not was_online:
            self.events.publish("PROVIDER_ONLINE", await self.public(doc))
        self._announce(doc)
        return doc, new_token

    async def _admit(self, tx: Transaction, client_ip: str, now: float) -> None:
        """A new provider from `client_ip`, within the per-IP limits, or RateLimited."""
        most = self.settings.max_providers_per_ip
        if most and await tx.count("providers", {"clientIp": client_ip}) >= most:
            raise RateLimited(
                f"{client_ip} already has {most} providers registered: deregister those you "
                "no longer use, or ask the operator to raise --max-providers-per-ip (a farm "
                "behind one address)",
                code="too_many_providers",
            )
        per_minute = self.settings.max_registrations_per_minute
        if not per_minute:
            return
        window = await self.store.recall("registrations", client_ip)
        if window is None or window["start"] + 60 <= now:
            window = {"start": now, "count": 0}
        if window["count"] >= per_minute:
            wait_s = math.ceil(window["start"] + 60 - now)
            raise RateLimited(
                f"{per_minute} new registrations a minute from one address at most; "
                f"try again in {wait_s} s",
                details={"retryAfterS": wait_s},
            )
        self.store.remember("registrations", client_ip, {**window, "count": window["count"] + 1})

    async def find(self, worker_id: str) -> Doc:
        """The stored record of a provider, or NotFound."""
        doc = await self.store.get("providers", worker_id)
        if doc is None:
            raise not_found(f"provider {worker_id!r}")
        return doc

    async def authenticate(self, worker_id: str, token: str) -> Doc:
        """The provider whose token this is: NotFound if unknown, Forbidden if not its token."""
        doc = await self.find(worker_id)
        if not token_matches(token, doc["tokenHash"]):
            raise Forbidden(f"this token does not belong to {worker_id!r}")
        return doc

    async def worker_for_token(self, token: str) -> Doc:
        """The provider that holds this worker token (Unauthorized if none does)."""
        found = await self.store.scan("providers", where={"tokenHash": token_hash(token)})
        if not found:
            raise Unauthorized("this worker token is not valid; register again")
        return found[0]

    async def delete(self, worker_id: str, event: str = "PROVIDER_OFFLINE") -> None:
        async with self.store.transaction() as tx:
            doc = await tx.get("providers", worker_id)
            if doc is None:
                raise not_found(f"provider {worker_id!r}")
            tx.delete("providers", worker_id)
        view = {**await self.public(doc), "status": "offline", "deleted": True}
        self.store.remember("liveness", worker_id, None)
        self.events.publish(event, view)

    # -- liveness --------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, body: Heartbeat) -> None:
        live = await self.store.recall("liveness", worker_id)
        usage = body.usage.model_dump(exclude_none=True) if body.usage else None
        paused = {"pausedReason": body.pausedReason, "pausedUntil": body.pausedUntil}
        self._touch(worker_id, body.status, usage, body.job_ids(), paused)
        if live is None or live["status"] == "offline":
            self.events.publish("PROVIDER_ONLINE", await self.get(worker_id))

    async def polled(self, worker_id: str) -> None:
        """A job poll is a sign of life: it brings an offline provider back online (after a
        server restart its heartbeats may still be in their reconnect backoff)."""
        if not await self.is_online(worker_id):
            self._touch(worker_id, "online", None, [])
            self.events.publish("PROVIDER_ONLINE", await self.get(worker_id))

    def _touch(
        self,
        worker_id: str,
        status: str,
        usage: Any,
        job_ids: list[str],
        paused: Doc | None = None,
    ) -> None:
        live = {
            "status": status,
            "lastSeenAt": self.clock(),
            "usage": usage,
            "currentJobIds": job_ids,
        }
        if status == "paused" and paused:
            live.update(paused)  # why, and until when
        self.store.remember("liveness", worker_id, live)

    async def is_paused(self, worker_id: str) -> bool:
        live = await self.store.recall("liveness", worker_id)
        return live is not None and live["status"] == "paused"

    async def is_online(self, worker_id: str) -> bool:
        live = await self.store.recall("liveness", worker_id)
        return live is not None and live["status"] != "offline"

    async def sweep(self) -> list[str]:
        """Turn providers offline after three missed heartbeats; the ones it turned."""
        cutoff = self.clock() - self.settings.offline_after_s
        turned = []
        for worker_id, live in list((await self.store.recall_all("liveness")).items()):
            if live["status"] != "offline" and live["lastSeenAt"] < cutoff:
                gone = {**live, "status": "offline", "currentJobIds": []}
                self.store.remember("liveness", worker_id, gone)
                turned.append(worker_id)
                doc = await self.store.get("providers", worker_id)
                if doc is not None:
                    self.events.publish("PROVIDER_OFFLINE", public(doc, gone))
        return turned

    # -- reading ---------------------------------------------------------------------

    async def public(self, doc: Doc) -> Doc:
        return public(doc, await self.store.recall("liveness", doc["workerId"]))

    async def get(self, worker_id: str) -> Doc:
        return await self.public(await self.find(worker_id))

    async def search(self, query: ProviderListQuery) -> tuple[list[Doc], str | None]:
        """One page of the marketplace, oldest registration first, and the cursor of the
        next page (None after the last)."""
        after = _decode_cursor(query.cursor) if query.cursor else None
        liveness = await self.store.recall_all("liveness")
        docs = await self.store.scan("providers", order_by="registeredAt")
        page: list[Doc] = []
        for doc in docs:
            if after is not None and (doc["registeredAt"], doc["workerId"]) <= after:
                continue
            view = public(doc, liveness.get(doc["workerId"]))
            if not _matches_listing(view, query):
                continue
            if len(page) == query.limit:
                last = page[-1]
                return page, _encode_cursor(last["registeredAt"], last["workerId"])
            page.append(view)
        return page, None

    async def forget(self) -> list[str]:
        """Remove providers offline longer than `--forget-offline-after` (browsers: a day),
        and registration windows that have ended; the providers removed (their leases are
        the queue's to requeue)."""
        now = self.clock()
        for ip, window in list((await self.store.recall_all("registrations")).items()):
            if window["start"] + 60 <= now:  # a minute's window that has ended
                self.store.remember("registrations", ip, None)
        liveness = await self.store.recall_all("liveness")
        removed = []
        for doc in await self.store.scan("providers"):
            live = liveness.get(doc["workerId"]) or {}
            last = live.get("lastSeenAt") or doc["lastRegisteredAt"]
            if live.get("status", "offline") != "offline":
                continue
            if last + self.settings.forget_after_s(doc["type"]) < now:
                await self.delete(doc["workerId"], "PROVIDER_REMOVED")
                removed.append(doc["workerId"])
        return removed

    def watching(self) -> int:
        """check-new long-polls waiting now."""
        return len(self._watchers)

    async def check_new(self, query: CheckNewQuery) -> list[Doc]:
        """Providers (re)registered after `since`; with `wait`, answers as soon as one is.
        A registration wakes only the waiters whose filter it matches, and hands them the
        provider: nothing is scanned again."""
        since = query.since if query.since is not None else self.clock() - CHECK_NEW_DEFAULT_S
        if query.workerId:
            one = await self.store.get("providers", query.workerId)
            docs = [one] if one is not None and _matches_filter(one, query) else []
        else:
            where = {"qubicAddress": query.qubicAddress} if query.qubicAddress else None
            docs = await self.store.scan("providers", where=where)
        found = sorted(
            (d for d in docs if d["lastRegisteredAt"] > since), key=lambda d: d["lastRegisteredAt"]
        )
        if not found and query.wait > 0:
            waiter: asyncio.Future[Doc] = asyncio.get_running_loop().create_future()
            self._watchers[waiter] = (query, since)
            try:
                found = [await asyncio.wait_for(waiter, query.wait)]
            except TimeoutError:
                pass
            finally:
                del self._watchers[waiter]
        return [await self.public(doc) for doc in found]

    def _announce(self, doc: Doc) -> None:
        for waiter, (query, since) in self._watchers.items():
            if not waiter.done() and _matches_filter(doc, query):
                if doc["lastRegisteredAt"] > since:
                    waiter.set_result(doc)

    def changed(self, table: str, key: str, summary: Doc | None, here: bool) -> None:
        """A provider changed on another server on the same database: the check-new
        long-polls waiting here are told if it (re)registered since they asked."""
        if table == "providers" and not here and summary is not None and self._watchers:
            run_later(self._reading, self._announce_stored(key))

    async def _announce_stored(self, worker_id: str) -> None:
        try:
            doc = await self.store.get("providers", worker_id)
        except StorageError:
            return  # the waiters find it when they ask again
        if doc is not None:
            self._announce(doc)


def public(doc: Doc, live: Doc | None) -> Doc:
    """What anyone may see of a provider: never its token hash nor its address."""
    live = live or OFFLINE
    view = {k: v for k, v in doc.items() if k not in PRIVATE}
    view.update(
        trust=trust_of(doc),
        status=live["status"],
        lastSeenAt=live["lastSeenAt"],
        usage=live.get("usage"),
        currentJobIds=_job_ids(live),
        outdated=older(doc.get("agentVersion"), AGENT_VERSION),
        pausedReason=live.get("pausedReason"),
        pausedUntil=live.get("pausedUntil"),
    )
    view["currentJobId"] = (view["currentJobIds"] or [None])[0]
    return view


def _job_ids(live: Doc) -> list[str]:
    """The jobs a provider runs (liveness saved before it ran several held one id)."""
    if "currentJobIds" in live:
        return list(live["currentJobIds"])
    return [live["currentJobId"]] if live.get("currentJobId") else []


def best_vram_mb(provider: Doc) -> int:
    return max((g["vramMb"] for g in hardware_gpus(provider)), default=0)


def _matches_filter(doc: Doc, query: CheckNewQuery) -> bool:
    if query.qubicAddress and doc["qubicAddress"] != query.qubicAddress:
        return False
    return not query.workerId or doc["workerId"] == query.workerId


def _matches_listing(view: Doc, query: ProviderListQuery) -> bool:
    if query.status and view["status"] != query.status:
        return False
    if query.minVramMb is not None and best_vram_mb(view) < query.minVramMb:
        return False
    if query.qubicAddress and view["qubicAddress"] != query.qubicAddress:
        return False
    gpu = (query.gpu or "").lower()
    return not gpu or any(gpu in g["model"].lower() for g in view.get("gpus", []))


def _encode_cursor(registered_at: float, worker_id: str) -> str:
    raw = json.dumps([registered_at, worker_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        registered_at, worker_id = value
        return float(registered_at), str(worker_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "query.cursor: not a cursor this server made; pass nextCursor as it came",
            details=[{"field": "query.cursor", "message": "not a cursor this server made"}],
        ) from exc
