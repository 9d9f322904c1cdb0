"""SIGKILL the server at random moments under mixed load: nothing acknowledged is lost."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import KEY, ServerProcess, all_providers, register_body

ROUNDS = 20


@dataclass
class Acknowledged:
    """Every change the server answered 2xx to, across all rounds."""

    providers: dict[str, str] = field(default_factory=dict)  # workerId -> token
    jobs: set[str] = field(default_factory=set)
    leased: dict[str, int] = field(default_factory=dict)  # job -> attempt
    completed: dict[str, Any] = field(default_factory=dict)  # job -> result
    cancelled: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    maybe_deleted: set[str] = field(default_factory=set)  # asked, answer lost in the kill
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load(url: str, ack: Acknowledged, name: str, stop: threading.Event, kind: str) -> None:
    """One client of the mixed load; stops at the first connection error (the kill)."""
    with httpx.Client(base_url=url, timeout=5) as http:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                _step(http, ack, f"{name}-{n}", kind)
        except httpx.TransportError:
            return


def _step(http: httpx.Client, ack: Acknowledged, name: str, kind: str) -> None:
    if kind == "register":
        answer = http.post("/api/providers/quick-register", json=register_body(name))
        if answer.status_code == 201:
            with ack.lock:
                ack.providers[name] = answer.json()["workerToken"]
    elif kind == "delete":
        with ack.lock:
            candidates = sorted(set(ack.providers) - ack.maybe_deleted - {"runner"})
        if not candidates:
            return
        worker_id = random.choice(candidates)
        with ack.lock:
            ack.maybe_deleted.add(worker_id)
        if http.delete(f"/api/providers/{worker_id}", headers=KEY).status_code == 204:
            with ack.lock:
                ack.deleted.add(worker_id)
    elif kind == "cancel":
        # A job nobody can run (no provider has that much VRAM), then cancelled.
        body = {"type": "sleep", "payload": {"seconds": 0}, "requirements": {"minVramMb": 10**6}}
        answer = http.post("/api/jobs", json=body, headers=KEY)
        if answer.status_code == 201:
            job_id = answer.json()["job"]["id"]
            with ack.lock:
                ack.jobs.add(job_id)
            if http.post(f"/api/jobs/{job_id}/cancel", headers=KEY).status_code == 200:
                with ack.lock:
                    ack.cancelled.add(job_id)
    else:  # a submitter and a worker in one: submit, lease, report
        answer = http.post(
            "/api/jobs", json={"type": "sleep", "payload": {"seconds": 0}}, headers=KEY
        )
        if answer.status_code != 201:
            return
        with ack.lock:
            ack.jobs.add(answer.json()["job"]["id"])
        token = {"Authorization": f"Bearer {ack.providers['runner']}"}
        answer = http.get("/api/jobs/pending/runner", headers=token)
        if answer.status_code != 200:
            return
        job_id, attempt = answer.json()["job"]["id"], answer.json()["attempt"]
        with ack.lock:
            ack.leased[job_id] = attempt
        result = {"name": name}
        report = {"attempt": attempt, "status": "completed", "result": result}
        if http.post(f"/api/jobs/{job_id}/complete", json=report, headers=token).status_code == 200:
            with ack.lock:
                ack.completed[job_id] = result


def _check(url: str, ack: Acknowledged) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        listed = all_providers(url)
        ids = [p["workerId"] for p in listed]
        assert len(ids) == len(set(ids))
        assert set(ack.providers) - ack.maybe_deleted <= set(ids)
        assert not ack.deleted & set(ids)
        jobs: dict[str, Any] = {}
        while True:  # to the last page (jobs whose answer a kill lost count too)
            page = http.get(f"/api/jobs?limit=500&offset={len(jobs)}", headers=KEY).json()
            jobs.update({j["id"]: j for j in page["jobs"]})
            if len(page["jobs"]) < 500:
                break
        assert ack.jobs <= set(jobs)
        for job_id, attempt in ack.leased.items():
            assert jobs[job_id]["status"] in ("assigned", "completed")
            assert jobs[job_id]["attempt"] >= attempt
        for job_id, result in ack.completed.items():
            assert (jobs[job_id]["status"], jobs[job_id]["result"]) == ("completed", result)
        for job_id in ack.cancelled:
            assert jobs[job_id]["status"] == "cancelled"
        runner = {"Authorization": f"Bearer {ack.providers['runner']}"}
        beat = http.post(
            "/api/providers/runner/heartbeat", json={"status": "online"}, headers=runner
        )
        assert beat.status_code == 200  # the token's hash survived too


def test_nothing_acknowledged_is_lost_over_20_random_kills(tmp_path: Path) -> None:
    rng = random.Random(8)
    ack = Acknowledged()
    server = ServerProcess(tmp_path / "data").start()
    answer = httpx.post(server.url + "/api/providers/quick-register", json=register_body("runner"))
    ack.providers["runner"] = answer.json()["workerToken"]
    try:
        for round_no in range(ROUNDS):
            stop = threading.Event()
            kinds = ["register", "register", "job", "job", "cancel", "delete"]
            threads = [
                threading.Thread(
                    target=_load, args=(server.url, ack, f"r{round_no}-{i}", stop, kind)
                )
                for i, kind in enumerate(kinds)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, 0.6))
            server.kill()
            stop.set()
            for t in threads:
                t.join(10)
            server.start()  # the database loads, or this raises
            _check(server.url, ack)
    finally:
        server.stop()
    # The load really ran: every kind of change was acknowledged many times over.
    assert min(len(ack.providers), len(ack.completed), len(ack.cancelled)) > 3 * ROUNDS
    assert len(ack.deleted) > ROUNDS
    assert "Traceback" not in server.output()
