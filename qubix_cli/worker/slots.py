"""Job slots: as many jobs at once as the machine has GPUs (one at a time without GPUs),
each in its own thread with GPUs that no other running job holds, and each result kept in
the durable outbox and sent at once.

A running job stops when the server ends it (`cancel_ids`, from the heartbeat), when the
provider's pause hands it back (`preempting`: reported `preempted`, no attempt spent), or
on a second signal (`cancelling`: all of them, reported failed).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from qubix_cli.worker import jobs
from qubix_cli.worker.client import Client, Transient
from qubix_cli.worker.envs import Envs
from qubix_cli.worker.outbox import Outbox, valid_lease
from qubix_cli.worker.pausing import Pausing

log = logging.getLogger("qubix.worker")
TICK_S = 0.2  # how often a busy worker looks at its running jobs
Retry = Callable[[str, int, Exception, Callable[[], bool]], bool]


class Slots:
    """The jobs running now, each with the positions of the GPUs it was given."""

    def __init__(
        self,
        report: dict[str, Any],
        policy: jobs.Policy,
        cpu_threads: int | None,
        *,
        api: Client,
        envs: Envs,
        outbox: Outbox,
        pausing: Pausing,
        retry: Retry,
        on_free: Callable[[], None],
    ) -> None:
        self.report, self.policy, self.cpu_threads = report, policy, cpu_threads
        self.api, self.envs, self.outbox, self.pausing = api, envs, outbox, pausing
        self.retry, self.on_free = retry, on_free
        self.count = max(1, len(report["gpus"]))
        self.running: dict[str, list[int]] = {}
        self.changed = threading.Condition()  # a job started or finished
        self.cancel_ids: set[str] = set()  # jobs the server ended
        self.preempting: set[str] = set()  # running jobs being handed back
        self.cancelling = False
        self.started = 0
        self.done = 0

    def ids(self) -> list[str]:
        with self.changed:
            return list(self.running)

    def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for a job to start or finish."""
        with self.changed:
            self.changed.wait(timeout_s)

    def free(self) -> bool:
        """Wait a moment for a slot to be free (a job to finish); whether one is."""
        with self.changed:
            if len(self.running) >= self.count:
                self.changed.wait(TICK_S)
            return len(self.running) < self.count

    def wait_all(self) -> None:
        """Let the running jobs finish and report (a second signal cancels them)."""
        with self.changed:
            while self.running:
                self.changed.wait(TICK_S)

    def hand_back(self) -> None:
        """Stop the running jobs and hand them back (reported `preempted`)."""
        with self.changed:
            self.preempting.update(self.running)

    def start(self, lease: dict[str, Any]) -> None:
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
            self.started += 1
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
        outcome = self._outcome(job, attempt, assigned, networks)
        if job_id in self.preempting:  # handed back: not a failure, no attempt spent
            outcome = "preempted", {"reason": self.pausing.reason()}, outcome[2]
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
                self.done += 1
                self.changed.notify_all()
            self.on_free()  # the marketplace sees it free now, not a beat later

    def _outcome(
        self, job: dict[str, Any], attempt: int, assigned: list[int], networks: list[str]
    ) -> jobs.Outcome:
        job_id = job["id"]

        def cancelled() -> bool:
            return self.cancelling or job_id in self.cancel_ids or job_id in self.preempting

        wanted = job.get("requirements", {}).get("gpus") or 0
        run = jobs.Run(
            job,
            cancelled,
            gpus=self.report["gpus"],
            assigned=assigned,
            policy=self.policy,
            memory_mb=self.report["ramMb"] * 3 // 4 // self.count or None,
            api=self.api,
            attempt=attempt,
            networks=networks,
            envs=self.envs,
            cpu_threads=self.cpu_threads,
        )
        if len(assigned) < wanted:
            error = f"the job asks for {wanted} GPUs and fewer are free here"
            return "failed", {"error": error, "failedBy": "worker"}, {}
        try:
            return jobs.run_job(run)
        except Exception as exc:  # a job must never take the worker down with it
            log.exception("job %s crashed", job_id)
            return "failed", {"error": f"worker error: {exc}", "failedBy": "worker"}, {}

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
                if not self.retry("sending the result", attempt, exc, lambda: self.cancelling):
                    log.warning(
                        "result kept in %s; it is sent when the worker starts again",
                        self.outbox.path,
                    )
                    return
