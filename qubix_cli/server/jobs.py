"""The job queue: leases, long-poll dispatch and exactly-once completion.

A job is queued -> assigned (leased to one worker, attempt n) -> completed / failed /
cancelled. Every state change is a transaction, durable before it is answered or
announced. A lease's expiry is volatile state: heartbeats renew it without writing, and
after a restart every assigned job gets a fresh lease so that its worker has time to come
back. Which job a worker gets is decided in `dispatch`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
from collections import Counter, OrderedDict
from typing import Any, NamedTuple

from qubix_cli.errors import Conflict, StorageError, TooLarge
from qubix_cli.server import dispatch, failures, trust, verdicts
from qubix_cli.server.accounts import Accounts, Caller, earned, money
from qubix_cli.server.events import EventBus
from qubix_cli.server.http import not_found
from qubix_cli.server.metrics import Metrics
from qubix_cli.server.providers import Clock, Registry
from qubix_cli.server.schemas import FINISHED, JobListQuery, JobReport, JobSubmit
from qubix_cli.server.store import ANYTHING, Doc, Store, Transaction, run_later
from qubix_cli.worker import engine

RESULT_LIMIT_BYTES = 1024 * 1024
METRICS_LIMIT_BYTES = 64 * 1024


class Waiter(NamedTuple):
    """A worker in a long-poll: its record as its poll found it, and what the poll awaits."""

    provider: Doc
    future: asyncio.Future[Doc | None]


AGENT_LOST = "agent lost"
PROVIDER_REMOVED = "provider removed"
TIMED_OUT = "timeout"
HOLDER = "leaseHolder"  # the hash of the token that took the lease: never shown
SECRET = "***"  # what answers show for each value of a job's env: only its lease has them
RESTART_GRACE_S = 60.0


class JobQueue:
    def __init__(
        self,
        store: Store,
        events: EventBus,
        registry: Registry,
        accounts: Accounts,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.store, self.events, self.registry, self.clock = store, events, registry, clock
        self.accounts, self.metrics = accounts, metrics
        for reason in (AGENT_LOST, PROVIDER_REMOVED, TIMED_OUT):
            metrics.leases_expired.labels(reason)  # shown as 0 before the first
        # When each account was last served (fair shares, `dispatch.candidates`).
        self._turns: dict[str, int] = {}
        self._served = itertools.count()
        self.lease_s = registry.settings.lease_s
        # Workers waiting in a long-poll, in the order they came: only this process can
        # answer their connections, so they live here, not in the store.
        self._waiters: OrderedDict[str, Waiter] = OrderedDict()
        self.rng = random.Random()  # when canaries come (tests seed it)
        # What the store tells of changes (`changed`), so that a poll asks the store nothing
        # while nothing changed: whether a job may be queued (unknown at first), and which
        # worker holds each assigned job (known once `recover` read them).
        self._queued, self._queued_told = True, 0
        self._holders: dict[str, str] = {}
        self._holding: Counter[str] = Counter()
        self._holders_known = False
        self._touched: set[str] | None = None  # jobs told of while the holders are read
        self._reading = asyncio.Lock()  # one reading of the holders at a time
        self._to_offer: set[str] = set()  # jobs queued on another server, to offer here
        self._catching_up: bool | None = None  # None, True (running), False (and again)
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """At start: workers may be in their reconnect backoff (up to 60 s), so every
        assigned job's lease runs at least that long from now; unless other servers use
        the database (a replica joined them or restarted: they served the fleet meanwhile,
        and a lost worker's lease must not last a minute longer for it)."""
        assigned = await self._read_holders()
        if await self.store.others():
            return
        grace = self.clock() + self.lease_s + RESTART_GRACE_S
        for job in assigned:
            expires = max(await self._lease_expiry(job), grace)
            self.store.remember("leases", job["id"], {"expiresAt": expires})

    # -- what the store tells of changes -------------------------------------------------

    def changed(self, table: str, key: str, summary: Doc | None, here: bool) -> None:
        """A job changed, here or on another server on the same database (ANYTHING: some
        changes may have been missed). A job queued elsewhere is offered to the workers
        waiting here."""
        if table == ANYTHING:
            self._queued = True
            if self._catching_up is None:
                self._catching_up = True
                run_later(self._tasks, self._catch_up())
            else:
                self._catching_up = False  # once more when this one is done
            return
        if table != "jobs":
            return
        status = summary.get("status") if summary else None
        self._hold(key, summary.get("workerId") if summary and status == "assigned" else None)
        if status == "queued":
            self._queued, self._queued_told = True, self._queued_told + 1
            if not here and self._waiters:
                self._to_offer.add(key)
                if len(self._to_offer) == 1:
                    run_later(self._tasks, self._offer_told())

    def _hold(self, job_id: str, worker_id: str | None) -> None:
        before = self._holders.pop(job_id, None)
        if before is not None:
            self._holding[before] -= 1
            if not self._holding[before]:
                del self._holding[before]
        if worker_id is not None:
            self._holders[job_id] = worker_id
            self._holding[worker_id] += 1
        if self._touched is not None:
            self._touched.add(job_id)

    def _may_hold(self, worker_id: str) -> bool:
        """False only when the worker certainly holds no lease (no read needed)."""
        return not self._holders_known or worker_id in self._holding

    async def _read_holders(self) -> list[Doc]:
        """Read who holds each assigned job (jobs told of meanwhile keep what was told);
        the assigned jobs."""
        async with self._reading:
            return await self._read_holders_now()

    async def _read_holders_now(self) -> list[Doc]:
        """What was known stays in use while it is read again, and if the read fails:
        changes told meanwhile are kept, and while the database is down nothing changes
        (heartbeats go on renewing leases from the index)."""
        self._touched = set()
        try:
            assigned = await self.store.scan("jobs", where={"status": "assigned"})
            found = {job["id"]: job["workerId"] for job in assigned}
            for job_id in [j for j in self._holders if j not in found]:
                if job_id not in self._touched:
                    self._hold(job_id, None)
            for job_id, worker_id in found.items():
                if job_id not in self._touched:
                    self._hold(job_id, worker_id)
        finally:
            self._touched = None
        self._holders_known = True
        return assigned

    async def _catch_up(self) -> None:
        """After changes may have been missed: who holds what is read again, and the
        oldest queued jobs are offered to the workers waiting here (once at a time: while
        the database is down, the store says so every second)."""
        try:
            while True:
                self._catching_up = True
                await self._read_holders()
                if self._waiters:
                    where = {"status": "queued"}
                    for job in await self.store.scan("jobs", where, "createdAt", limit=50):
                        await self._offer(job)
                if self._catching_up:  # not told again meanwhile
                    return
        except StorageError:
            pass  # while the database is down, the store says so again every second
        finally:
            self._catching_up = None

    async def _offer_told(self) -> None:
        """The jobs that other servers queued, offered to the workers waiting here."""
        while self._to_offer:
            job_id = self._to_offer.pop()
            if not self._waiters:
                self._to_offer.clear()
                return
            try:
                job = await self.store.get("jobs", job_id)
            except StorageError:
                continue  # the workers find it when they poll again
            if job is not None and job["status"] == "queued":
                await self._offer(job)

    async def _any_queued(self) -> bool:
        """Whether a job is queued: no read while none was told of since a read found none."""
        if not self._queued:
            return False
        told = self._queued_told
        if await self.store.count("jobs", where={"status": "queued"}):
            return True
        if told == self._queued_told:
            self._queued = False
        return False

    # -- submitter side --------------------------------------------------------------

    async def submit(self, body: JobSubmit, payload: dict[str, Any], caller: Caller) -> Doc:
        job = self._new_job(body, payload)
        least = self.registry.settings.secrets_min_reputation
        if payload.get("env") and "minReputation" not in body.requirements.model_fields_set:
            # A renter's secrets go only to workers with a record, unless it says otherwise.
            job["requirements"]["minReputation"] = least
        taker, checked = self._takers(job, None)
        try:
            leased = await self._create(job, taker.provider if taker else None, caller)
        except BaseException:
            for waiter in (taker, checked):
                if waiter and not waiter.future.done():
                    waiter.future.set_result(None)  # handed nothing: the worker polls again
            raise
        if checked is not None:
            await self._give_canary(checked, job)
        self.events.publish("JOB_QUEUED", job)
        if taker:
            view = await self._leased(leased) if leased else None
            if not taker.future.done():
                taker.future.set_result(view)
        return await self.get(job["id"])

    def _new_job(self, body: JobSubmit, payload: dict[str, Any]) -> Doc:
        """A queued job as the store keeps it: a renter's submission, or a canary."""
        now = self.clock()
        job = body.model_dump()
        job.update(
            id=f"job_{secrets.token_hex(10)}",  # no creation time: it would date a canary
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
        return job

    def worst_case(self, job: Doc) -> float:
        """The most a job may cost: its price limit (or the server's maximum price) for
        its whole timeout, for each run it may be charged (three if it is replicated)."""
        most = job["requirements"].get("maxPricePerHour")
        if most is None:
            most = self.registry.settings.max_price_per_hour
        runs = 3 if job.get("verify") == "replicate" else 1
        return money(most * job["timeoutS"] / 3600.0 * runs)

    async def _create(self, job: Doc, taker: Doc | None, caller: Caller) -> Doc | None:
        """Store a new job (within its account's quotas and balance), leased in the same
        commit to the waiting worker `taker` (unless it deregistered while it waited, or
        the account runs as many jobs as its quota allows); the leased job, if it was."""
        async with self.store.transaction() as tx:
            await self.accounts.admit(tx, caller, job, self.worst_case(job))
            tx.put("jobs", job)
            if taker is None or await tx.get("providers", taker["workerId"]) is None:
                return None
            if await self._running_in_full(tx, caller.account):
                return None
            leased = self._lease(tx, job, taker)
        return leased

    async def running_in_full(self, account: str | None) -> bool:
        return await self._running_in_full(self.store, account)

    async def _running_in_full(self, tx: Store | Transaction, account: str | None) -> bool:
        """Whether the account runs as many jobs as its `maxRunning` quota allows."""
        found = await tx.get("accounts", account or "")
        most = found["quota"].get("maxRunning") if found else None
        if most is None:
            return False
        return bool(await tx.count("jobs", {"account": account, "status": "assigned"}) >= most)

    async def cancel(self, job_id: str, caller: Caller) -> Doc:
        async with self.store.transaction() as tx:
            job = await find_job(tx, job_id, caller)
            if job["status"] in FINISHED:
                raise Conflict(f"job {job_id} is already {job['status']}", code="job_finished")
            holder = job["workerId"] if job["status"] == "assigned" else None
            job = await self._finish(tx, job, "cancelled", {"event": "cancelled"}, [])
        self.store.remember("leases", job_id, None)
        if holder is not None:
            await self._tell_to_stop(holder, job_id)
        self.events.publish("JOB_CANCELLED", job)
        return await self.view(job)

    async def _tell_to_stop(self, worker_id: str, job_id: str) -> None:
        """The worker's next heartbeat answer names the job in `cancelJobIds`."""
        pending = await self.store.recall("cancels", worker_id)
        ids = sorted({*(pending or {}).get("jobIds", []), job_id})
        self.store.remember("cancels", worker_id, {"jobIds": ids})

    async def get(self, job_id: str, caller: Caller | None = None) -> Doc:
        """A job as answers show it; one that `caller` may not see is not found."""
        return await self.view(await find_job(self.store, job_id, caller))

    async def search(self, query: JobListQuery, caller: Caller) -> tuple[list[Doc], int]:
        """Jobs, newest first: an operator's of every account, a renter's of its own."""
        where = {
            field: value
            for field, value in (("status", query.status), ("workerId", query.providerId))
            if value is not None
        }
        if not caller.is_operator:
            where["account"] = caller.account
        page = await self.store.scan(
            "jobs", where, "createdAt", descending=True, offset=query.offset, limit=query.limit
        )
        return [await self.view(j) for j in page], await self.store.count("jobs", where)

    async def of_worker(self, worker_id: str, count: int = 20) -> list[Doc]:
        """The last renters' jobs this worker was leased, newest first, as its public page
        shows them: type, state, when it was leased and ended, what it earned."""
        where = {"workerId": worker_id}
        found = await self.store.scan("jobs", where, "updatedAt", descending=True)
        shown = []
        for job in (j for j in found if trust.CANARY not in j and j["status"] != "queued"):
            leased = next(e["at"] for e in reversed(job["history"]) if e["event"] == "leased")
            ended = job["updatedAt"] if job["status"] in FINISHED else None
            lines = await self.store.scan("ledger", {"jobId": job["id"], "workerId": worker_id})
            shown.append(
                {
                    "type": job["type"],
                    "status": job["status"],
                    "leasedAt": leased,
                    "endedAt": ended,
                    "durationS": round(ended - leased, 3) if ended is not None else None,
                    "earned": earned(lines),
                }
            )
            if len(shown) == count:
                break
        return shown

    async def view(self, job: Doc) -> Doc:
        lease = await self._lease_expiry(job) if job["status"] == "assigned" else None
        return {"artifacts": [], **shown(job), "leaseExpiresAt": lease}

    async def _lease_expiry(self, job: Doc) -> float:
        renewed = await self.store.recall("leases", job["id"])
        return float(renewed["expiresAt"] if renewed else job["updatedAt"] + self.lease_s)

    # -- worker side -----------------------------------------------------------------

    async def lease(self, provider: Doc, wait_s: float) -> Doc | None:
        """The job `dispatch` chooses for this provider, leased to it, or None after `wait_s`.
        Now and then (always, while it is quarantined) a canary instead (trust.py)."""
        may_hold = self._may_hold(provider["workerId"])
        room = dispatch.with_room(provider, await held_by(self.store, provider) if may_hold else [])
        if room is not None and trust.owed_check(provider) is not None:
            return await self._canary(provider)  # its replica disagreed with another's
        job = None
        # Nothing queued (the idle fleet's usual answer): no claim to make, no canary due;
        # a submission from now on is offered to this worker while it waits.
        if room is None or await self._any_queued():
            job = await self._claim(provider, None)
        if job is None and wait_s > 0 and room is not None:
            job = await self._wait_for_job(room, wait_s)
        return job

    def _canary_due(self, provider: Doc) -> bool:
        """Whether a canary goes to this worker instead of the renter's job it would be
        handed (DESIGN.md "Dispatch" step 2): canaries cost the fleet only when there is
        work to check, and a quarantined worker gets one for each job it waits out."""
        if not trust.within_ceiling(provider, self.clock()):
            return False  # enough checks this hour: a worker cannot farm them
        return self.registry.settings.canaries and trust.canary_due(provider, self.rng)

    async def _claim(self, provider: Doc, job_id: str | None) -> Doc | None:
        """Lease to `provider` the job dispatch chooses (of all queued, or only `job_id`),
        or a canary instead when one is due. A worker that holds as many leases as it runs
        jobs at once is answered its oldest lease again instead (it asks only when it has
        lost track of one): one worker cannot hoard the queue."""
        with self.metrics.dispatch.time():
            return await self._claim_timed(provider, job_id)

    async def _claim_timed(self, provider: Doc, job_id: str | None) -> Doc | None:
        async with self.store.transaction() as tx:
            held = await held_by(tx, provider)
            room = dispatch.with_room(provider, held)
            if room is None:
                return None if job_id else await self._lease_view(held[0])
            if job_id is None:
                queued = await tx.scan("jobs", where={"status": "queued"})
            else:
                one = await tx.get("jobs", job_id)
                queued = [one] if one is not None and one["status"] == "queued" else []
            due = job_id is None and self._canary_due(room)
            if due and trust.trust_of(room)["quarantined"]:  # one for each job it waits out
                queued = [j for j in queued if not trust.brought_canary(j, room["workerId"])]
            offered = dispatch.candidates(
                trust.unquarantined(room) if due else room, queued, self._turns
            )
            for job in offered:
                if await self._running_in_full(tx, job.get("account")):
                    continue
                # One canary per renter's job: the second time, the job itself.
                due = due and not trust.brought_canary(job, room["workerId"])
                break
            else:
                return None
            if not due:
                job = self._lease(tx, job, provider)
                self._turns[job.get("account") or ""] = next(self._served)
        return await (self._canary(provider, job) if due else self._leased(job))

    async def _canary(self, provider: Doc, like: Doc | None = None) -> Doc | None:
        """Make a canary for this worker and lease it to it in one commit (unless the worker
        has no room, or had its canaries for the hour). It is a `matmul` job like a
        renter's, shaped like the renter's job `like` it stands in for (which brings this
        worker no other), or else like the replicated job whose disagreement owes it a
        check; only its answer is kept apart."""
        seed = self.rng.randrange(2**32)
        expected = await asyncio.to_thread(engine.expected_digest, seed, trust.CANARY_N)
        async with self.store.transaction() as tx:
            record = await tx.get("providers", provider["workerId"])
            if record is None or dispatch.with_room(record, await held_by(tx, record)) is None:
                return None
            book, owed = trust.book_of(record, self.clock()), trust.owed_check(record)
            if owed is not None:
                like = await tx.get("jobs", owed)
            elif like is None or book["hourCount"] >= trust.CANARIES_PER_HOUR:
                return None
            elif (now := await tx.get("jobs", like["id"])) is not None:
                brought = [*now.get(trust.CANARIED, []), record["workerId"]]
                tx.put("jobs", {**now, trust.CANARIED: brought})
            job = self._canary_job(like, seed, expected, owed)
            tx.put("jobs", job)
            if owed is not None:
                book["owed"] = {**book["owed"], owed: job["id"]}
            book["hourCount"] += 1
            tx.put("providers", {**record, trust.BOOK: book})
            job = self._lease(tx, job, record)
        return await self._leased(job)

    def _canary_job(self, like: Doc | None, seed: int, expected: str, owed: str | None) -> Doc:
        """A canary as the store keeps it: the timeout, attempt and honoured requirements
        of the job it looks like, so that its lease shows the same shapes."""
        like = like or {}
        body = JobSubmit(type="matmul", timeoutS=like.get("timeoutS", 3600), maxAttempts=1)
        job = self._new_job(body, {"seed": seed, "n": trust.CANARY_N})
        asked = like.get("requirements", {})
        job["requirements"].update({k: asked[k] for k in dispatch.HONOURED if k in asked})
        job["attempt"] = like.get("attempt", 0)
        return {**job, trust.CANARY: {"expected": expected, "for": owed}}

    async def _give_canary(self, waiter: Waiter, like: Doc | None = None) -> None:
        """Answer a waiting worker's long-poll with a canary (or nothing, if that fails)."""
        try:
            view = await self._canary(waiter.provider, like)
        except StorageError:
            view = None  # the worker polls again
        if not waiter.future.done():
            waiter.future.set_result(view)

    def _lease(self, tx: Transaction, job: Doc, provider: Doc) -> Doc:
        """The lease fixes the attempt, the worker and the token it holds (the fence: a
        report needs both; whoever registers the same workerId later holds another token)."""
        attempt, worker_id = job["attempt"] + 1, provider["workerId"]
        entry = {"event": "leased", "workerId": worker_id, "attempt": attempt}
        fields = {"attempt": attempt, "workerId": worker_id, HOLDER: provider["tokenHash"]}
        fields["pricePerHour"] = provider.get("pricePerHour") or 0.0
        return self._change(tx, job, "assigned", entry, **fields)

    async def _leased(self, job: Doc) -> Doc:
        """After a lease is durable: its expiry starts, and it is announced."""
        now = self.clock()
        self.store.remember("leases", job["id"], {"expiresAt": now + self.lease_s})
        if job["attempt"] == 1 and trust.CANARY not in job:
            self.metrics.queue_wait.observe(max(0.0, now - job["createdAt"]))
        self.events.publish("JOB_ASSIGNED", job)
        return await self._lease_view(job)

    async def _lease_view(self, job: Doc) -> Doc:
        return dispatch.lease_view(job, await self._lease_expiry(job))

    async def _wait_for_job(self, provider: Doc, wait_s: float) -> Doc | None:
        worker_id = provider["workerId"]
        previous = self._waiters.pop(worker_id, None)
        if previous is not None and not previous.future.done():
            previous.future.set_result(None)  # a newer poll from the same worker replaces it
        future: asyncio.Future[Doc | None] = asyncio.get_running_loop().create_future()
        self._waiters[worker_id] = Waiter(provider, future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_s)
        except TimeoutError:
            if not future.done() and not self._waiting(worker_id, future):
                # Taken by a submission that is committing this worker's lease (the oldest
                # waiters, the ones about to time out, are taken first): its answer is due.
                return await future
            return future.result() if future.done() else None
        finally:
            if self._waiting(worker_id, future):
                del self._waiters[worker_id]
            if not future.done():
                future.set_result(None)

    def waiting(self) -> int:
        """Workers waiting in a long-poll now."""
        return len(self._waiters)

    def _waiting(self, worker_id: str, future: asyncio.Future[Doc | None]) -> bool:
        waiter = self._waiters.get(worker_id)
        return waiter is not None and waiter.future is future

    def release(self, worker_ids: list[str]) -> None:
        """End the long-polls of workers that went silent (offline): they are handed no job."""
        for worker_id in worker_ids:
            waiter = self._waiters.pop(worker_id, None)
            if waiter is not None and not waiter.future.done():
                waiter.future.set_result(None)

    def _takers(self, job: Doc, passed_over: str | None) -> tuple[Waiter | None, Waiter | None]:
        """The waiting worker that has waited longest of those that may run `job`, and
        before it, at most one that gets a canary instead (its canary was due), both taken
        off the waiters so that no other job is offered to them meanwhile. (Waiters are
        online: a silent one is released. Their records are the ones their polls were
        checked against, so no read is needed here, and 10,000 waiters cost no copy.)"""
        taker: Waiter | None = None
        checked: Waiter | None = None
        for waiter in self._waiters.values():
            if waiter.future.done() or waiter.provider["workerId"] == passed_over:
                continue
            provider = waiter.provider
            fresh = not trust.brought_canary(job, provider["workerId"])
            if checked is None and fresh and dispatch.eligible(trust.unquarantined(provider), job):
                if self._canary_due(provider):
                    checked = waiter
                    continue
            if dispatch.eligible(provider, job):
                taker = waiter
                break
        for taken in (taker, checked):
            if taken is not None:
                del self._waiters[taken.provider["workerId"]]
        return taker, checked

    async def _offer(self, job: Doc, passed_over: str | None = None) -> None:
        """Hand a requeued job straight to a waiting worker (other than the one that just
        handed it back, which may not have let go of it yet: it finds it when it polls
        again): the lease is durable before the worker hears of it."""
        taker, checked = self._takers(job, passed_over)
        if checked is not None:
            await self._give_canary(checked, job)
        if taker is None:
            return
        try:
            leased = await self._claim(taker.provider, job["id"])
        except StorageError:
            leased = None  # the job stays queued; the worker polls again
        if not taker.future.done():
            taker.future.set_result(leased)

    async def heartbeat(self, worker_id: str, running: list[str]) -> list[str]:
        """Renew the leases of the jobs the worker runs; return jobs it must cancel. Who
        holds which lease is known without a read (`changed`): a heartbeat reads nothing,
        and goes on while the database is down."""
        for job_id in running:
            if self._holders_known:
                holds = self._holders.get(job_id) == worker_id
            else:
                job = await self.store.get("jobs", job_id) or {}
                holds = (job.get("status"), job.get("workerId")) == ("assigned", worker_id)
            if holds:
                self.store.remember("leases", job_id, {"expiresAt": self.clock() + self.lease_s})
        pending = await self.store.recall("cancels", worker_id)
        if pending is None:
            return []
        answer: list[str] = pending["jobIds"]
        still = [job_id for job_id in answer if job_id in running]  # repeat while it runs
        self.store.remember("cancels", worker_id, {"jobIds": still} if still else None)
        return answer

    async def complete(self, job_id: str, provider: Doc, report: JobReport) -> Doc:
        """Accept the report of the lease holder once; the same report again changes nothing.
        A failure of the worker's runs the job again (free); one of the job's is charged."""
        worker_id = provider["workerId"]
        async with self.store.transaction() as tx:
            job = await find_job(tx, job_id)
            held = holds(job, provider)
            if held and _is_repeat(job, worker_id, report):
                return await self.view(job)
            holder = (job["workerId"], job["attempt"])
            if job["status"] != "assigned" or holder != (worker_id, report.attempt) or not held:
                raise Conflict(
                    f"job {job_id} is {job['status']} (attempt {job['attempt']}); this worker "
                    f"does not hold the lease of attempt {report.attempt}, so the report is "
                    "refused",
                    code="lease_not_held",
                )
            if len(json.dumps(report.result)) > RESULT_LIMIT_BYTES:
                raise TooLarge("the job result is over 1 MiB; report less", code="result_too_large")
            if len(json.dumps(report.metrics)) > METRICS_LIMIT_BYTES:
                message = "the job metrics are over 64 KiB; report less"
                raise TooLarge(message, code="metrics_too_large")
            entry = {"event": "reported", "workerId": worker_id, "attempt": report.attempt}
            fields = {"result": report.result, "metrics": report.metrics}
            record = await tx.get("providers", worker_id) or provider
            run = self._run(job, record)
            if report.status == "preempted":
                job = await self._preempted(tx, job, record, report, entry)
            elif trust.CANARY not in job and failures.on_worker(report.status, report.result):
                error = failures.error_of(report.result)
                failed = {**entry, "event": "worker_failed", "error": error}
                job = await self._retry(tx, job, failed, report.result)
            elif job.get("verify") == "replicate":
                job = await self._replicated(tx, job, record, report, entry, run)
            else:
                fields.update(failures.of_job(report.status))
                job = await self._finish(tx, job, report.status, entry, [run], **fields)
                await self._judge(tx, job, provider, report)
        self.store.remember("leases", job_id, None)
        if job["status"] == "queued":
            self.events.publish("JOB_REQUEUED", job)
            await self._offer(job, passed_over=worker_id)
        else:
            self.events.publish(f"JOB_{job['status'].upper()}", job)
        await self._after_checks(job)
        return await self.view(job)

    async def _preempted(
        self, tx: Transaction, job: Doc, record: Doc, report: JobReport, entry: Doc
    ) -> Doc:
        """The worker handed the job back (its provider paused it, say): queued again
        without spending an attempt, and nothing charged. The worker's record counts it;
        a canary handed back counts as not passed, and goes."""
        result = report.result if isinstance(report.result, dict) else {}
        reason = str(result.get("reason") or "handed back by its worker")[:200]
        before = trust.trust_of(record)
        if trust.CANARY in job:
            tx.put("providers", {**record, trust.TRUST: trust.after_lost_canary(before)})
            await self._checked(tx, record["workerId"], job, "lost")
            event = {**entry, "event": "preempted", "reason": reason}
            return await self._finish(tx, job, "failed", event, [], result={"error": reason})
        share = self.registry.settings.preempt_share
        tx.put("providers", {**record, trust.TRUST: trust.after_preemption(before, share)})
        preemptions = job.get("preemptions", 0) + 1
        event = {**entry, "event": "preempted", "reason": reason}
        return self._change(tx, job, "queued", event, preemptions=preemptions)

    def _run(self, job: Doc, provider: Doc) -> Doc:
        """The run a report ends, as a charge counts it: the price its lease fixed, for the
        time from the lease to now as the server measured it, at most the job's timeout."""
        seconds = min(max(0.0, self.clock() - job["updatedAt"]), float(job["timeoutS"]))
        return {
            "workerId": provider["workerId"],
            "qubicAddress": provider["qubicAddress"],
            "pricePerHour": job.get("pricePerHour") or 0.0,
            "seconds": seconds,
        }

    async def _replicated(
        self, tx: Transaction, job: Doc, record: Doc, report: JobReport, entry: Doc, run: Doc
    ) -> Doc:
        """One replica's report: queued again for another party until a majority of the runs
        that count agree (verdicts.py), then completed with the agreed result; the runs that
        agreed are charged, a disputed job costs nothing. A disagreement punishes nobody:
        it owes each party a canary."""
        prefix = self.registry.settings.replica_prefix
        mine = {**verdicts.run_of(record, report.status, report.result, prefix)}
        mine.update(pricePerHour=run["pricePerHour"], seconds=run["seconds"])
        answer = {"result": report.result, "metrics": report.metrics}
        job = {
            **job,
            "replicas": [*job.get("replicas", []), mine],
            verdicts.ANSWERS: {**job.get(verdicts.ANSWERS, {}), mine["digest"]: answer},
            verdicts.PREFIX: list(prefix),
            **answer,
        }
        floor = self.registry.settings.replication_floor
        rate = trust.replicate_rate(trust.trust_of(record), floor)
        if len(job["replicas"]) == 1 and self.rng.random() >= rate:
            job = {k: v for k, v in job.items() if k != verdicts.ANSWERS}
            by = failures.of_job(report.status)
            job = await self._finish(tx, job, report.status, entry, [run], **by, verified=False)
            await self._judge(tx, job, record, report)  # a trusted worker, taken at its word
            return job
        return await self._decide(tx, job, {**entry, "event": "replica"})

    async def _decide(self, tx: Transaction, job: Doc, entry: Doc) -> Doc:
        """What a replicated job's runs decide now: verified, disputed, or queued (for one
        more run, or for the checks its disagreeing runners now owe)."""
        runners = [r["workerId"] for r in job["replicas"]]
        workers = {worker_id: await tx.get("providers", worker_id) for worker_id in runners}
        decision = verdicts.decide(job, workers, self.registry.settings.canaries)
        done = {k: v for k, v in job.items() if k != verdicts.ANSWERS}
        if decision.outcome == verdicts.DISPUTED:
            failed = {"error": verdicts.DISPUTED}
            free = {failures.FAILED_BY: failures.WORKER}
            return await self._finish(tx, done, "failed", entry, [], result=failed, **free)
        if decision.outcome == "verified":
            agreed = [r for r in job["replicas"] if r["workerId"] in decision.agreed]
            status = agreed[0].get("status", "completed")
            answer = job.get(verdicts.ANSWERS, {}).get(str(decision.digest), {})
            keep = ("workerId", "qubicAddress", "pricePerHour", "seconds")
            runs = [{k: r[k] for k in keep} for r in agreed]  # a job's own failure is charged
            answer = {**answer, **failures.of_job(status)}
            done = await self._finish(tx, done, status, entry, runs, **answer, verified=True)
            # A job's own failure, however agreed, says nothing of who ran it.
            for worker_id in decision.agreed if status == "completed" else ():
                worker = workers[worker_id] or {}
                after = trust.after_job(trust.trust_of(worker), status)
                tx.put("providers", {**worker, trust.TRUST: after})
            return done
        for worker_id in decision.owe:
            worker = workers[worker_id] or {}
            book = trust.book_of(worker, self.clock())
            book["owed"] = {**book["owed"], job["id"]: None}
            tx.put("providers", {**worker, trust.BOOK: book})
        checks = {**job.get(verdicts.CHECKS, {}), **dict.fromkeys(decision.owe, verdicts.OWED)}
        return self._change(tx, job, "queued", entry, **{verdicts.CHECKS: checks})

    async def _checked(self, tx: Transaction, worker_id: str, canary: Doc, state: str) -> None:
        """A check that a disagreement owed this worker was answered (`passed`, `failed`)
        or not (`lost`): the job it was owed for decides again."""
        job_id = canary[trust.CANARY].get("for")
        record = await tx.get("providers", worker_id) if job_id is not None else None
        if job_id is None or record is None:
            return
        book = trust.book_of(record, self.clock())
        book["owed"] = {k: v for k, v in book["owed"].items() if k != job_id}
        tx.put("providers", {**record, trust.BOOK: book})
        job = await tx.get("jobs", job_id)
        if job is None or job.get(verdicts.CHECKS, {}).get(worker_id) != verdicts.OWED:
            return
        job = {**job, verdicts.CHECKS: {**job[verdicts.CHECKS], worker_id: state}}
        if job["status"] == "assigned":
            tx.put("jobs", job)  # its running replica's report decides
        elif job["status"] == "queued":
            entry = {"event": "checked", "workerId": worker_id, "canaryId": canary["id"]}
            await self._decide(tx, job, entry)

    async def _after_checks(self, job: Doc) -> None:
        """After a commit: a job that a check decided is announced (and offered, if it runs
        again), and the waiting workers that a disagreement owes a check are given it."""
        owed_for = (job.get(trust.CANARY) or {}).get("for")
        decided = await self.store.get("jobs", owed_for) if owed_for else None
        if decided is not None and decided["history"][-1].get("canaryId") == job["id"]:
            if decided["status"] == "queued":
                await self._offer(decided)
            else:
                self.events.publish(f"JOB_{decided['status'].upper()}", decided)
        for worker_id, state in job.get(verdicts.CHECKS, {}).items():
            waiter = self._waiters.get(worker_id)
            if state == verdicts.OWED and waiter is not None and not waiter.future.done():
                del self._waiters[worker_id]
                await self._give_canary(waiter)

    async def _judge(self, tx: Transaction, job: Doc, provider: Doc, report: JobReport) -> None:
        """What a report says of its worker: a canary is checked against its answer (a wrong
        one quarantines the worker and flags its results since its last passed canary);
        a renter's job counts when it completed (one that failed by its own doing says
        nothing of its worker, failures.py)."""
        record = await tx.get("providers", provider["workerId"])
        if record is None:
            return
        now, before = self.clock(), trust.trust_of(record)
        if trust.CANARY not in job:
            if report.status != "completed":
                return  # a renter's job that failed by its own doing says nothing of its worker
            after = trust.after_job(before, "completed")
        else:
            result = report.result if isinstance(report.result, dict) else {}
            passed = report.status == "completed" and (
                result.get("digest") == job[trust.CANARY]["expected"]
            )
            leased_at = job["history"][-2]["at"]
            claim = trust.claim(record, result, now - leased_at) if passed else None
            after = trust.after_canary(before, passed, claim, now)
            if not passed:
                await self._flag_since(tx, provider["workerId"], before["lastPassedAt"])
        tx.put("providers", {**record, trust.TRUST: after})
        if trust.CANARY in job:
            passed = after["canariesPassed"] > before["canariesPassed"]
            await self._checked(tx, record["workerId"], job, "passed" if passed else "failed")

    async def _flag_since(self, tx: Transaction, worker_id: str, since: float | None) -> None:
        """Mark what the worker completed since its last passed canary as unverified, and
        give back what their renters paid for them."""
        done_here = await tx.scan("jobs", {"workerId": worker_id, "status": "completed"})
        failed = await tx.scan("jobs", {"workerId": worker_id, "status": "failed"})
        charged = [j for j in failed if j.get(failures.FAILED_BY) == failures.JOB]
        for done in [*done_here, *charged]:
            if trust.CANARY in done or "unverified" in done:
                continue
            if since is None or done["updatedAt"] > since:
                back = await self.accounts.refund(tx, done, worker_id)
                flagged = {**done, "unverified": "its worker failed a check after this"}
                if back:
                    flagged["cost"] = money(flagged.get("cost", 0.0) - back)
                tx.put("jobs", flagged)

    async def expire_leases(self) -> None:
        """Requeue jobs whose worker stopped renewing the lease ("agent lost"), and fail those
        that ran past their `timeoutS` and one heartbeat interval, whatever the heartbeats
        say: a job's time limit is the server's, not the worker's word."""
        now = self.clock()
        grace = self.registry.settings.heartbeat_interval_s
        for job in await self.store.scan("jobs", where={"status": "assigned"}):
            if job["updatedAt"] + job["timeoutS"] + grace < now:  # updated when leased
                await self._expire(job["id"], job["attempt"], TIMED_OUT)
            elif await self._lease_expiry(job) < now:
                await self._expire(job["id"], job["attempt"], AGENT_LOST)

    async def requeue_held_by(self, worker_id: str) -> None:
        """A provider was removed: its leases are requeued at once."""
        where = {"status": "assigned", "workerId": worker_id}
        for job in await self.store.scan("jobs", where=where):
            await self._expire(job["id"], job["attempt"], PROVIDER_REMOVED)

    async def _expire(self, job_id: str, attempt: int, reason: str) -> None:
        async with self.store.transaction() as tx:
            job = await find_job(tx, job_id)
            if (job["status"], job["attempt"]) != ("assigned", attempt):
                return  # reported or cancelled meanwhile
            entry = {"event": "lease_expired", "reason": reason, "workerId": job["workerId"]}
            entry["attempt"] = attempt
            record = await tx.get("providers", entry["workerId"])
            if reason == TIMED_OUT:  # the job's own: charged for its time, as a report is
                ran = [self._run(job, record)] if record is not None else []
                failed = {"result": {"error": reason}, **failures.of_job("failed")}
                job = await self._finish(tx, job, "failed", entry, ran, **failed)
            else:
                job = await self._retry(tx, job, entry, {"error": reason})
            if record is not None and reason == AGENT_LOST:
                before = trust.trust_of(record)
                lost = trust.CANARY in job
                after = trust.after_lost_canary(before) if lost else trust.after_job(before, "lost")
                tx.put("providers", {**record, trust.TRUST: after})
            if trust.CANARY in job:
                await self._checked(tx, entry["workerId"], job, "lost")
        self.store.remember("leases", job_id, None)
        self.metrics.leases_expired.labels(reason).inc()
        if reason == TIMED_OUT:
            await self._tell_to_stop(entry["workerId"], job_id)
        await self._after_checks(job)
        if job["status"] == "failed":
            self.events.publish("JOB_FAILED", job)
            return
        self.events.publish("JOB_REQUEUED", job)
        await self._offer(job)

    async def _retry(self, tx: Transaction, job: Doc, entry: Doc, result: Any) -> Doc:
        """The worker's or the coordinator's failure (failures.py): free, and the job is
        queued again as its next attempt until `maxAttempts` (replicas and hand-backs are
        not retries); then it fails with `result`, the last failure's whole (the history
        keeps only its error, shortened)."""
        runs = job["attempt"] - len(job.get("replicas", [])) - job.get("preemptions", 0)
        if runs < job["maxAttempts"]:
            return self._change(tx, job, "queued", entry)
        failed = {"result": result, failures.FAILED_BY: failures.WORKER}
        return await self._finish(tx, job, "failed", entry, [], **failed)

    # -- state -----------------------------------------------------------------------

    async def _finish(
        self, tx: Transaction, job: Doc, status: str, entry: Doc, runs: list[Doc], **fields: Any
    ) -> Doc:
        """A job ends: its hold is released and the `runs` accepted are charged, in the
        same commit as the change."""
        job = self._change(tx, job, status, entry, **fields)
        cost = await self.accounts.settle(tx, job, runs)
        if job.get("account"):
            job = {**job, "cost": cost}
            tx.put("jobs", job)
        return job

    def _change(self, tx: Transaction, job: Doc, status: str, entry: Doc, **fields: Any) -> Doc:
        """Record a state change (a new document: stored documents are never mutated)."""
        now = self.clock()
        entry = {**entry, "status": status, "at": now}
        job = {**job, **fields, "status": status, "updatedAt": now}
        job["history"] = [*job["history"], entry]
        tx.put("jobs", job)
        return job


async def find_job(reader: Store | Transaction, job_id: str, caller: Caller | None = None) -> Doc:
    """A job by id; one that `caller` (if given) may not see is not found, as if it did not
    exist: a renter learns nothing of another's jobs."""
    job = await reader.get("jobs", job_id)
    if job is None or (caller is not None and not caller.may_see(job)):
        raise not_found(f"job {job_id!r}")
    return job


async def held_by(reader: Store | Transaction, provider: Doc) -> list[Doc]:
    """The leases this provider holds, oldest first."""
    where = {"workerId": provider["workerId"], "status": "assigned"}
    held = [j for j in await reader.scan("jobs", where) if holds(j, provider)]
    return sorted(held, key=lambda j: j["updatedAt"])


def holds(job: Doc, provider: Doc) -> bool:
    """Whether `provider` holds the job's lease: it took it with the token it has now. (A
    lease from before the token was recorded is its worker's.)"""
    return bool(job.get(HOLDER, provider["tokenHash"]) == provider["tokenHash"])


HIDDEN = (HOLDER, trust.CANARY, trust.CANARIED, verdicts.ANSWERS, verdicts.CHECKS, verdicts.PREFIX)


def shown(job: Doc) -> Doc:
    """A job as answers and events show it: without the lease holder's token hash, nor a
    canary's answer (nor that it is one), nor the bookkeeping of checks."""
    view = {k: v for k, v in job.items() if k not in HIDDEN}
    payload = job.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("env"), dict):
        view["payload"] = {**payload, "env": dict.fromkeys(payload["env"], SECRET)}
    return view


# The history events a report leaves, and the status of the report each stands for (None:
# the entry's own; a replica's is in the job's runs).
REPORT_EVENTS: dict[str, str | None] = {
    "reported": None,
    "replica": None,
    "worker_failed": "failed",
    "preempted": "preempted",
}


def _is_repeat(job: Doc, worker_id: str, report: JobReport) -> bool:
    """Whether the job's last report is this one again (its answer was lost on the way,
    and the worker's outbox sends it once more): same worker, attempt and status, however
    the report left the job (done, queued again, a replica of several)."""
    last = next((e for e in reversed(job["history"]) if e["event"] in REPORT_EVENTS), None)
    if last is None or (last.get("workerId"), last.get("attempt")) != (worker_id, report.attempt):
        return False
    if last["event"] == "replica":
        runs = [r for r in job.get("replicas", []) if r["workerId"] == worker_id]
        return bool(runs) and runs[-1]["status"] == report.status
    if last["event"] == "reported":
        return bool(last["status"] == report.status and job["result"] == report.result)
    return REPORT_EVENTS[last["event"]] == report.status
