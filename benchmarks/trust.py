"""Catching liars: 1,000 simulated workers against a real `qubix serve` with canaries on.

5 % always answer `matmul` wrongly, 5 % answer wrongly one time in ten, 2 % claim an A40
and report a GPU engine that runs at CPU speed, 4 % collude in pairs (each pair forges the
same wrong answer, one time in three, to outvote an honest replica), the rest are honest
(they compute every answer, in plain Python, as a worker without a GPU engine does).
Renters keep `matmul` jobs queued (n = 16). Each worker polls and answers in turn; honest
workers stop after `--honest-jobs` (default 150), always-cheaters after 20 jobs, one-in-ten cheaters
and colluders after 300, hardware liars after 5, or as soon as they are caught. Each
worker is on a network of its own (replicas come from different /24s).

Printed: for each kind, the share caught and the median number of its jobs until then;
honest workers penalised (quarantined or marked mismatch: target 0); the share of jobs
that were canaries, and canaries or replicas (jobs run again to check them: the checking
cost; target <= 5 % at the end, measured over the honest workers' last 10 jobs); forged
results accepted as verified (target 0).

    python benchmarks/trust.py [--workers 1000] [--honest-jobs 150]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx
from _server import API_KEY, Connection, Server, register_body

from qubix_cli.qubic import identity_from_public_key
from qubix_cli.worker.engine import expected_digest

KINDS = {"honest": 0.84, "always": 0.05, "sometimes": 0.05, "liar": 0.02, "colluder": 0.04}
BUDGET = {"always": 20, "sometimes": 300, "liar": 5, "colluder": 300}
A40 = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}]


@dataclass
class Sim:
    name: str
    kind: str
    token: str = ""
    jobs: int = 0
    canaries: int = 0
    checks: int = 0
    caught_at: int | None = None
    recent: list[bool] = field(default_factory=list)  # were its last jobs checks?


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--honest-jobs", type=int, default=150)
    args = parser.parse_args()
    rng = random.Random(7)
    # Simulated workers each have an address of their own (X-Forwarded-For, believed from
    # loopback here), so that replicas may go to any two of them.
    server = Server(30.0, "--canaries", "--trusted-proxy", "127.0.0.1")
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        sims = register(http, args.workers, rng)
        started = time.monotonic()
        asyncio.run(simulate(server.url, sims, args.honest_jobs, rng))
        for sim in sims:
            trust = http.get(f"/api/providers/{sim.name}").json()["provider"]["trust"]
            if sim.kind == "honest" and (trust["quarantined"] or trust["claim"] == "mismatch"):
                sim.caught_at = sim.jobs
        took = time.monotonic() - started
        forged_verified = count_forged_verified(http, {"Authorization": f"Bearer {API_KEY}"})
    report(sims, forged_verified, took)


async def simulate(url: str, sims: list[Sim], honest_jobs: int, rng: random.Random) -> None:
    """Every simulated worker polls and answers at once; renters keep jobs queued."""
    feeders = [Connection(url) for _ in range(8)]
    done = asyncio.Event()
    feeding = asyncio.create_task(keep_queued(feeders, len(sims) // 4, rng, done))
    await asyncio.gather(*(work(Connection(url), sim, rng, honest_jobs) for sim in sims))
    done.set()
    await feeding
    for feeder in feeders:
        feeder.close()


def register(http: httpx.Client, count: int, rng: random.Random) -> list[Sim]:
    sims = []
    kinds = [k for k, share in KINDS.items() for _ in range(round(share * count))]
    for i, kind in enumerate(kinds[:count]):
        sim = Sim(f"sim-{i:04d}", kind)
        body = {
            **register_body(sim.name),
            "qubicAddress": identity_from_public_key(i.to_bytes(32, "little")),
            "capabilities": ["matmul"],
            "gpus": A40,
        }
        ip = {"X-Forwarded-For": f"10.{i // 256 % 256}.{i % 256}.1"}
        answer = http.post("/api/providers/quick-register", json=body, headers=ip)
        sim.token = answer.json()["workerToken"]
        sims.append(sim)
    return sims


async def keep_queued(
    feeders: list[Connection], wanted: int, rng: random.Random, done: asyncio.Event
) -> None:
    """Renters: keep about `wanted` jobs queued, submitting over several connections."""

    async def submit(feeder: Connection, count: int) -> None:
        for _ in range(count):
            job: dict[str, object] = {
                "type": "matmul",
                "payload": {"seed": rng.randrange(2**32), "n": 16},
            }
            if rng.random() < 0.2:  # a fifth of the renters ask for replication
                job["verify"] = "replicate"
            await feeder.request("POST", "/api/jobs", job, API_KEY)

    while not done.is_set():
        path = "/api/jobs?status=queued&limit=1"
        _, queued = await feeders[0].request("GET", path, token=API_KEY)
        missing = max(0, wanted - queued["total"])
        n = len(feeders)
        counts = [missing // n + (i < missing % n) for i in range(n)]
        await asyncio.gather(*(submit(f, c) for f, c in zip(feeders, counts, strict=True)))
        await asyncio.sleep(0.05)


def count_forged_verified(http: httpx.Client, key: dict[str, str]) -> int:
    """Completed jobs marked verified whose answer is wrong."""
    forged, offset = 0, 0
    while True:
        params = {"status": "completed", "limit": 500, "offset": offset}
        page = http.get("/api/jobs", params=params, headers=key).json()
        for job in page["jobs"]:
            payload, result = job["payload"], job["result"] or {}
            if job.get("verified") and payload.get("n") == 16:
                forged += result.get("digest") != expected_digest(payload["seed"], 16)
        offset += len(page["jobs"])
        if offset >= page["total"] or not page["jobs"]:
            return forged


async def work(conn: Connection, sim: Sim, rng: random.Random, honest_jobs: int) -> None:
    while not finished(sim, honest_jobs):
        path = f"/api/jobs/pending/{sim.name}?wait=5"  # a long-poll, as the real agent does
        status, leased = await conn.request("GET", path, token=sim.token)
        if status != 200:
            continue
        job, payload = leased["job"], leased["job"]["payload"]
        sim.jobs += 1
        is_canary = payload["n"] != 16  # only the simulation peeks, to count the cost
        is_check = is_canary or leased["attempt"] > 1  # a canary, or a job run again
        sim.canaries += is_canary
        sim.checks += is_check
        sim.recent = [*sim.recent[-9:], is_check]
        cheat = sim.kind == "always" or (sim.kind == "sometimes" and rng.random() < 0.1)
        if sim.kind == "colluder" and random.Random(payload["seed"]).random() < 1 / 3:
            pair = int(sim.name[4:]) // 2  # the pair forges the same jobs, the same way
            digest = hashlib.sha256(f"forged {pair} {payload['seed']}".encode()).hexdigest()
        elif cheat:
            digest = "0" * 64
        else:
            digest = expected_digest(payload["seed"], payload["n"])
        engine = "cuda" if sim.kind == "liar" else "none"
        result = {"digest": digest, "engine": engine, "computeS": 0.02, "n": payload["n"]}
        body = {"attempt": leased["attempt"], "status": "completed", "result": result}
        await conn.request("POST", f"/api/jobs/{job['id']}/complete", body, sim.token)
        if sim.kind != "honest":
            _, shown = await conn.request("GET", f"/api/providers/{sim.name}")
            trust = shown["provider"]["trust"]
            if trust["quarantined"] or trust["claim"] == "mismatch":
                sim.caught_at = sim.jobs
    conn.close()


def finished(sim: Sim, honest_jobs: int) -> bool:
    if sim.kind == "honest":
        return sim.jobs >= honest_jobs
    return sim.caught_at is not None or sim.jobs >= BUDGET[sim.kind]


def report(sims: list[Sim], forged_verified: int, took: float) -> None:
    print(f"{len(sims)} workers, {sum(s.jobs for s in sims)} jobs in {took:.0f} s")
    print(f"{'kind':<12}{'workers':>8}{'caught':>8}{'median jobs':>13}{'worst':>7}")
    for kind in KINDS:
        group = [s for s in sims if s.kind == kind]
        caught = [s.caught_at for s in group if s.caught_at is not None]
        median = f"{statistics.median(caught):.0f}" if caught else "-"
        worst = f"{max(caught)}" if caught else "-"
        print(f"{kind:<12}{len(group):>8}{len(caught) / len(group):>8.0%}{median:>13}{worst:>7}")
    honest = [s for s in sims if s.kind == "honest"]
    recent = [c for s in honest for c in s.recent]
    jobs = sum(s.jobs for s in sims)
    print(f"honest workers penalised: {sum(s.caught_at is not None for s in honest)}")
    print(f"canaries among all jobs: {sum(s.canaries for s in sims) / jobs:.1%}")
    print(f"canaries and replicas among all jobs: {sum(s.checks for s in sims) / jobs:.1%}")
    print(
        f"canaries and replicas among honest workers' last 10 jobs: {sum(recent) / len(recent):.1%}"
    )
    print(f"forged results accepted as verified: {forged_verified}")


if __name__ == "__main__":
    main()
