"""Soak: simulated workers for minutes, crashed and restarted at random, jobs flowing.

The workers of benchmarks/fleet.py (long-poll design) against a real `qubix serve`. A
killer crashes workers at random (half of the time one that is running a job): its tasks
and connections vanish and its running job is abandoned; reports it had finished stay in
its outbox, as the agent's do. It comes back after 1-10 s and re-registers with its token.
Jobs get maxAttempts 1, 2 or 3. After --seconds the submitter and the killer stop, the
fleet drains, and the script checks:
- every job completed with exactly one accepted report, or failed after maxAttempts with
  its history, and none is left queued or assigned;
- one provider per worker, no duplicates;
- server RSS over the run (samples, least-squares trend) and the data dir's size.

    python benchmarks/soak.py [--workers 1000] [--seconds 600] [--kills-per-minute 60]

Loopback only; bounded by --seconds plus the drain (at most 3 leases).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

import uvloop
from _server import API_KEY, Connection, Server, register_many
from fleet import Fleet


async def killer(fleet: Fleet, per_minute: float, until: float) -> list[asyncio.Task[None]]:
    restarts: list[asyncio.Task[None]] = []
    down: set[str] = set()
    while time.monotonic() < until:
        await asyncio.sleep(random.expovariate(per_minute / 60))
        up = [w for w in fleet.workers.values() if w.worker_id not in down]
        busy = [w for w in up if w.current_job]
        w = random.choice(busy if busy and random.random() < 0.5 else up)
        fleet.kill(w)
        down.add(w.worker_id)

        async def come_back(w: Any = w) -> None:
            await fleet.restart(w, random.uniform(1, 10))
            down.discard(w.worker_id)

        restarts.append(asyncio.create_task(come_back()))
    return restarts


async def sample_rss(server: Server, samples: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while True:
        samples.append((time.monotonic() - started, server.rss_mb()))
        await asyncio.sleep(10)


async def fetch_all(conn: Connection, path: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        sep = "&" if "?" in path else "?"
        status, answer = await conn.request(
            "GET", f"{path}{sep}limit=500&offset={len(items)}", token=API_KEY
        )
        assert status == 200, answer
        items += answer[key]
        if len(answer[key]) < 500:
            return items


async def unfinished(conn: Connection) -> int:
    counts = 0
    for status in ("queued", "assigned"):
        _, answer = await conn.request("GET", f"/api/jobs?status={status}&limit=1", token=API_KEY)
        counts += answer["total"]
    return counts


def trend_mb_per_min(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return cov / var * 60 if var else 0.0


def check_jobs(fleet: Fleet, jobs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for job in jobs:
        events = [h["event"] for h in job["history"]]
        if job["status"] == "completed":
            if events.count("reported") != 1 or fleet.accepted[job["id"]] < 1:
                problems.append(f"{job['id']}: completed with reports {events}")
        elif job["status"] == "failed":
            if job["attempt"] != job["maxAttempts"] or events[-1] != "lease_expired":
                problems.append(f"{job['id']}: failed at attempt {job['attempt']}: {events}")
        else:
            problems.append(f"{job['id']}: left {job['status']}")
    return problems


async def soak(server: Server, args: argparse.Namespace) -> bool:
    tokens, _ = await register_many(server.url, args.workers)
    fleet = Fleet(server.url, tokens, "qubix", server.heartbeat_interval_s)
    fleet.max_attempts = (1, 2, 3)
    fleet.measuring = True
    for w in fleet.workers.values():
        fleet.start(w, random.uniform(0, fleet.interval_s))
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(sample_rss(server, samples))
    until = time.monotonic() + args.seconds
    kills = asyncio.create_task(killer(fleet, args.kills_per_minute, until))
    await fleet.submitter(args.jobs_per_s, until)
    restarts = await kills
    await asyncio.gather(*restarts)
    conn = Connection(server.url)
    drain_until = time.monotonic() + 3 * (server.heartbeat_interval_s * 3 + 15)
    while await unfinished(conn) and time.monotonic() < drain_until:
        await asyncio.sleep(2)
    sampler.cancel()
    jobs = await fetch_all(conn, "/api/jobs", "jobs")
    _, answer = await conn.request("GET", "/api/providers")
    providers = [p["workerId"] for p in answer["providers"]]
    conn.close()
    for w in fleet.workers.values():
        fleet.kill(w)

    problems = check_jobs(fleet, jobs)
    if len(providers) != len(set(providers)) or set(providers) != set(tokens):
        problems.append(f"providers: {len(providers)} listed, {len(set(providers))} distinct")
    for name, e in sorted(fleet.endpoints.items()):
        if e.errors:
            problems.append(f"{name}: {e.errors} errors, last: {e.last_error}")
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    requeued = sum(1 for j in jobs if any(h["event"] == "lease_expired" for h in j["history"]))
    size = sum(p.stat().st_size for p in (server.data_dir / "data").rglob("*") if p.is_file())
    print(f"{args.workers} workers, {args.seconds:.0f} s, {args.kills_per_minute} crashes/min")
    print(f"jobs: {len(jobs)} {by_status}; {requeued} lost an agent at least once")
    print(f"reports refused as stale (409): {len(fleet.refused_reports)}")
    print(f"providers: {len(providers)} listed, {len(set(providers))} distinct")
    for name, e in sorted(fleet.endpoints.items()):
        print(f"  {name:<22}{e.requests:>9} requests {e.errors:>4} errors")
    rss = [r for _, r in samples]
    settled = [(t, r) for t, r in samples if t >= 60]  # after the workers' ramp
    print(
        f"server RSS: first {rss[0]:.0f} MB, max {max(rss):.0f} MB, last {rss[-1]:.0f} MB; "
        f"trend after the first minute {trend_mb_per_min(settled):+.2f} MB/min "
        f"({len(settled)} samples)"
    )
    print("RSS samples (MB, every 10 s): " + " ".join(f"{r:.0f}" for r in rss))
    if settled:
        # Every job is kept (in memory and on disk): growth per job stored since the first
        # minute, to set beside what one job record takes in memory (about 4 KB).
        since = min(j["createdAt"] for j in jobs) + 60
        later = sum(1 for j in jobs if j["createdAt"] >= since)
        grown_kb = (settled[-1][1] - settled[0][1]) * 1024
        print(
            f"RSS growth since the first minute: {grown_kb / max(1, later):.1f} KB per job stored"
        )
    print(f"data dir: {size / 2**20:.1f} MiB ({size / max(1, len(jobs)):.0f} bytes per job)")
    for p in problems[:20]:
        print("PROBLEM:", p)
    print("OK" if not problems else f"{len(problems)} PROBLEMS")
    return not problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--kills-per-minute", type=float, default=60)
    parser.add_argument("--jobs-per-s", type=float, default=10)
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    args = parser.parse_args()
    with Server(args.heartbeat_interval) as server:
        ok = uvloop.run(soak(server, args))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
