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

from qubix_cli.worker import AGENT_VERSION, engine, guest, hardware, jobs, sandbox, state
from qubix_cli.worker.client import Client, Transient, message
from qubix_cli.worker.envs import Envs
from qubix_cli.worker.outbox import Outbox, valid_lease

log = logging.getLogger("qubix.worker")
BACKOFF_CAP_S = 60.0
PAUSED_REASON = "by the provider"
PREFERENCES_CHECK_S = 10.0
IDLE_DIAGNOSIS_S = 3600.0  # idle this long, it logs why (once an hour at most)
_TICK_S = 0.2  # how often a busy worker looks at its running jobs
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
        self.report = report or hardware.detect()
        prefs = guest.load(self.home)
        most = prefs.get("maxGpus")
        if isinstance(most, int) and 0 <= most < len(self.report["gpus"]):
            # the provider keeps the others for itself: they are neither offered nor used
            self.report = {**self.report, "gpus": self.report["gpus"][:most]}
        cpu = self.report["cpu"]
        self.cpu_threads = guest.cpu_threads(prefs, int(cpu.get("threads") or 1))
        if self.cpu_threads is not None:  # offered as what jobs may use
            limited = {"threads": self.cpu_threads, "cores": min(cpu["cores"], self.cpu_threads)}
            self.report = {**self.report, "cpu": {**cpu, **limited}}
        self.idle_only = bool(prefs.get("idleMinutes"))  # as registered
        self.api = Client(config.server)  # main thread: register, reports
        self.beats = Client(config.server)  # heartbeat thread
        self.poller = Client(config.server, timeout_s=90)  # job long-poll thread
        self.outbox = Outbox(self.home)
        self.envs = Envs(os.path.join(self.home, "envs"), int(config.env_cache_gb * 2**30))
        self.heartbeat_interval_s = 30.0
        self.poll_wait_s = 25.0
        # The jobs running now, each with the positions of the GPUs it was given.
        self.running: dict[str, list[int]] = {}
        self.changed = threading.Condition()  # a job started or finished
        self.slots = max(1, len(self.report["gpus"]))
        self.cancel_ids: set[str] = set()
        self.draining = False
        self.cancelling = False
        self.stopped = False
        self.lost = False
        self.wake_beat = threading.Event()  # set to heartbeat at once (or to stop)
        self.beat_failing = False
        self.jobs_done = 0
        self.jobs_started = 0
        self.idle_since = self.diagnosed_at = time.monotonic()
        self.offer: dict[str, Any] | None = None  # a signed update the server offers
        self.pause: dict[str, Any] | None = None  # the provider's `pause`, while in force
        self.preempting: set[str] = set()  # running jobs being handed back
        self.last_usage: dict[str, Any] | None = None  # what the last heartbeat said
        self.rest_reason: str | None = None  # why the preferences say rest, when they do
        self.rest_checked = 0.0  # when the preferences were last looked at
        self.prefs_problem: str | None = None  # what is wrong with them, said once
        self.refused: set[str] = set()  # versions this worker will not take (checked once)

    # -- signals ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Only flags, and the long-poll cut short (its socket shut down): the main
        thread's wait on it returns at once, so an idle worker needs no ticking to stop."""
        if self.draining:
            self.cancelling = True
        self.draining = True
        self.poller.abort()

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
            "capabilities": jobs.capabilities(self.config.policy),
            "sandbox": "bubblewrap" if sandbox.available() else "none",
            "networkJobs": self.config.policy.allow_network,
            "concurrency": self.slots,
            "gpuEngine": engine.find_engine(self.report["gpus"], [])[0],
            "agentVersion": AGENT_VERSION,
        }
        if self.config.update_failed:
            body["updateFailed"] = self.config.update_failed
        if self.idle_only:
            body["idleOnly"] = True
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
            if status == 426:  # too old for this server: update, or stop
                self.offer = _offered(answer)
                if not self._wants_update() or not self._take_update():
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
        with self.changed:
            running = list(self.running)
        body: dict[str, Any] = {
            "status": "busy" if running else "online",
            "usage": hardware.usage(),
            "currentJobIds": running,
        }
        self.last_usage = body["usage"]
        pause = self.pause
        if pause is not None:
            body.update(status="paused", pausedReason=pause["reason"])
            if pause.get("until"):
                body["pausedUntil"] = pause["until"]
        status, answer = self.beats.request(
            "POST", f"/api/providers/{self.worker_id}/heartbeat", body
        )
        if status == 404:
            log.warning("the server no longer knows this worker; registering again")
            self.lost = True  # the main loop registers again
            return
        if status == 426:
            self.offer = _offered(answer)
            log.warning("heartbeat refused: %s", message(answer))
            return
        if status != 200:
            log.warning("heartbeat refused (%s): %s", status, message(answer))
            return
        self.heartbeat_interval_s = float(answer["heartbeatIntervalS"])
        self.poll_wait_s = float(answer["pollWaitS"])
        self.cancel_ids.update(answer.get("cancelJobIds") or [])
        self.offer = answer.get("update")

    # -- the job loop ----------------------------------------------------------------

    def run(self) -> int:
        """Run until drained, `--burst` finds nothing, or `--max-jobs` is reached."""
        with self.capture_signals():
            if not self.register():
                return 0
            if self.config.update_trial:
                return self._prove()
            beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            beat.start()
            try:
                self._loop()
                self._finish_running()
            finally:
                self.stopped = True
                self.wake_beat.set()
                beat.join(5)
        log.info("worker stopped after %d job(s)", self.jobs_done)
        return 0

    def _prove(self) -> int:
        """On trial after an update: one heartbeat the server accepts, then say so."""
        self._heartbeat()
        if self.lost:
            raise Fatal("the server did not accept this version's heartbeat")
        assert self.config.update_trial is not None
        with open(self.config.update_trial, "w") as f:
            f.write(AGENT_VERSION)
        log.info("version %s registered and heartbeated: it takes over", AGENT_VERSION)
        return 0

    def _loop(self) -> None:
        attempt = 0
        while not self.draining and not self._enough():
            if self._paused():
                with self.changed:
                    self.changed.wait(IDLE_TICK_S)
                continue
            if self._wants_update():
                if self.running:  # finish the running jobs first; take no new ones
                    with self.changed:
                        self.changed.wait(_TICK_S)
                    continue
                self._take_update()
                continue
            if not self._free_slot():
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
            self._start(job)

    def _paused(self) -> bool:
        """Whether the provider paused this worker (`pause`, read from the state dir); a
        pause that begins or ends is heartbeated at once. With `--hand-back` the running
        jobs are stopped and handed back (reported `preempted`)."""
        pause = state.paused(self.home, time.time())
        if pause is not None:
            pause = {**pause, "reason": PAUSED_REASON}
        elif self._preferences_say_rest():
            pause = {"until": None, "handBack": True, "reason": self.rest_reason}
        if (pause or {}).get("reason") != (self.pause or {}).get("reason"):
            if pause:
                log.info("paused: %s", pause["reason"])
            else:
                log.info("taking jobs again")
            self._beat_now()
        self.pause = pause
        if pause is not None and pause.get("handBack"):
            with self.changed:
                self.preempting.update(self.running)
        return pause is not None

    def _beat_now(self) -> None:
        self.wake_beat.set()

    def _preferences_say_rest(self) -> bool:
        """Whether the provider's preferences (guest.py) say to take no work now: outside
        its schedule, on battery, a GPU too hot. Looked at every 10 s at most."""
        now = time.monotonic()
        if now - self.rest_checked < PREFERENCES_CHECK_S:
            return self.rest_reason is not None
        self.rest_checked = now
        try:
            prefs = guest.load_strict(self.home)
        except guest.PreferenceError as exc:  # a hand edit gone wrong: as if there were none
            if str(exc) != self.prefs_problem:
                log.error("preferences ignored until fixed: %s", exc)
            self.prefs_problem, prefs = str(exc), {}
        else:
            self.prefs_problem = None
        if bool(prefs.get("idleMinutes")) != self.idle_only:
            self.idle_only = not self.idle_only
            log.info("idle-only is now %s: registering again to say so", self.idle_only)
            self.lost = True  # the main loop registers again
        if not prefs:
            self.rest_reason = None
            return False
        battery = guest.on_battery() if prefs.get("notOnBattery") else None
        idle = guest.idle_seconds(time.time()) if prefs.get("idleMinutes") else None
        temp = guest.hottest_c(self.last_usage)
        self.rest_reason = guest.reason_to_rest(
            prefs, time.localtime(), battery, temp, self.rest_reason, idle
        )
        return self.rest_reason is not None

    def _pause_asked(self) -> bool:
        return os.path.exists(os.path.join(self.home, state.PAUSE_FILE))

    def _wants_update(self) -> bool:
        """Whether an update is offered that this worker can and will take."""
        offer = self.offer
        if offer is None or offer.get("version") in self.refused:
            return False
        from qubix_cli.worker import update  # only when one is offered: an idle worker stays small

        if not update.older(AGENT_VERSION, str(offer.get("version"))):
            return False  # only ever forward
        if update.running_zipapp() is None:
            log.info(
                "version %s is offered; this worker runs from the qubix package, which "
                "updates with pip, not by itself",
                offer.get("version"),
            )
            self.refused.add(str(offer.get("version")))
            return False
        return True

    def _take_update(self) -> bool:
        """Check the offered update and restart into it (this returns only if it was
        refused, or cannot be taken: the running version carries on)."""
        from qubix_cli.worker import update

        offer = self.offer or {}
        version = str(offer.get("version"))
        pyz = update.running_zipapp()
        if pyz is None:
            return False
        log.info("updating from %s to %s", AGENT_VERSION, version)
        try:
            update.install(self.api, offer, pyz, self.home)
        except (update.Refused, OSError, KeyError, TypeError) as exc:
            log.error("the update to %s is refused: %s; %s runs on", version, exc, AGENT_VERSION)
            self.refused.add(version)
            self.offer = None
            return False
        self.stopped = True
        update.restart(pyz, self.config.run_args, version, self.heartbeat_interval_s)
        return False  # not reached: the process became the trial

    def _diagnose_when_idle(self) -> None:
        """Idle for an hour: log the coordinator's answer to "why no jobs?" (at most hourly)."""
        now = time.monotonic()
        if self.running or now - max(self.idle_since, self.diagnosed_at) < IDLE_DIAGNOSIS_S:
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
        return self.config.max_jobs is not None and self.jobs_started >= self.config.max_jobs

    def _free_slot(self) -> bool:
        """Wait a moment for a slot to be free (a job to finish); whether one is."""
        with self.changed:
            if len(self.running) >= self.slots:
                self.changed.wait(_TICK_S)
            return len(self.running) < self.slots

    def _finish_running(self) -> None:
        """Let the running jobs finish and report (a second signal cancels them)."""
        with self.changed:
            while self.running:
                self.changed.wait(_TICK_S)

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
            thread.join(IDLE_TICK_S)  # a signal cuts the poll short (see _on_signal)
            if self.draining or self.lost or self._pause_asked():
                self.poller.abort()
                thread.join()
        if "error" in outcome and not (self.draining or self.lost or self._pause_asked()):
            raise outcome["error"]
        status, answer = outcome.get("answer", (204, None))
        if status == 404:
            self.lost = True
            return None
        if status in (401, 403):
            raise Fatal(f"the server refused this worker's token ({status}): {message(answer)}")
        if status == 426:
            self.offer = _offered(answer)
            return None
        if status not in (200, 204):
            raise Transient(f"polling for jobs answered {status}: {message(answer)}")
        return answer if status == 200 else None

    def _start(self, lease: dict[str, Any]) -> None:
        """Run a leased job in its own thread, on GPUs that no other running job has."""
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
        with self.changed:
            if job_id in self.running:
                log.warning("the server handed job %s again while it runs here", job_id)
                self.changed.wait(1.0)
                return
            assigned = self._gpus_for(job)
            self.running[job_id] = assigned
            self.jobs_started += 1
        log.info("running job %s (%s, attempt %d, GPUs %s)", job_id, job["type"], attempt, assigned)
        networks = lease.get("inputNetworks") or []
        thread = threading.Thread(
            target=self._run,
            args=(job, attempt, assigned, networks),
            name=f"job-{job_id}",
            daemon=True,
        )
        thread.start()

    def _gpus_for(self, job: dict[str, Any]) -> list[int]:
        """The first free GPUs, as many as the job asks for (the server leases no more
        than are free; a job that still finds too few fails when it starts)."""
        wanted = job.get("requirements", {}).get("gpus") or 0
        taken = {position for gpus in self.running.values() for position in gpus}
        free = [p for p in range(len(self.report["gpus"])) if p not in taken]
        return free[:wanted] if len(free) >= wanted else []

    def _run(
        self, job: dict[str, Any], attempt: int, assigned: list[int], networks: list[str]
    ) -> None:
        job_id = job["id"]

        def cancelled() -> bool:
            return self.cancelling or job_id in self.cancel_ids or job_id in self.preempting

        wanted = job.get("requirements", {}).get("gpus") or 0
        run = jobs.Run(
            job,
            cancelled,
            gpus=self.report["gpus"],
            assigned=assigned,
            policy=self.config.policy,
            memory_mb=self.report["ramMb"] * 3 // 4 // self.slots or None,
            api=self.api,
            attempt=attempt,
            networks=networks,
            envs=self.envs,
            cpu_threads=self.cpu_threads,
        )
        outcome: jobs.Outcome = (
            "failed",
            {
                "error": f"the job asks for {wanted} GPUs and fewer are free here",
                "failedBy": "worker",
            },
            {},
        )
        try:
            if len(assigned) >= wanted:
                outcome = jobs.run_job(run)
        except Exception as exc:  # a job must never take the worker down with it
            log.exception("job %s crashed", job_id)
            outcome = "failed", {"error": f"worker error: {exc}", "failedBy": "worker"}, {}
        if job_id in self.preempting:  # handed back: not a failure, no attempt spent
            why = (self.pause or {}).get("reason") or PAUSED_REASON
            outcome = "preempted", {"reason": why}, outcome[2]
        try:
            if job_id in self.cancel_ids:  # the server ended it: a report would be refused
                self.cancel_ids.discard(job_id)
                log.info("job %s stopped: the server ended it (cancelled or out of time)", job_id)
            else:
                self._finished(job_id, attempt, *outcome)
        except Exception:  # its state dir is gone, say: the worker must still be able to stop
            log.exception("the report of job %s could not be kept", job_id)
        finally:
            with self.changed:
                del self.running[job_id]
                self.preempting.discard(job_id)
                self.jobs_done += 1
                self.changed.notify_all()
            self._beat_now()  # the marketplace sees it free now, not a beat later

    def _finished(
        self, job_id: str, attempt: int, status: str, result: Any, metrics: dict[str, Any]
    ) -> None:
        self.outbox.put(
            job_id, {"attempt": attempt, "status": status, "result": result, "metrics": metrics}
        )
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


def _offered(answer: Any) -> dict[str, Any] | None:
    """The update a 426 answer offers, if any."""
    details = answer.get("details") if isinstance(answer, dict) else None
    offer = details.get("update") if isinstance(details, dict) else None
    return offer if isinstance(offer, dict) else None


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
