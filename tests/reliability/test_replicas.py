"""Several `qubix serve` replicas on one PostgreSQL database, behind a real nginx with the
configuration docs/scaling.md gives: 100 real workers (the zipapp the installers ship),
jobs submitted through any replica completing exactly once, a replica SIGKILLed under
them, PostgreSQL restarted under them, and what one replica does reaching the others."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from qubix_cli.installer.pack import build_worker_pyz
from tests.balancer import Nginx, nginx_bin
from tests.helpers import KEY, ServerProcess, Worker, all_providers, register_body, wait_for
from tests.pg import Cluster

pytestmark = pytest.mark.skipif(nginx_bin() is None, reason="nginx is not installed")
WORKERS = 100
HEARTBEAT_S = 2.0


class Fleet:
    """`count` replicas on one database and data dir, nginx in front of them."""

    def __init__(self, tmp: Path, url: str, count: int, balanced: bool = True) -> None:
        self.database, self.tmp = url, tmp
        self.replicas: list[ServerProcess] = []
        for _ in range(count):  # one at a time: the first makes the update key
            self.add()
        upstreams = [f"127.0.0.1:{r.port}" for r in self.replicas]
        self.nginx = Nginx(upstreams) if balanced else None

    def add(self) -> ServerProcess:
        """One more replica, started."""
        replica = ServerProcess(
            self.tmp / "data",
            HEARTBEAT_S,
            "--database",
            self.database,
            "--trusted-proxy",
            "127.0.0.1",
        )
        replica.log = self.tmp / f"replica{len(self.replicas)}.log"
        self.replicas.append(replica.start())
        return replica

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def submit(self, replica: ServerProcess, **body: Any) -> str:
        answer = httpx.post(replica.url + "/api/jobs", json=body, headers=KEY, timeout=10)
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["job"]["id"]
        return job_id

    def job(self, job_id: str, via: ServerProcess | None = None) -> dict[str, Any]:
        base = via.url if via else self.url
        answer = httpx.get(f"{base}/api/jobs/{job_id}", headers=KEY)
        if answer.status_code != 200:  # the database is coming back
            return {"status": f"unknown ({answer.status_code})", "workerId": None}
        found: dict[str, Any] = answer.json()["job"]
        return found

    def leader(self) -> ServerProcess:
        def leading() -> ServerProcess | None:
            for replica in self.replicas:
                if replica.proc and replica.proc.poll() is None:
                    if httpx.get(replica.url + "/healthz").json().get("leads"):
                        return replica
            return None

        found: ServerProcess = wait_for(leading, timeout=10)
        return found

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def pyz(tmp_path: Path) -> Path:
    path = tmp_path / "qubix_worker.pyz"
    path.write_bytes(build_worker_pyz())  # what the installers ship
    return path


def start_workers(tmp: Path, url: str, pyz: Path) -> list[Worker]:
    return [Worker(tmp, url, f"w{i:03d}", pyz=pyz) for i in range(WORKERS)]


def stop_workers(workers: list[Worker]) -> list[int]:
    for w in workers:
        if w.proc.poll() is None:
            w.signal(signal.SIGTERM)
    return [w.wait(30) for w in workers]


def register(url: str, worker_id: str) -> str:
    """Register a provider by hand; its worker token."""
    answer = httpx.post(url + "/api/providers/quick-register", json=register_body(worker_id))
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["workerToken"]
    return token


def online(url: str) -> int:
    return sum(p["status"] == "online" for p in all_providers(url))


def reported(job: dict[str, Any]) -> int:
    """How many reports the job's history accepted."""
    return sum(entry["event"] == "reported" for entry in job["history"])


@pytest.mark.parametrize("count", [2, 3])
def test_100_workers_behind_nginx_run_jobs_submitted_through_any_replica_once(
    cluster: Cluster, tmp_path: Path, pyz: Path, count: int
) -> None:
    fleet = Fleet(tmp_path, cluster.new_database(), count)
    workers = start_workers(tmp_path, fleet.url, pyz)
    try:
        wait_for(lambda: online(fleet.url) == WORKERS, timeout=120, step=0.5)
        for replica in fleet.replicas:  # each sees the whole fleet online (within a second)
            wait_for(lambda r=replica: online(r.url) == WORKERS, timeout=10, step=0.5)
        ids = [
            fleet.submit(fleet.replicas[n % count], type="sleep", payload={"seconds": 0.2})
            for n in range(60)
        ]
        wait_for(
            lambda: all(fleet.job(j)["status"] == "completed" for j in ids), timeout=90, step=0.5
        )
        jobs = [fleet.job(j) for j in ids]
        assert [reported(j) for j in jobs] == [1] * len(ids)  # each completed exactly once
        assert len({j["workerId"] for j in jobs}) > 1
        listed = sorted(p["workerId"] for p in all_providers(fleet.url))
        assert listed == [f"w{i:03d}" for i in range(WORKERS)]  # none twice, none lost
    finally:
        codes = stop_workers(workers)
        fleet.stop()
    assert codes == [0] * WORKERS
    assert all("Traceback" not in w.output() for w in workers)


def test_a_replica_killed_under_100_workers_loses_nothing_and_its_work_moves(
    cluster: Cluster, tmp_path: Path, pyz: Path
) -> None:
    """SIGKILL the replica that leads while workers hold leases and long-polls: every
    worker is back within two heartbeat intervals, nothing acknowledged is lost, no job
    completes twice, and another replica takes over the periodic work (a worker that goes
    silent is still marked offline, and its lease still expires)."""
    fleet = Fleet(tmp_path, cluster.new_database(), 3)
    workers = start_workers(tmp_path, fleet.url, pyz)
    try:
        wait_for(lambda: online(fleet.url) == WORKERS, timeout=120, step=0.5)
        # Long enough that all 30 are held at once, however slowly they are handed out (the
        # workers starting jobs slow the submissions on two cores: up to 9 s seen).
        ids = [
            fleet.submit(fleet.replicas[n % 3], type="sleep", payload={"seconds": 20})
            for n in range(30)
        ]
        wait_for(lambda: all(fleet.job(j)["status"] == "assigned" for j in ids), timeout=20)
        registered = httpx.post(
            fleet.url + "/api/providers/quick-register", json=register_body("late-one")
        )
        assert registered.status_code == 201
        late = fleet.submit(fleet.replicas[0], type="sleep", payload={"seconds": 0.1})
        leader = fleet.leader()
        survivors = [r for r in fleet.replicas if r is not leader]
        leader.kill()
        killed_at = time.time()

        first: dict[str, float] = {}  # each worker's first heartbeat after the kill

        def all_back() -> bool:
            for survivor in survivors:  # each one's own: what it heard itself, at once
                for p in all_providers(survivor.url):
                    seen = p["lastSeenAt"] or 0.0
                    if p["workerId"].startswith("w") and seen > killed_at:
                        first[p["workerId"]] = min(first.get(p["workerId"], seen), seen)
            return len(first) == WORKERS

        wait_for(all_back, timeout=30, step=0.3)
        slowest = max(first.values()) - killed_at
        assert slowest < 2 * HEARTBEAT_S, f"the last worker was back after {slowest:.1f} s"
        new_leader = fleet.leader()
        assert new_leader in survivors
        # A worker that goes silent holding a lease: marked offline, its job requeued.
        lost = fleet.submit(survivors[0], type="sleep", payload={"seconds": 3})
        holder = wait_for(lambda: fleet.job(lost)["workerId"])
        silent = next(w for w in workers if f"--worker-id {holder}" in " ".join(w.proc.args))
        silent.signal(signal.SIGKILL)
        silent.wait()
        wait_for(
            lambda: (
                httpx.get(f"{fleet.url}/api/providers/{holder}").json()["provider"]["status"]
                == "offline"
            ),
            timeout=4 * HEARTBEAT_S + 5,
            step=0.5,
        )
        wait_for(
            lambda: all(fleet.job(j)["status"] == "completed" for j in [*ids, late, lost]),
            timeout=120,
            step=0.5,
        )
        requeued = fleet.job(lost)
        assert any(e.get("reason") == "agent lost" for e in requeued["history"])
        assert requeued["workerId"] != holder
        assert [reported(fleet.job(j)) for j in [*ids, late, lost]] == [1] * (len(ids) + 2)
        listed = {p["workerId"] for p in all_providers(fleet.url)}
        assert "late-one" in listed and len(listed) == WORKERS + 1  # the registration kept
    finally:
        codes = stop_workers(workers)
        fleet.stop()
    assert sorted(codes).count(0) == WORKERS - 1  # all but the one killed
    assert all("Traceback" not in w.output() for w in workers)


def poll(url: str, token: str, wait: float, into: list[Any]) -> None:
    started = time.monotonic()
    answer = httpx.get(
        f"{url}/api/jobs/pending/w1",
        params={"wait": wait},
        headers={"Authorization": f"Bearer {token}"},
        timeout=wait + 10,
    )
    into.append((time.monotonic() - started, answer))


def test_what_one_replica_does_reaches_the_others(cluster: Cluster, tmp_path: Path) -> None:
    """A job submitted on A wakes a worker long-polling on B; a registration on A answers a
    check-new long-poll on B; events on B's WebSocket show what happened on A."""
    fleet = Fleet(tmp_path, cluster.new_database(), 2, balanced=False)
    a, b = fleet.replicas
    try:
        token = register(a.url, "w1")
        with connect(b.url.replace("http", "ws") + "/api/events") as ws:
            ws.send(json.dumps({"type": "auth", "key": KEY["Authorization"][7:]}))
            polls: list[Any] = []
            waiting = threading.Thread(target=poll, args=(b.url, token, 30, polls))
            waiting.start()
            time.sleep(1)  # the worker waits on B
            job_id = fleet.submit(a, type="sleep", payload={"seconds": 0})
            waiting.join()
            took, answer = polls[0]
            assert answer.status_code == 200 and answer.json()["job"]["id"] == job_id
            assert took < 5  # woken by A's notification, not by the end of its 30 s wait

            found: list[Any] = []
            watching = threading.Thread(
                target=lambda: found.append(
                    httpx.get(
                        b.url + "/api/providers/check-new",
                        params={"since": time.time(), "wait": 30},
                        timeout=40,
                    )
                )
            )
            watching.start()
            time.sleep(1)
            httpx.post(a.url + "/api/providers/quick-register", json=register_body("w2"))
            watching.join()
            assert [p["workerId"] for p in found[0].json()["providers"]] == ["w2"]

            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 10
            while ("PROVIDER_REGISTERED", "w2") not in seen and time.monotonic() < deadline:
                event = json.loads(ws.recv(timeout=10))
                data = event["data"]
                seen.append((event["type"], data.get("id") or data.get("workerId")))
            assert ("JOB_QUEUED", job_id) in seen and ("JOB_ASSIGNED", job_id) in seen
            assert ("PROVIDER_REGISTERED", "w2") in seen
    finally:
        fleet.stop()


def transactions(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_an_idle_poll_asks_the_database_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """While nothing is queued, a worker's poll costs no statement: the replica knows that
    nothing was queued since it last looked, and that the worker holds no lease."""
    url = cluster.new_database()
    fleet = Fleet(tmp_path, url, 1, balanced=False)
    (server,) = fleet.replicas
    try:
        token = register(server.url, "w1")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers) as client:
            assert client.get("/api/jobs/pending/w1").status_code == 204
            time.sleep(1.5)  # the statistics are flushed about once a second
            before = transactions(url)
            for _ in range(100):
                assert client.get("/api/jobs/pending/w1").status_code == 204
            time.sleep(1.5)
            during = transactions(url) - before
        assert during < 20, during  # the saves of volatile state, a few a second
    finally:
        fleet.stop()


def test_replicas_answer_503_while_postgres_is_down_and_recover_listening(
    cluster: Cluster, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path, cluster.new_database(), 2, balanced=False)
    a, b = fleet.replicas
    try:
        token = register(a.url, "w1")
        cluster.stop_server()
        try:
            for replica in (a, b):
                wait_for(lambda r=replica: httpx.get(r.url + "/healthz").status_code == 503)
        finally:
            cluster.start()
        for replica in (a, b):
            wait_for(lambda r=replica: httpx.get(r.url + "/healthz").status_code == 200)
        assert fleet.leader() in (a, b)
        again = "listening to the database again"
        for replica in (a, b):  # each says it lost the database's news, and has it again
            assert "not listening to the database" in replica.output()
            wait_for(lambda r=replica: again in r.output(), timeout=10)
        heard = httpx.post(  # w1 heartbeats, as a worker does: it is not silent
            f"{b.url}/api/providers/w1/heartbeat",
            json={"status": "online"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert heard.status_code == 200
        polls: list[Any] = []
        waiting = threading.Thread(target=poll, args=(b.url, token, 30, polls))
        waiting.start()
        time.sleep(1)
        job_id = fleet.submit(a, type="sleep", payload={"seconds": 0})
        waiting.join()
        took, answer = polls[0]
        assert answer.status_code == 200 and answer.json()["job"]["id"] == job_id
        assert took < 5
    finally:
        fleet.stop()


def test_a_database_outage_longer_than_the_offline_window_runs_no_job_twice(
    cluster: Cluster, tmp_path: Path
) -> None:
    """PostgreSQL down for longer than three heartbeat intervals while workers run jobs:
    heartbeats, also those naming a running job, are still answered (they read nothing),
    and once the database is back nobody is marked offline nor loses a lease for not
    having been heard meanwhile (a worker whose heartbeats were lost has three intervals
    to come back): each job is run once and reported once."""
    fleet = Fleet(tmp_path, cluster.new_database(), 2)
    worker: Worker | None = None
    try:
        token = register(fleet.url, "w2")
        beat = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: online(fleet.url) == 1, timeout=30)
        by_hand = fleet.submit(fleet.replicas[0], type="sleep", payload={"seconds": 0})
        taken = httpx.get(f"{fleet.url}/api/jobs/pending/w2", params={"wait": 5}, headers=beat)
        assert taken.status_code == 200 and taken.json()["job"]["id"] == by_hand, taken.text

        def heartbeat(via: str | None = None) -> int:
            body = {"status": "busy", "currentJobIds": [by_hand]}
            url = f"{via or fleet.url}/api/providers/w2/heartbeat"
            return httpx.post(url, json=body, headers=beat).status_code

        worker = Worker(tmp_path, fleet.url, "w1")
        wait_for(lambda: online(fleet.url) == 2, timeout=30)
        job_id = fleet.submit(fleet.replicas[0], type="sleep", payload={"seconds": 20})
        wait_for(lambda: fleet.job(job_id)["status"] == "assigned")
        for replica in fleet.replicas:  # each has read its record: it keeps it at hand
            assert heartbeat(replica.url) == 200
        cluster.stop_server()
        try:
            for _ in range(5):  # the offline window is 3 intervals
                time.sleep(HEARTBEAT_S)
                for replica in fleet.replicas:  # answered from memory, lease renewed
                    assert heartbeat(replica.url) == 200, replica.url
        finally:
            cluster.start()
        fleet.leader()
        time.sleep(2)  # the leader's housekeeping has run since
        assert heartbeat() == 200
        for _ in range(10):  # w2 was not marked offline, on either replica
            for replica in fleet.replicas:
                seen = httpx.get(f"{replica.url}/api/providers/w2").json()["provider"]
                assert seen["status"] == "busy", replica.url  # as it says, not offline
            time.sleep(0.2)
        report = {"attempt": 1, "status": "completed", "result": {"slept": 0}}
        done = httpx.post(f"{fleet.url}/api/jobs/{by_hand}/complete", json=report, headers=beat)
        assert done.status_code == 200, done.text
        wait_for(lambda: fleet.job(job_id)["status"] == "completed", timeout=60, step=0.5)
        for ran in (by_hand, job_id):
            history = fleet.job(ran)["history"]
            assert [e["event"] for e in history] == ["created", "leased", "reported"], history
    finally:
        if worker is not None:
            worker.signal(signal.SIGTERM)
            worker.wait(30)
        fleet.stop()


def test_a_replica_that_joins_the_fleet_gives_no_lease_the_restart_grace(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A whole coordinator's restart gives every lease a minute more (its workers may be
    in their reconnect backoff); a replica that starts while another runs must not, or
    every rolling restart would keep a lost worker's job a minute longer."""
    fleet = Fleet(tmp_path, cluster.new_database(), 1, balanced=False)
    first = fleet.replicas[0]
    try:
        token = register(first.url, "w1")
        job_id = fleet.submit(first, type="sleep", payload={"seconds": 60})
        taken = httpx.get(
            f"{first.url}/api/jobs/pending/w1",
            params={"wait": 5},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert taken.status_code == 200 and taken.json()["job"]["id"] == job_id
        fleet.add()  # and w1 is lost: it says nothing more
        wait_for(lambda: fleet.job(job_id, first)["status"] == "queued", timeout=30, step=0.5)
        expired = fleet.job(job_id, first)["history"][-1]
        assert (expired["event"], expired["reason"]) == ("lease_expired", "agent lost")
    finally:
        fleet.stop()


def test_a_replica_started_with_another_api_key_leaves_the_fleet_s_key_working(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A server started with a new key revokes the key of the previous start, but not
    while other servers on the database run with it: a replica started with another key
    by mistake must not lock the operator out of the whole fleet."""
    fleet = Fleet(tmp_path, cluster.new_database(), 1, balanced=False)
    other_key = "qbx_" + "k" * 40
    second = ServerProcess(
        tmp_path / "data", HEARTBEAT_S, "--database", fleet.database, "--api-key", other_key
    )
    second.log = tmp_path / "second.log"
    fleet.replicas.append(second.start())
    try:
        for replica in fleet.replicas:
            for key in (KEY, {"Authorization": f"Bearer {other_key}"}):
                assert httpx.get(replica.url + "/api/jobs", headers=key).status_code == 200
        assert "was started with another API key" in second.output()
    finally:
        fleet.stop()
