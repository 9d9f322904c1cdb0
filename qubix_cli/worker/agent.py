"""The worker loop: register, heartbeat in its own thread, long-poll for jobs, run one at a
time, and report each result through the durable outbox.

Signals only set flags; every wait is short and checks them. The first SIGTERM/SIGINT
drains (no new jobs, keep heartbeating, finish and report the current job); a second one
cancels the current job, reports it failed and exits.
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
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from qubix_cli.worker import AGENT_VERSION, hardware, jobs, state
from qubix_cli.worker.client import Client, Transient, message
from qubix_cli.worker.outbox import Outbox, valid_lease

log = logging.getLogger("qubix.worker")
BACKOFF_CAP_S = 60.0
_TICK_S = 0.2


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
    allow_command: bool = False
    burst: bool = False
    max_jobs: int | None = None


class Agent:
    def __init__(self, config: Config, report: dict[str, Any] | None = None) -> None:
        self.config = config
        self.home = state.home()
        self.worker_id = config.worker_id or state.default_worker_id(self.home)
        self.report = report or hardware.detect()
        self.api = Client(config.server)  # main thread: register, reports
        self.beats = Client(config.server)  # heartbeat thread
        self.poller = Client(config.server, timeout_s=90)  # job long-poll thread
        self.outbox = Outbox(self.home)
        self.heartbeat_interval_s = 30.0
        self.poll_wait_s = 25.0
        self.current_job: str | None = None
        self.cancel_ids: set[str] = set()
        self.draining = False
        self.cancelling = False
        self.stopped = False
        self.lost = False
        self.beat_now = False
        self.beat_failing = False
        self.jobs_done = 0

    # -- signals ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.draining:
            self.cancelling = True
        self.draining = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        names = ["SIGINT", "SIGTERM", "SIGBREAK"]
        wanted = [getattr(signal, n) for n in names if hasattr(signal, n)]
        previous = {s: signal.signal(s, self._on_signal) for s in wanted}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

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
            "capabilities": jobs.capabilities(self.config.allow_command),
            "agentVersion": AGENT_VERSION,
        }
        for key, value in (
            ("name", self.config.name),
            ("location", self.config.location),
            ("pricePerHour", self.config.price_per_hour),
        ):
            if value is not None:
                body[key] = value
        return body

    def register(self) -> bool:
        """Register (or re-register with the stored token); retries until it works.
        False if a signal stopped it first; `Fatal` if the server refuses for good."""
        saved = state.load_credentials(self.home)
        if (
            saved
            and saved.get("workerId") == self.worker_id
            and saved.get("server") == self.api.server
        ):
            self._set_token(saved.get("token"))
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
            if status == 201:
                state.save_credentials(
                    self.home, self.worker_id, self.api.server, answer["workerToken"]
                )
                self._set_token(answer["workerToken"])
            elif status != 200:
                raise Fatal(
                    f"the server refused to register this worker ({status}): {message(answer)}"
                )
            log.info(
                "registered as %s with %s (%d GPU)",
                self.worker_id,
                self.api.server,
                len(self.report["gpus"]),
            )
            return True

    def _set_token(self, token: str | None) -> None:
        for client in (self.api, self.beats, self.poller):
            client.token = token

    # -- heartbeat thread ------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        attempt = 0
        while not self.stopped:
            self.beat_now = False
            try:
                self._heartbeat()
                attempt = 0
                wait = beat_interval_s(self.heartbeat_interval_s)
            except Transient as exc:
                attempt += 1
                wait = backoff_s(attempt)
                log.warning("heartbeat failed (%s); next try in %.1f s", exc, wait)
            self.beat_failing = attempt > 0
            jobs.wait_unless(wait, lambda: self.stopped or self.beat_now)

    def _heartbeat(self) -> None:
        body: dict[str, Any] = {
            "status": "busy" if self.current_job else "online",
            "usage": hardware.usage(),
        }
        if self.current_job:
            body["currentJobId"] = self.current_job
        status, answer = self.beats.request(
            "POST", f"/api/providers/{self.worker_id}/heartbeat", body
        )
        if status == 404:
            self.lost = True  # the main loop registers again
            return
        if status != 200:
            log.warning("heartbeat refused (%s): %s", status, message(answer))
            return
        self.heartbeat_interval_s = float(answer["heartbeatIntervalS"])
        self.poll_wait_s = float(answer["pollWaitS"])
        self.cancel_ids.update(answer.get("cancelJobIds") or [])

    # -- the job loop ----------------------------------------------------------------

    def run(self) -> int:
        """Run until drained, `--burst` finds nothing, or `--max-jobs` is reached."""
        with self.capture_signals():
            if not self.register():
                return 0
            beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            beat.start()
            try:
                self._loop()
            finally:
                self.stopped = True
                beat.join(5)
        log.info("worker stopped after %d job(s)", self.jobs_done)
        return 0

    def _loop(self) -> None:
        attempt = 0
        while not self.draining and not self._enough():
            try:
                if self.lost:
                    log.warning("the server no longer knows this worker; registering again")
                    self.lost = False
                    if not self.register():
                        return
                self.outbox.send(self.api)
                job = self._next_job()
                attempt = 0
                if job is not None or self.beat_failing:
                    # A new lease, or the server is back: heartbeat now, not after a backoff.
                    self.beat_now = True
            except Transient as exc:
                attempt += 1
                if not self._retry("talking to the server", attempt, exc):
                    return
                continue
            if job is None:
                if self.config.burst:
                    return
                continue
            self._run(job)

    def _enough(self) -> bool:
        return self.config.max_jobs is not None and self.jobs_done >= self.config.max_jobs

    def _next_job(self) -> dict[str, Any] | None:
        """Long-poll in a helper thread so that a signal can cut the wait short."""
        wait = 0 if self.config.burst else self.poll_wait_s
        path = f"/api/jobs/pending/{self.worker_id}?wait={wait:g}"
        outcome: dict[str, Any] = {}

        def poll() -> None:
            try:
                outcome["answer"] = self.poller.request("GET", path)
            except Transient as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=poll, name="poll", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(_TICK_S)
            if self.draining or self.lost:
                self.poller.abort()
                thread.join()
        if "error" in outcome and not (self.draining or self.lost):
            raise outcome["error"]
        status, answer = outcome.get("answer", (204, None))
        if status == 404:
            self.lost = True
            return None
        if status in (401, 403):
            raise Fatal(f"the server refused this worker's token ({status}): {message(answer)}")
        if status not in (200, 204):
            raise Transient(f"polling for jobs answered {status}: {message(answer)}")
        return answer if status == 200 else None

    def _run(self, lease: dict[str, Any]) -> None:
        job, attempt = lease.get("job"), lease.get("attempt")
        job_id = job.get("id") if isinstance(job, dict) else None
        if (
            not isinstance(job, dict)
            or not isinstance(job_id, str)
            or not valid_lease(job_id, attempt)
        ):
            # Not what a Qubix server makes: its id would become a file name and a URL path.
            log.error("refused a job whose id or attempt is malformed: %r, %r", job_id, attempt)
            return
        log.info("running job %s (%s, attempt %d)", job_id, job["type"], attempt)
        self.current_job = job_id

        def cancelled() -> bool:
            return self.cancelling or job_id in self.cancel_ids

        try:
            status, result, metrics = jobs.run_job(
                job, cancelled, self.config.allow_command, self.report["gpus"]
            )
        except Exception as exc:  # a job must never take the worker down with it
            log.exception("job %s crashed", job_id)
            status, result, metrics = "failed", {"error": f"worker error: {exc}"}, {}
        finally:
            self.current_job = None
        self.outbox.put(
            job_id, {"attempt": attempt, "status": status, "result": result, "metrics": metrics}
        )
        self.jobs_done += 1
        log.info("job %s %s in %.2f s", job_id, status, metrics.get("durationS", 0))
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        """Send the report now and keep trying while the server is away; a second signal
        stops the trying, and the report stays on disk for the next start."""
        attempt = 0
        while True:
            try:
                self.outbox.send(self.api)
                return
            except Transient as exc:
                attempt += 1
                if not self._retry("sending the result", attempt, exc, lambda: self.cancelling):
                    log.warning(
                        "result kept in %s; it is sent when the worker starts again",
                        self.outbox.path,
                    )
                    return


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
