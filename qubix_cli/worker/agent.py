"""The worker loop: register, heartbeat in its own thread, long-poll for jobs, run as many
at once as the machine has GPUs (one at a time without GPUs), each in its own thread with
its own GPUs, and report each result through the durable outbox.

Signals set flags and cut the job long-poll short, so an idle worker needs no ticking to
notice them: it looks for a pause every 2 s, and heartbeats wait on an event. The first
SIGTERM/SIGINT drains (no new jobs, keep heartbeating, finish and report the running
jobs); a second one cancels them, reports them failed and exits.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from qubix_cli.worker import AGENT_VERSION, engine, guest, hardware, jobs, sandbox, state, updating
from qubix_cli.worker.client import Client, Transient, message
from qubix_cli.worker.envs import Envs
from qubix_cli.worker.outbox import Outbox
from qubix_cli.worker.pausing import Pausing
from qubix_cli.worker.slots import TICK_S, Slots

log = logging.getLogger("qubix.worker")
BACKOFF_CAP_S = 60.0
IDLE_DIAGNOSIS_S = 3600.0  # idle this long, it logs why (once an hour at most)
IDLE_TICK_S = 2.0  # an idle one looks (for a pause) this often; a signal wakes it at once


class Fatal(Exception):
    """Retrying cannot fix this (e.g. an invalid address): the worker stops with it."""


@dataclass
class Config:
    server: str
    qubic_address: str
    name: str | None = None
    location: str | None = None
    price_per_hour: float | None = None
    worker_id: str | None = None
    policy: jobs.Policy = field(default_factory=jobs.Policy)
    burst: bool = False
    max_jobs: int | None = None
    env_cache_gb: float = 20.0
    update_trial: str | None = None  # on trial after an update: write here once up, exit
    update_failed: str | None = None  # the version this worker rolled back from
    run_args: list[str] = field(default_factory=list)  # to start it again after an update


class Agent:
    def __init__(self, config: Config, report: dict[str, Any] | None = None) -> None:
        self.config = config
        self.home = state.home()
        self.worker_id = config.worker_id or state.default_worker_id(self.home)
        prefs = guest.load(self.home)
        self.report, self.cpu_threads = guest.offered(report or hardware.detect(), prefs)
        self.api = Client(config.server)  # main thread: register, reports
        self.beats = Client(config.server)  # heartbeat thread
        self.poller = Client(config.server, timeout_s=90)  # job long-poll thread
        self.outbox = Outbox(self.home)
        self.heartbeat_interval_s = 30.0
        self.poll_wait_s = 25.0
        self.pausing = Pausing(self.home, idle_only=bool(prefs.get("idleMinutes")))
        self.slots = Slots(
            self.report,
            config.policy,
            self.cpu_threads,
            api=self.api,
            envs=Envs(os.path.join(self.home, "envs"), int(config.env_cache_gb * 2**30)),
            outbox=self.outbox,
            pausing=self.pausing,
            retry=self._retry,
            on_free=self._beat_now,
        )
        self.draining = False
        self.stopped = False
        self.lost = False
        self.wake_beat = threading.Event()  # set to heartbeat at once (or to stop)
        self.beat_failing = False
        self.idle_since = self.diagnosed_at = time.monotonic()
        self.updates = updating.Updates()
        self.last_usage: dict[str, Any] | None = None  # what the last heartbeat said

    # -- signals ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Only flags, and the long-poll cut short (its socket shut down): the main
        thread's wait on it returns at once, so an idle worker needs no ticking to stop."""
        if self.draining:
            self.slots.cancelling = True
        self.draining = True
        self.poller.abort()

    def _retry(
        self, what: str, attempt: int, error: Exception, stop: Callable[[], bool] | None = None
    ) -> bool:
        """Full-jitter exponential backoff, capped at 60 s. False when told to stop."""
        delay = backoff_s(attempt)
        log.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
        return jobs.wait_unless(delay, stop or (lambda: self.draining))

    # -- registration ----------------------------------------------------------------

    def registration(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "native",
            "workerId": self.worker_id,
            "qubicAddress": self.config.qubic_address,
            "gpus": self.report["gpus"],
            "cpu": self.report["cpu"],
            "ramMb": self.report["ramMb"],
            "storage": self.report["storage"],
            "os": self.report["os"],
            "capabilities": jobs.capabilities(self.config.policy),
            "sandbox": "bubblewrap" if sandbox.available() else "none",
            "networkJobs": self.config.policy.allow_network,
            "concurrency": self.slots.count,
            "gpuEngine": engine.find_engine(self.report["gpus"], [])[0],
            "agentVersion": AGENT_VERSION,
        }
        if self.config.update_failed:
            body["updateFailed"] = self.config.update_failed
        if self.pausing.idle_only:
            body["idleOnly"] = True
        config = self.config
        optional = {
            "name": config.name,
            "location": config.location,
            "pricePerHour": config.price_per_hour,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    def register(self) -> bool:
        """Register (or re-register with the stored token); retries until it works.
        False if a signal stopped it first; `Fatal` if the server refuses for good."""
        saved = state.saved_token(self.home, self.worker_id, self.api.server)
        if saved is not None:
            self._set_token(saved)
        attempt = 0
        while True:
            try:
                status, answer = self.api.request(
                    "POST", "/api/providers/quick-register", self.registration()
                )
            except Transient as exc:
                attempt += 1
                if not self._retry("registration", attempt, exc):
                    return False
                continue
            if status == 426:  # too old for this server: update, or stop
                self.updates.offer = updating.offered(answer)
                if not self.updates.wanted() or not self._take_update():
                    raise Fatal(f"this worker is too old for the server: {message(answer)}")
            if status == 201:
                state.save_credentials(
                    self.home, self.worker_id, self.api.server, answer["workerToken"]
                )
                self._set_token(answer["workerToken"])
            elif status != 200:
                raise Fatal(
                    f"the server refused to register this worker ({status}): {message(answer)}"
                )
            gpus = len(self.report["gpus"])
            log.info("registered as %s with %s (%d GPU)", self.worker_id, self.api.server, gpus)
            return True

    def _set_token(self, token: str | None) -> None:
        for client in (self.api, self.beats, self.poller):
            client.token = token

    # -- heartbeat thread ------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        attempt = 0
        while not self.stopped:
            self.wake_beat.clear()
            try:
                self._heartbeat()
                attempt = 0
                wait = beat_interval_s(self.heartbeat_interval_s)
            except Transient as exc:
                attempt += 1
                wait = backoff_s(attempt)
                log.warning("heartbeat failed (%s); next try in %.1f s", exc, wait)
            self.beat_failing = attempt > 0
            self.wake_beat.wait(wait)  # no ticking: woken to beat now, or to stop

    def _heartbeat(self) -> None:
        running = self.slots.ids()
        body: dict[str, Any] = {
            "status": "busy" if running else "online",
            "usage": hardware.usage(),
            "currentJobIds": running,
        }
        self.last_usage = body["usage"]
        body.update(self.pausing.heartbeat())
        status, answer = self.beats.request(
            "POST", f"/api/providers/{self.worker_id}/heartbeat", body
        )
        if status == 404:
            log.warning("the server no longer knows this worker; registering again")
            self.lost = True  # the main loop registers again
            return
        if status == 426:
            self.updates.offer = updating.offered(answer)
            log.warning("heartbeat refused: %s", message(answer))
            return
        if status != 200:
            log.warning("heartbeat refused (%s): %s", status, message(answer))
            return
        self.heartbeat_interval_s = float(answer["heartbeatIntervalS"])
        self.poll_wait_s = float(answer["pollWaitS"])
        self.slots.cancel_ids.update(answer.get("cancelJobIds") or [])
        self.updates.offer = answer.get("update")

    # -- the job loop ----------------------------------------------------------------

    def run(self) -> int:
        """Run until drained, `--burst` finds nothing, or `--max-jobs` is reached."""
        with capture_signals(self._on_signal):
            if not self.register():
                return 0
            if self.config.update_trial:
                return self._prove()
            beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            beat.start()
            try:
                self._loop()
                self.slots.wait_all()
            finally:
                self.stopped = True
                self.wake_beat.set()
                beat.join(5)
        log.info("worker stopped after %d job(s)", self.slots.done)
        return 0

    def _prove(self) -> int:
        """On trial after an update: one heartbeat the server accepts, then say so."""
        self._heartbeat()
        if self.lost:
            raise Fatal("the server did not accept this version's heartbeat")
        assert self.config.update_trial is not None
        updating.proven(self.config.update_trial)
        return 0

    def _loop(self) -> None:
        attempt = 0
        while not self.draining and not self._enough():
            if self._paused():
                self.slots.wait(IDLE_TICK_S)
                continue
            if self.updates.wanted():
                if self.slots.running:  # finish the running jobs first; take no new ones
                    self.slots.wait(TICK_S)
                    continue
                self._take_update()
                continue
            if not self.slots.free():
                continue
            try:
                if self.lost:
                    self.lost = False
                    if not self.register():
                        return
                self.outbox.send(self.api)
                job = self._next_job()
                attempt = 0
                if job is not None or self.beat_failing:
                    # A new lease, or the server is back: heartbeat now, not after a backoff.
                    self._beat_now()
            except Transient as exc:
                attempt += 1
                if not self._retry("talking to the server", attempt, exc):
                    return
                continue
            if job is None:
                if self.config.burst:
                    return
                self._diagnose_when_idle()
                continue
            self.idle_since = time.monotonic()
            self.slots.start(job)

    def _paused(self) -> bool:
        """Whether the provider paused this worker (pausing.py); a pause that begins or
        ends is heartbeated at once, and one that hands back stops the running jobs."""
        registered = self.pausing.idle_only
        if self.pausing.check(self.last_usage):
            self._beat_now()
        if self.pausing.idle_only != registered:
            self.lost = True  # the main loop registers again, to say so
        pause = self.pausing.pause
        if pause is not None and pause.get("handBack"):
            self.slots.hand_back()
        return pause is not None

    def _beat_now(self) -> None:
        self.wake_beat.set()

    def _take_update(self) -> bool:
        """Restart into the offered update (this returns only if it is refused)."""
        return self.updates.take(
            self.api, self.home, self.config.run_args, self.heartbeat_interval_s, self._stop
        )

    def _stop(self) -> None:
        self.stopped = True

    def _diagnose_when_idle(self) -> None:
        """Idle for an hour: log the coordinator's answer to "why no jobs?" (at most hourly)."""
        now = time.monotonic()
        if self.slots.running or now - max(self.idle_since, self.diagnosed_at) < IDLE_DIAGNOSIS_S:
            return
        self.diagnosed_at = now
        try:
            status, answer = self.api.request("GET", f"/api/providers/{self.worker_id}/diagnosis")
        except Transient:
            return
        if status == 200:
            for reason in answer.get("reasons", []):
                log.info("no jobs for an hour: %s", reason)

    def _enough(self) -> bool:
        return self.config.max_jobs is not None and self.slots.started >= self.config.max_jobs

    def _next_job(self) -> dict[str, Any] | None:
        """Long-poll, cut short by a signal (see _on_signal), a lost registration or a pause."""
        wait = 0 if self.config.burst else self.poll_wait_s
        status, answer = self.poller.request_unless(
            "GET",
            f"/api/jobs/pending/{self.worker_id}?wait={wait:g}",
            lambda: self.draining or self.lost or self.pausing.asked(),
            IDLE_TICK_S,
        )
        if status == 404:
            self.lost = True
            return None
        if status in (401, 403):
            raise Fatal(f"the server refused this worker's token ({status}): {message(answer)}")
        if status == 426:
            self.updates.offer = updating.offered(answer)
            return None
        if status not in (200, 204):
            raise Transient(f"polling for jobs answered {status}: {message(answer)}")
        return answer if status == 200 else None


@contextlib.contextmanager
def capture_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Route SIGINT, SIGTERM and (on Windows) SIGBREAK to `handler` while in the block."""
    names = ["SIGINT", "SIGTERM", "SIGBREAK"]
    wanted = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def beat_interval_s(interval_s: float) -> float:
    """The interval, give or take 10 %: workers that a server restart brought back at the
    same moment drift apart instead of heartbeating in step ever after."""
    return interval_s * random.uniform(0.9, 1.1)


def backoff_s(attempt: int) -> float:
    """Full jitter: uniform in [0, min(60 s, 2^attempt s)]."""
    return random.uniform(0, min(BACKOFF_CAP_S, 2.0 ** min(attempt, 10)))


def setup_logging(state_dir: str) -> None:
    """One line per event, to stderr and to worker.log (rotated at 1 MiB, 3 kept)."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.handlers.RotatingFileHandler(
            os.path.join(state_dir, "worker.log"), maxBytes=2**20, backupCount=3
        ),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
