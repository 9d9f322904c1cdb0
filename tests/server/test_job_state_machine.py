"""The job state machine under any interleaving of submit, lease, heartbeat, expiry, report
and cancel (hypothesis), through the HTTP API, against a model of the rules in DESIGN.md."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
)
from starlette.testclient import TestClient

from qubix_cli.server.app import create_app
from qubix_cli.server.settings import Settings
from tests.conftest import NO_LIMITS, auth
from tests.helpers import API_KEY, KEY, register_body

WORKERS = ("w1", "w2")
TIMEOUT_S, INTERVAL_S = 3600, 30.0  # a job's default timeoutS; the heartbeat interval
TERMINAL = ("completed", "failed", "cancelled")


class FrozenClock:
    """The server's clock: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@dataclass
class Expected:
    created: int  # submission order
    max_attempts: int
    status: str = "queued"
    attempt: int = 0
    holder: str | None = None
    lease_expires: float | None = None
    leased_at: float = 0.0
    report: tuple[str, int, str, str] | None = None  # accepted (worker, attempt, status, by)
    last: tuple[str, int, str, str] | None = None  # the last report taken: its repeat is 200


class JobMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FrozenClock()
        self.dir = tempfile.TemporaryDirectory()
        settings = Settings(data_dir=Path(self.dir.name) / "data", api_key=API_KEY, **NO_LIMITS)
        app = create_app(settings, clock=self.clock.time)
        self.client = TestClient(app)
        self.client.__enter__()
        self.queue = app.state.jobs
        self.tokens = {}
        for w in WORKERS:
            answer = self.client.post("/api/providers/quick-register", json=register_body(w))
            self.tokens[w] = auth(answer.json()["workerToken"])
        self.model: dict[str, Expected] = {}
        self.lease_s = app.state.settings.lease_s

    def teardown(self) -> None:
        self.client.__exit__(None, None, None)
        self.dir.cleanup()

    # -- rules -------------------------------------------------------------------------

    @rule(target=jobs, max_attempts=st.integers(1, 3))
    def submit(self, max_attempts: int) -> str:
        body = {"type": "sleep", "payload": {"seconds": 1}, "maxAttempts": max_attempts}
        answer = self.client.post("/api/jobs", json=body, headers=KEY)
        assert answer.status_code == 201
        job_id: str = answer.json()["job"]["id"]
        self.model[job_id] = Expected(created=len(self.model), max_attempts=max_attempts)
        return job_id

    @rule(worker=st.sampled_from(WORKERS))
    def lease(self, worker: str) -> None:
        answer = self.client.get(f"/api/jobs/pending/{worker}", headers=self.tokens[worker])
        held = [j for j, e in self.model.items() if e.status == "assigned" and e.holder == worker]
        if held:  # a worker holds one lease at a time: its poll gets that lease again
            assert answer.status_code == 200, answer.text
            assert (answer.json()["job"]["id"], answer.json()["attempt"]) == (
                held[0],
                self.model[held[0]].attempt,
            )
            return
        queued = [j for j, e in self.model.items() if e.status == "queued"]
        if not queued:
            assert answer.status_code == 204
            return
        assert answer.status_code == 200, answer.text
        job = answer.json()["job"]
        expected = self.model[job["id"]]
        assert expected.status == "queued"  # never a job that is not free
        oldest = min(self._created_at(j) for j in queued)
        assert self._created_at(job["id"]) == oldest  # the oldest first
        expected.status, expected.holder = "assigned", worker
        expected.attempt += 1
        expected.lease_expires = self.clock.now + self.lease_s
        expected.leased_at = self.clock.now
        assert answer.json()["attempt"] == expected.attempt

    @rule(worker=st.sampled_from(WORKERS), job_id=jobs)
    def heartbeat(self, worker: str, job_id: str) -> None:
        body = {"status": "busy", "currentJobId": job_id}
        path = f"/api/providers/{worker}/heartbeat"
        answer = self.client.post(path, json=body, headers=self.tokens[worker])
        assert answer.status_code == 200
        expected = self.model[job_id]
        if expected.status == "assigned" and expected.holder == worker:
            expected.lease_expires = self.clock.now + self.lease_s

    @rule(seconds=st.sampled_from([1.0, 30.0, 60.0, 89.0, 91.0, 200.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.client.portal.call(self.queue.expire_leases)  # type: ignore[union-attr]
        for e in self.model.values():
            if e.status == "assigned" and e.lease_expires is not None:
                if e.leased_at + TIMEOUT_S + INTERVAL_S < self.clock.now:
                    e.status = "failed"  # ran past its timeoutS: failed, whatever the beats
                    e.holder = e.lease_expires = None
                elif e.lease_expires < self.clock.now:
                    e.status = "failed" if e.attempt >= e.max_attempts else "queued"
                    e.holder = e.lease_expires = None

    @rule(
        worker=st.sampled_from(WORKERS),
        job_id=jobs,
        stale=st.booleans(),
        status=st.sampled_from(["completed", "failed"]),
        by=st.sampled_from(["job", "worker"]),
    )
    def report(self, worker: str, job_id: str, stale: bool, status: str, by: str) -> None:
        expected = self.model[job_id]
        attempt = max(1, expected.attempt - 1) if stale else max(1, expected.attempt)
        result = {"by": worker, "attempt": attempt, "failedBy": by}
        body = {"attempt": attempt, "status": status, "result": result}
        answer = self.client.post(
            f"/api/jobs/{job_id}/complete", json=body, headers=self.tokens[worker]
        )
        holds = expected.status == "assigned" and (expected.holder, expected.attempt) == (
            worker,
            attempt,
        )
        repeat = expected.last == (worker, attempt, status, by)
        if holds or repeat:
            assert answer.status_code == 200, answer.text
            if holds and status == "failed" and by == "worker":  # free, and it runs again
                retried = expected.attempt < expected.max_attempts
                expected.status = "queued" if retried else "failed"
                expected.holder = expected.lease_expires = None
                expected.last = (worker, attempt, status, by)
            elif holds:
                expected.status, expected.report = status, (worker, attempt, status, by)
                expected.last = expected.report
                expected.holder = expected.lease_expires = None
        else:
            assert answer.status_code == 409, answer.text

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        expected = self.model[job_id]
        answer = self.client.post(f"/api/jobs/{job_id}/cancel", headers=KEY)
        if expected.status in TERMINAL:
            assert answer.status_code == 409
        else:
            assert answer.status_code == 200
            expected.status, expected.holder, expected.lease_expires = "cancelled", None, None

    # -- invariants --------------------------------------------------------------------

    def _created_at(self, job_id: str) -> float:
        created: float = self._stored[job_id]["createdAt"]
        return created

    @invariant()
    def server_agrees_with_the_model(self) -> None:
        answer = self.client.get("/api/jobs?limit=500", headers=KEY).json()
        self._stored: dict[str, Any] = {j["id"]: j for j in answer["jobs"]}
        assert set(self._stored) == set(self.model)
        for job_id, expected in self.model.items():
            job = self._stored[job_id]
            assert (job["status"], job["attempt"]) == (expected.status, expected.attempt), job
            assert 0 <= job["attempt"] <= job["maxAttempts"]
            if expected.status == "assigned":
                assert job["workerId"] == expected.holder
                assert job["leaseExpiresAt"] == expected.lease_expires
            else:
                assert job["leaseExpiresAt"] is None
            reports = [h for h in job["history"] if h["event"] == "reported"]
            assert len(reports) == (1 if expected.report else 0)
            leases = [h for h in job["history"] if h["event"] == "leased"]
            assert len(leases) == job["attempt"]  # one lease per attempt, numbered in order
            assert [h["attempt"] for h in leases] == list(range(1, job["attempt"] + 1))


JobMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_job_state_machine = JobMachine.TestCase
