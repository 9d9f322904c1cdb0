"""The job queue: leases, long-poll dispatch and exactly-once completion.

A job is queued -> assigned (leased to one worker, attempt n) -> completed / failed /
cancelled. Every state change is durable before it is answered. Lease expiry times live in
memory: heartbeats renew them without writing, and after a restart every assigned job gets
a fresh lease so that its worker has time to come back.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from typing import Any

from qubix_cli.server.events import EventBus
from qubix_cli.server.http import ApiError, not_found
from qubix_cli.server.providers import Registry, best_vram_mb
from qubix_cli.server.schemas import JobListQuery, JobReport, JobSubmit
from qubix_cli.server.store import Doc, Store

RESULT_LIMIT_BYTES = 1024 * 1024
TERMINAL = ("completed", "failed", "cancelled")
AGENT_LOST = "agent lost"
RESTART_GRACE_S = 60.0


def can_run(provider: Doc, job: Doc) -> bool:
    """Whether a provider may take a job. VRAM is compared with its best single GPU,
    because a job runs on one GPU; the vendor must be that of one of its GPUs."""
    needs = job["requirements"]
    capabilities = set(provider.get("capabilities", [])) | {"benchmark"}
    if job["type"] not in capabilities or not set(needs.get("capabilities", [])) <= capabilities:
        return False
    if job.get("providerId") and job["providerId"] != provider["workerId"]:
        return False
    gpus = provider.get("gpus", [])
    vendor, min_vram = needs.get("gpuVendor"), needs.get("minVramMb")
    if vendor and not any(g["vendor"] == vendor for g in gpus):
        return False
    return min_vram is None or best_vram_mb(provider) >= min_vram


class JobQueue:
    def __init__(self, store: Store, events: EventBus, registry: Registry) -> None:
        self.store, self.events, self.registry = store, events, registry
        self.lease_s = registry.settings.lease_s
        jobs = sorted(store.values("jobs"), key=lambda j: j["createdAt"])
        self._queued: OrderedDict[str, None] = OrderedDict(
            (j["id"], None) for j in jobs if j["status"] == "queued"
        )
        # After a restart, workers may be in their reconnect backoff (up to 60 s).
        grace = time.time() + self.lease_s + RESTART_GRACE_S
        self._leases = {j["id"]: grace for j in jobs if j["status"] == "assigned"}
        self._waiters: OrderedDict[str, asyncio.Future[Doc | None]] = OrderedDict()
        self._cancels: dict[str, set[str]] = {}

    # -- submitter side --------------------------------------------------------------

    async def submit(self, body: JobSubmit, payload: dict[str, Any]) -> Doc:
        now = time.time()
        job = body.model_dump()
        job.update(
            id=f"job_{int(now * 1000):011x}{secrets.token_hex(4)}",
            payload=payload,
            status="queued",
            attempt=0,
            workerId=None,
            createdAt=now,
            updatedAt=now,
            result=None,
            metrics=None,
            history=[{"event": "created", "at": now}],
        )
        self.store.put("jobs", job)
        self._queued[job["id"]] = None
        await self.store.sync()
        self.events.publish("JOB_QUEUED", job)
        self._dispatch(job["id"])
        return self.view(self._job(job["id"]))

    async def cancel(self, job_id: str) -> Doc:
        job = self._job(job_id)
        if job["status"] in TERMINAL:
            raise ApiError(409, "job_finished", f"job {job_id} is already {job['status']}")
        if job["status"] == "assigned":
            self._cancels.setdefault(job["workerId"], set()).add(job_id)
        job = self._change(job, "cancelled", {"event": "cancelled"})
        await self.store.sync()
        self.events.publish("JOB_CANCELLED", job)
        return self.view(job)

    def get(self, job_id: str) -> Doc:
        return self.view(self._job(job_id))

    def search(self, query: JobListQuery) -> tuple[list[Doc], int]:
        found = [
            j
            for j in self.store.values("jobs")
            if (query.status is None or j["status"] == query.status)
            and (query.providerId is None or j["workerId"] == query.providerId)
        ]
        found.sort(key=lambda j: j["createdAt"], reverse=True)
        page = found[query.offset : query.offset + query.limit]
        return [self.view(j) for j in page], len(found)

    def view(self, job: Doc) -> Doc:
        lease = self._leases.get(job["id"]) if job["status"] == "assigned" else None
        return {**job, "leaseExpiresAt": lease}

    # -- worker side -----------------------------------------------------------------

    async def lease(self, provider: Doc, wait_s: float) -> Doc | None:
        """The oldest queued job this provider can run, leased to it, or None after `wait_s`."""
        job = self._first_match(provider)
        if job is None and wait_s > 0:
            job = await self._wait_for_job(provider["workerId"], wait_s)
        if job is None:
            return None
        await self.store.sync()
        return job

    async def _wait_for_job(self, worker_id: str, wait_s: float) -> Doc | None:
        previous = self._waiters.pop(worker_id, None)
        if previous is not None and not previous.done():
            previous.set_result(None)  # a newer poll from the same worker replaces it
        future: asyncio.Future[Doc | None] = asyncio.get_running_loop().create_future()
        self._waiters[worker_id] = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_s)
        except TimeoutError:
            # A job handed over just as the wait ran out is still this worker's.
            return future.result() if future.done() else None
        finally:
            if self._waiters.get(worker_id) is future:
                del self._waiters[worker_id]
            if not future.done():
                future.set_result(None)

    def _first_match(self, provider: Doc) -> Doc | None:
        for job_id in self._queued:
            job = self._job(job_id)
            if can_run(provider, job):
                return self._lease(job, provider["workerId"])
        return None

    def _dispatch(self, job_id: str) -> None:
        """Hand a queued job straight to the first waiting worker that can run it."""
        job = self._job(job_id)
        if job["status"] != "queued":
            return  # a polling worker took it while the submission was being saved
        for worker_id, future in self._waiters.items():  # left as soon as one is changed
            provider = self.store.get("providers", worker_id)
            if future.done() or provider is None or not self.registry.is_online(worker_id):
                continue
            if can_run(provider, job):
                del self._waiters[worker_id]
                future.set_result(self._lease(job, worker_id))
                return

    def _lease(self, job: Doc, worker_id: str) -> Doc:
        attempt = job["attempt"] + 1
        now = time.time()
        entry = {"event": "leased", "workerId": worker_id, "attempt": attempt}
        job = self._change(job, "assigned", entry, attempt=attempt, workerId=worker_id)
        self._leases[job["id"]] = now + self.lease_s
        self.events.publish("JOB_ASSIGNED", job)
        return self.view(job)

    def heartbeat(self, worker_id: str, current_job_id: str | None) -> list[str]:
        """Renew the lease of the job the worker names; return jobs it must cancel."""
        if current_job_id is not None and current_job_id in self._leases:
            job = self.store.get("jobs", current_job_id)
            if job is not None and job["workerId"] == worker_id:
                self._leases[current_job_id] = time.time() + self.lease_s
        cancels = self._cancels.get(worker_id)
        if not cancels:
            return []
        answer = sorted(cancels)
        cancels.intersection_update({current_job_id})  # repeat while it still runs it
        if not cancels:
            self._cancels.pop(worker_id, None)
        return answer

    async def complete(self, job_id: str, worker_id: str, report: JobReport) -> Doc:
        """Accept the report of the lease holder once; the same report again changes nothing."""
        job = self._job(job_id)
        if _is_repeat(job, worker_id, report):
            return self.view(job)
        if job["status"] != "assigned" or (job["workerId"], job["attempt"]) != (
            worker_id,
            report.attempt,
        ):
            raise ApiError(
                409,
                "lease_not_held",
                f"job {job_id} is {job['status']} (attempt {job['attempt']}); this worker "
                f"does not hold the lease of attempt {report.attempt}, so the report is refused",
            )
        if len(json.dumps(report.result)) > RESULT_LIMIT_BYTES:
            raise ApiError(413, "result_too_large", "the job result is over 1 MiB; report less")
        entry = {"event": "reported", "workerId": worker_id, "attempt": report.attempt}
        job = self._change(job, report.status, entry, result=report.result, metrics=report.metrics)
        await self.store.sync()
        self.events.publish(f"JOB_{report.status.upper()}", job)
        return self.view(job)

    def expire_leases(self) -> None:
        """Requeue jobs whose worker stopped renewing the lease ("agent lost")."""
        now = time.time()
        for job_id, expires in list(self._leases.items()):
            if expires < now:
                self._expire(self._job(job_id))

    def _expire(self, job: Doc) -> None:
        entry = {"event": "lease_expired", "reason": AGENT_LOST, "workerId": job["workerId"]}
        entry["attempt"] = job["attempt"]
        if job["attempt"] >= job["maxAttempts"]:
            job = self._change(job, "failed", entry, result={"error": AGENT_LOST})
            self.events.publish("JOB_FAILED", job)
            return
        job = self._change(job, "queued", entry)
        self._queued[job["id"]] = None
        self._queued = OrderedDict(
            sorted(self._queued.items(), key=lambda kv: self._job(kv[0])["createdAt"])
        )
        self.events.publish("JOB_REQUEUED", job)
        self._dispatch(job["id"])

    # -- state -----------------------------------------------------------------------

    def _job(self, job_id: str) -> Doc:
        job = self.store.get("jobs", job_id)
        if job is None:
            raise not_found(f"job {job_id!r}")
        return job

    def _change(self, job: Doc, status: str, entry: Doc, **fields: Any) -> Doc:
        """Record a state change (a new document: stored documents are never mutated)."""
        now = time.time()
        entry = {**entry, "status": status, "at": now}
        job = {**job, **fields, "status": status, "updatedAt": now}
        job["history"] = [*job["history"], entry]
        self.store.put("jobs", job)
        if status != "queued":
            self._queued.pop(job["id"], None)
        if status != "assigned":
            self._leases.pop(job["id"], None)
        return job


def _is_repeat(job: Doc, worker_id: str, report: JobReport) -> bool:
    last = job["history"][-1]
    return (
        last["event"] == "reported"
        and last["workerId"] == worker_id
        and (last["attempt"], last["status"]) == (report.attempt, report.status)
        and job["result"] == report.result
    )
