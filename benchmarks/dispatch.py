"""Job dispatch: latency from submission to lease, and full cycles per second.

Starts a real `qubix serve` and, in the same run:
1. dispatch latency over --jobs jobs, each submitted while --workers idle workers long-poll
   `pending?wait=25` (our design), one job at a time;
2. the same with the seed's design: workers poll `pending` every 5 s without `wait`
   (--seed-jobs jobs, submitted at 4 per second, since each takes seconds to be seen);
3. full cycles (submit -> lease -> complete) per second with --cycle-workers workers and
   --cycles jobs submitted by 8 concurrent submitters.

    python benchmarks/dispatch.py [--jobs 1000] [--seed-jobs 100] [--cycles 5000]

Loopback only; bounded by the job counts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from _server import API_KEY, Connection, Server, percentile, register_many


class Fleet:
    """Simulated workers that lease jobs and report them at once."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url, self.tokens = url, tokens
        self.leased_at: dict[str, float] = {}
        self.stop = False

    async def long_poll(self, worker_id: str) -> None:
        conn = Connection(self.url)
        while not self.stop:
            status, answer = await conn.request(
                "GET", f"/api/jobs/pending/{worker_id}?wait=2", token=self.tokens[worker_id]
            )
            if status == 200:
                await self._report(conn, worker_id, answer)
        conn.close()

    async def seed_poll(self, worker_id: str) -> None:
        """The seed's worker: ask every 5 s, never wait."""
        conn = Connection(self.url)
        await asyncio.sleep(random.uniform(0, 5))
        while not self.stop:
            status, answer = await conn.request(
                "GET", f"/api/jobs/pending/{worker_id}", token=self.tokens[worker_id]
            )
            if status == 200:
                await self._report(conn, worker_id, answer)
            await asyncio.sleep(5)
        conn.close()

    async def _report(self, conn: Connection, worker_id: str, answer: dict[str, object]) -> None:
        job = answer["job"]
        assert isinstance(job, dict)
        self.leased_at[job["id"]] = time.perf_counter()
        body = {"attempt": answer["attempt"], "status": "completed", "result": {"ok": True}}
        status, _ = await conn.request(
            "POST", f"/api/jobs/{job['id']}/complete", body, token=self.tokens[worker_id]
        )
        assert status == 200, status


async def submit(conn: Connection) -> tuple[str, float]:
    started = time.perf_counter()
    body = {"type": "sleep", "payload": {"seconds": 0}}
    status, answer = await conn.request("POST", "/api/jobs", body, token=API_KEY)
    assert status == 201, answer
    return answer["job"]["id"], started


async def latency(url: str, tokens: dict[str, str], jobs: int, seed: bool) -> list[float]:
    fleet = Fleet(url, tokens)
    poll = fleet.seed_poll if seed else fleet.long_poll
    workers = [asyncio.create_task(poll(w)) for w in tokens]
    await asyncio.sleep(0.5)
    conn = Connection(url)
    submitted: dict[str, float] = {}
    for _ in range(jobs):
        job_id, at = await submit(conn)
        submitted[job_id] = at
        if seed:
            await asyncio.sleep(0.25)
        else:
            while job_id not in fleet.leased_at:
                await asyncio.sleep(0.0005)
    while len(fleet.leased_at) < jobs:
        await asyncio.sleep(0.05)
    fleet.stop = True
    await asyncio.gather(*workers)
    conn.close()
    return [(fleet.leased_at[j] - at) * 1000 for j, at in submitted.items()]


async def cycles(url: str, tokens: dict[str, str], count: int) -> float:
    fleet = Fleet(url, tokens)
    workers = [asyncio.create_task(fleet.long_poll(w)) for w in tokens]
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    remaining = iter(range(count))

    async def submitter() -> None:
        conn = Connection(url)
        for _ in remaining:
            await submit(conn)
        conn.close()

    await asyncio.gather(*(submitter() for _ in range(8)))
    while len(fleet.leased_at) < count:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    fleet.stop = True
    await asyncio.gather(*workers)
    return count / elapsed


def row(name: str, values: list[float]) -> str:
    return (
        f"{name:<28}{len(values):>6}{percentile(values, 50):>10.1f}"
        f"{percentile(values, 99):>10.1f}{max(values):>10.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed-jobs", type=int, default=100)
    parser.add_argument("--cycle-workers", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=5000)
    args = parser.parse_args()
    with Server() as server:
        tokens, _ = asyncio.run(register_many(server.url, args.cycle_workers))
        few = dict(list(tokens.items())[: args.workers])
        ours = asyncio.run(latency(server.url, few, args.jobs, seed=False))
        seed = asyncio.run(latency(server.url, few, args.seed_jobs, seed=True))
        print(f"dispatch latency, submit -> lease ({args.workers} idle workers), ms")
        print(f"{'design':<28}{'jobs':>6}{'p50':>10}{'p99':>10}{'max':>10}")
        print(row("long-poll (wait=25)", ours))
        print(row("seed: poll every 5 s", seed))
        cpu0, own0 = server.cpu_s(), time.process_time()
        wall0 = time.perf_counter()
        rate = asyncio.run(cycles(server.url, tokens, args.cycles))
        wall = time.perf_counter() - wall0
        own = time.process_time() - own0
        print(
            f"full cycles (submit -> lease -> complete), {args.cycle_workers} workers: "
            f"{rate:.0f} cycles/s"
        )
        print(
            f"during the cycles: server CPU {(server.cpu_s() - cpu0) / wall * 100:.0f} %, "
            f"load generator CPU {own / wall * 100:.0f} %, server RSS {server.rss_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()
