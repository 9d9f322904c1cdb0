"""Fleet simulation: N workers at the real cadence against one `qubix serve`.

Each simulated worker does what the agent does: it registers, heartbeats at the server's
interval (naming the job it runs), asks for work, runs `sleep` jobs and reports them.
A submitter keeps jobs flowing. Two designs are measured side by side on fresh servers:
- qubix: `GET /api/jobs/pending/{id}?wait=25` (long-poll), woken by a submission;
- seed:  `GET /api/jobs/pending/{id}` every 5 s without `wait`.
Workers start spread over one heartbeat interval (the ramp); figures are taken over the
--seconds after it: per endpoint p50/p99 latency and errors, dispatch latency (submission
to lease), requests per second per worker, server CPU and RSS, and the simulator's own CPU
(so the reader can tell whether the simulator was the bottleneck).

    python benchmarks/fleet.py [--workers 1000 5000 10000] [--seconds 60] [--design both]
    python benchmarks/fleet.py --database postgresql://user@host/db --design qubix
    python benchmarks/fleet.py --database postgresql://... --replicas 1 2 --design qubix

With --database, each size runs on the embedded store (the baseline) and on PostgreSQL
(a fresh database made for the run next to the one named, dropped after), adding
PostgreSQL's CPU (all its processes on this machine) and its transactions a second per
1,000 workers (an autocommit statement counts as one; `pg_stat_database`). With
--replicas, PostgreSQL runs once per count of replicas, and every run (the baseline too)
is behind nginx with the configuration of docs/scaling.md (several worker processes:
it holds two descriptors per long-poll); each replica's CPU and RSS are shown.
--jobs-per-s 0 measures an idle fleet.

Loopback only; bounded by --seconds. The simulator holds one connection per worker for its
long-poll and opens one per heartbeat (closed after it), as the agent does.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import uvloop
from _server import API_KEY, Connection, Server, percentile, register_body, register_many

sys.path.insert(0, str(Path(__file__).parent.parent))  # the tests' nginx
from qubix_cli.worker.agent import beat_interval_s  # noqa: E402
from tests.balancer import Nginx  # noqa: E402

REQUEST_TIMEOUT_S = 60.0  # above the 25 s long-poll: a request that takes longer is an error
SEED_POLL_S = 5.0


@dataclass
class Endpoint:
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class Worker:
    """What survives a simulated crash: identity, token and the outbox of finished reports."""

    worker_id: str
    token: str
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_job: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    poll: Connection | None = None


class Fleet:
    def __init__(self, url: str, tokens: dict[str, str], design: str, interval_s: float) -> None:
        self.url, self.design, self.interval_s = url, design, interval_s
        self.workers = {w: Worker(w, t) for w, t in tokens.items()}
        self.endpoints: dict[str, Endpoint] = defaultdict(Endpoint)
        self.measuring = False
        self.submitted_at: dict[str, float] = {}
        self.leased_at: dict[str, float] = {}
        self.accepted: dict[str, int] = defaultdict(int)  # job id -> 200 answers to reports
        self.refused_reports: list[tuple[str, int, Any]] = []
        self.max_attempts = (3,)  # each job's maxAttempts is one of these
        self.lag_ms: list[float] = []

    # -- requests -----------------------------------------------------------------------

    async def call(
        self,
        name: str,
        conn: Connection,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        expect: tuple[int, ...] = (200,),
        timed: bool = True,
    ) -> tuple[int, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, answer = await conn.request(method, path, body, token)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            conn.close()
            status, answer = 0, repr(exc)
        if self.measuring:
            stats = self.endpoints[name]
            stats.requests += 1
            if status not in expect:
                stats.errors += 1
                stats.last_error = f"{status} {answer}"[:200]
            elif timed:
                stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        return status, answer

    # -- one worker ---------------------------------------------------------------------

    def start(self, w: Worker, delay_s: float) -> None:
        w.tasks = [
            asyncio.create_task(self._heartbeats(w, delay_s)),
            asyncio.create_task(self._work(w, delay_s)),
        ]

    def kill(self, w: Worker) -> None:
        """A crash: tasks gone, connections dropped, the running job abandoned."""
        for task in w.tasks:
            task.cancel()
        if w.poll is not None:
            w.poll.reset()
        w.current_job = None

    async def restart(self, w: Worker, down_s: float) -> None:
        await asyncio.sleep(down_s)
        conn = Connection(self.url)
        body = register_body(w.worker_id)
        await self.call(
            "register (restart)", conn, "POST", "/api/providers/quick-register", body, w.token
        )
        conn.close()
        self.start(w, 0)

    async def _heartbeats(self, w: Worker, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        while True:
            conn = Connection(self.url)
            body = {"status": "busy" if w.current_job else "online"}
            if w.current_job:
                body["currentJobId"] = w.current_job
            path = f"/api/providers/{w.worker_id}/heartbeat"
            await self.call("heartbeat", conn, "POST", path, body, w.token)
            conn.reset()
            await asyncio.sleep(beat_interval_s(self.interval_s))

    async def _work(self, w: Worker, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        w.poll = conn = Connection(self.url)
        for job_id, report in list(w.outbox.items()):  # reports a crash left unsent
            await self._report(w, conn, job_id, report)
        while True:
            if self.design == "seed":
                path, name = f"/api/jobs/pending/{w.worker_id}", "pending (poll)"
            else:
                path, name = f"/api/jobs/pending/{w.worker_id}?wait=25", "pending (long-poll)"
            status, answer = await self.call(
                name,
                conn,
                "GET",
                path,
                token=w.token,
                expect=(200, 204),
                timed=name != "pending (long-poll)",
            )
            if status == 200:
                await self._run(w, conn, answer)
            elif self.design == "seed":
                conn.reset()  # the server would close it after 5 s idle anyway
                await asyncio.sleep(SEED_POLL_S)
            elif status != 204:
                await asyncio.sleep(1)

    async def _run(self, w: Worker, conn: Connection, answer: dict[str, Any]) -> None:
        job = answer["job"]
        self.leased_at.setdefault(job["id"], time.perf_counter())
        w.current_job = job["id"]
        await asyncio.sleep(job["payload"]["seconds"])
        report = {"attempt": answer["attempt"], "status": "completed", "result": {"slept": True}}
        w.outbox[job["id"]] = report
        w.current_job = None
        await self._report(w, conn, job["id"], report)

    async def _report(
        self, w: Worker, conn: Connection, job_id: str, report: dict[str, Any]
    ) -> None:
        path = f"/api/jobs/{job_id}/complete"
        status, answer = await self.call(
            "complete", conn, "POST", path, report, w.token, expect=(200, 409)
        )
        if status == 200:
            self.accepted[job_id] += 1
        elif status == 409:
            self.refused_reports.append((job_id, report["attempt"], answer))
        if status in (200, 409):
            del w.outbox[job_id]

    # -- the submitter ------------------------------------------------------------------

    async def submitter(self, jobs_per_s: float, until: float) -> None:
        if not jobs_per_s:  # an idle fleet
            await asyncio.sleep(until - time.monotonic())
            return
        conn = Connection(self.url)
        while time.monotonic() < until:
            body = {
                "type": "sleep",
                "payload": {"seconds": round(random.uniform(0.5, 3.0), 2)},
                "maxAttempts": random.choice(self.max_attempts),
            }
            started = time.perf_counter()
            status, answer = await self.call(
                "submit", conn, "POST", "/api/jobs", body, API_KEY, expect=(201,)
            )
            if status == 201:
                self.submitted_at[answer["job"]["id"]] = started
            await asyncio.sleep(max(0.0, 1 / jobs_per_s - (time.perf_counter() - started)))
        conn.close()

    async def watch_own_lag(self) -> None:
        """How late the simulator's own event loop runs a 10 ms timer: latencies include it."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            if self.measuring:
                self.lag_ms.append((time.perf_counter() - started) * 1000 - 10)

    def dispatch_ms(self) -> list[float]:
        return [
            (self.leased_at[j] - t) * 1000
            for j, t in self.submitted_at.items()
            if j in self.leased_at
        ]


class Postgres:
    """PostgreSQL's side of a run: a fresh database, its CPU and transactions."""

    def __init__(self, admin_url: str, run: str) -> None:
        import psycopg

        self.psycopg, self.admin_url = psycopg, admin_url
        self.name = f"qubix_bench_{run}_{int(time.time())}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}".encode())
        base = admin_url.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def cpu_s(self) -> float:
        total = 0.0
        for proc in psutil.process_iter(["name", "cpu_times"]):
            if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"]:
                total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
        return total

    def transactions(self) -> int:
        with self.psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.name,),
            ).fetchone()
        return int(row[0]) if row else 0

    def drop(self) -> None:
        with self.psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)".encode())


async def simulate(
    servers: list[Server],
    url: str,
    workers: int,
    design: str,
    seconds: float,
    jobs_per_s: float,
    postgres: Postgres | None = None,
) -> dict[str, Any]:
    tokens, _ = await register_many(url, workers)
    fleet = Fleet(url, tokens, design, servers[0].heartbeat_interval_s)
    ramp = fleet.interval_s
    for w in fleet.workers.values():
        fleet.start(w, random.uniform(0, ramp))
    lag = asyncio.create_task(fleet.watch_own_lag())
    await asyncio.sleep(ramp)
    fleet.measuring = True
    cpu0 = [s.cpu_s() for s in servers]
    own_cpu0, wall0 = time.process_time(), time.perf_counter()
    pg_cpu0 = postgres.cpu_s() if postgres else 0.0
    pg_tx0 = postgres.transactions() if postgres else 0
    await fleet.submitter(jobs_per_s, time.monotonic() + seconds)
    wall = time.perf_counter() - wall0
    figures = {
        "server_cpu": [(s.cpu_s() - c) / wall * 100 for s, c in zip(servers, cpu0, strict=True)],
        "own_cpu": (time.process_time() - own_cpu0) / wall * 100,
        "rss_mb": [s.rss_mb() for s in servers],
        "wall": wall,
    }
    if postgres:
        await asyncio.sleep(1.0)  # its statistics are flushed within a second
        figures["pg_cpu"] = (postgres.cpu_s() - pg_cpu0) / wall * 100
        figures["pg_tx_per_s_per_1000"] = (
            (postgres.transactions() - pg_tx0 - 1) / wall / workers * 1000
        )
    fleet.measuring = False
    lag.cancel()
    for w in fleet.workers.values():
        fleet.kill(w)
    await asyncio.sleep(0.1)
    return {"fleet": fleet, **figures}


def report(workers: int, design: str, run: dict[str, Any], store: str = "embedded") -> None:
    fleet: Fleet = run["fleet"]
    total = sum(e.requests for e in fleet.endpoints.values())
    print(f"\n== {workers} workers, {design} design, {store}, {run['wall']:.0f} s measured ==")
    print(f"{'endpoint':<22}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for name, e in sorted(fleet.endpoints.items()):
        lat = e.latencies_ms
        p50 = f"{percentile(lat, 50):.1f}" if lat else "-"
        p99 = f"{percentile(lat, 99):.1f}" if lat else "-"
        print(f"{name:<22}{e.requests:>10}{e.errors:>8}{p50:>10}{p99:>10}")
        if e.errors:
            print(f"  last error: {e.last_error}")
    dispatch = fleet.dispatch_ms()
    if dispatch:
        print(
            f"dispatch (submit -> lease): {len(dispatch)} jobs, "
            f"p50 {percentile(dispatch, 50):.1f} ms, p99 {percentile(dispatch, 99):.1f} ms"
        )
    each = zip(run["server_cpu"], run["rss_mb"], strict=True)
    servers = ", ".join(f"CPU {cpu:.0f} % RSS {rss:.0f} MB" for cpu, rss in each)
    print(
        f"requests/s per worker {total / run['wall'] / workers:.3f}; server(s): {servers}; "
        f"simulator CPU {run['own_cpu']:.0f} %, its own loop lag p99 "
        f"{percentile(fleet.lag_ms, 99):.1f} ms"
    )
    if "pg_cpu" in run:
        print(
            f"PostgreSQL CPU {run['pg_cpu']:.0f} %, transactions/s per 1,000 workers "
            f"{run['pg_tx_per_s_per_1000']:.1f}"
        )


def run_one(args: argparse.Namespace, workers: int, design: str, store: str, count: int) -> None:
    """One run: `count` servers of `store` (behind nginx with --replicas), measured."""
    postgres = Postgres(args.database, f"{workers}") if store == "postgres" else None
    options = ("--database", postgres.url) if postgres else ()
    data_dir = Path(tempfile.mkdtemp(prefix="qubix-bench-"))
    servers: list[Server] = []
    balancer = None
    try:
        for _ in range(count):  # one at a time: the first makes the update key
            servers.append(
                Server(
                    args.heartbeat_interval,
                    *options,
                    "--trusted-proxy",
                    "127.0.0.1",
                    data_dir=data_dir,
                )
            )
        if args.replicas:
            balancer = Nginx([f"127.0.0.1:{s.port}" for s in servers], processes=4)
        url = balancer.url if balancer else servers[0].url
        run = uvloop.run(
            simulate(servers, url, workers, design, args.seconds, args.jobs_per_s, postgres)
        )
    finally:
        if balancer:
            balancer.stop()
        for server in servers:
            server.stop()
        if postgres:
            postgres.drop()
    label = f"{store} store" if store == "embedded" else f"postgres, {count} replica(s)"
    report(workers, design, run, label + (" behind nginx" if balancer else ""))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs-per-s", type=float, default=20)
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    parser.add_argument("--design", choices=["qubix", "seed", "both"], default="both")
    parser.add_argument(
        "--database", help="a PostgreSQL database to make the run's databases beside"
    )
    parser.add_argument(
        "--replicas", type=int, nargs="+", help="PostgreSQL runs with this many replicas"
    )
    args = parser.parse_args()
    designs = ["qubix", "seed"] if args.design == "both" else [args.design]
    for workers in args.workers:
        for design in designs:
            run_one(args, workers, design, "embedded", 1)
            if args.database:
                for count in args.replicas or [1]:
                    run_one(args, workers, design, "postgres", count)


if __name__ == "__main__":
    main()
