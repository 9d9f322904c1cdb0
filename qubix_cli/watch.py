"""Watching for a new provider: long-poll `check-new` once per interval, for a bounded
number of attempts, as the "Share My GPU" page does."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qubix_cli.client import Client
from qubix_cli.errors import ServerError


@dataclass
class Attempt:
    number: int
    total: int
    elapsed_s: float
    error: str | None = None
    found: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Watch:
    client: Client
    qubic_address: str | None = None
    worker_id: str | None = None
    interval_s: float = 5.0
    attempts: int = 60

    def run(self, on_attempt: Callable[[Attempt], None]) -> tuple[dict[str, Any] | None, Attempt]:
        """The first provider registered from now on that matches, or None when the attempts
        are spent. Each attempt is one long-poll of at most `interval_s`. A worker named by
        its id or address that is online already counts at once (the installer may have
        finished before the watch began)."""
        started = time.monotonic()
        since = self._server_now()
        attempt = Attempt(0, self.attempts, 0.0)
        online = self._online_already()
        if online is not None:
            attempt.found = [online]
            return online, attempt
        for number in range(1, self.attempts + 1):
            began = time.monotonic()
            attempt = Attempt(number, self.attempts, began - started)
            try:
                attempt.found = self._check(since)
            except ServerError as exc:
                attempt.error = str(exc)
            attempt.elapsed_s = time.monotonic() - started
            on_attempt(attempt)
            if attempt.found:
                return attempt.found[0], attempt
            if number < self.attempts:
                time.sleep(max(0.0, self.interval_s - (time.monotonic() - began)))
        return None, attempt

    def _online_already(self) -> dict[str, Any] | None:
        """The matching provider that is online now, if a worker id or address is given."""
        try:
            if self.worker_id:
                found: dict[str, Any] = self.client.call("GET", f"/api/providers/{self.worker_id}")[
                    "provider"
                ]
                address_ok = not self.qubic_address or found["qubicAddress"] == self.qubic_address
                return found if found["status"] != "offline" and address_ok else None
            if self.qubic_address:
                online = [
                    p
                    for p in self.client.list_providers(qubicAddress=self.qubic_address)
                    if p["status"] != "offline"
                ]
                return max(online, key=lambda p: p["lastRegisteredAt"]) if online else None
        except ServerError:
            return None  # not there yet (404), or not reachable: the watch says which
        return None

    def _server_now(self) -> float:
        """`since` on the server's clock, so that clock skew cannot hide a registration."""
        try:
            return float(self.client.call("GET", "/healthz")["serverTime"])
        except (ServerError, KeyError, TypeError, ValueError):
            return time.time()

    def _check(self, since: float) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since, "wait": min(self.interval_s, 60)}
        if self.qubic_address:
            params["qubicAddress"] = self.qubic_address
        if self.worker_id:
            params["workerId"] = self.worker_id
        answer = self.client.call(
            "GET", "/api/providers/check-new", params=params, timeout=self.interval_s + 10
        )
        found: list[dict[str, Any]] = answer["providers"]
        return found
