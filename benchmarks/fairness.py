"""Fair shares and the cost of accounts, against a real `qubix serve`.

1. Renter A submits 5,000 jobs, then renter B submits 10; 20 simulated workers lease and
   report as fast as they can. Printed: the queue wait (submission to lease, from the
   jobs' own history) of B's jobs and of A's, p50 and p99. With accounts taking turns, B's
   jobs wait about one round of dispatch, not behind A's batch.
2. The cost of the key, quota and budget checks: the same submit -> lease -> report cycle,
   run by one client, in blocks that alternate between the operator's key (no quotas, no
   balance check: the single-key path of earlier versions) and a renter's key with every
   quota set and a balance to check. Printed: the server's CPU time and the wall time per
   cycle of each, and the difference (target < 5 %).

    python benchmarks/fairness.py [--batch 5000] [--cycles 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _server import API_KEY, Connection, Server, percentile, register_body

FREE = {"maxPricePerHour": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--cycles", type=int, default=4000)
    args = parser.parse_args()
    with Server(30.0, "--no-canaries") as server:
        asyncio.run(fairness(server, args.batch))
        asyncio.run(checks_cost(server, args.cycles))


async def make_account(conn: Connection, name: str) -> str:
    status, made = await conn.request("POST", "/api/accounts", {"name": name}, API_KEY)
    assert status == 201, made
    key: str = made["apiKey"]
    return key


async def fairness(server: Server, batch: int) -> None:
    conn = Connection(server.url)
    a, b = await make_account(conn, "renter-a"), await make_account(conn, "renter-b")
    tokens = {}
    for i in range(20):
        body = {**register_body(f"fair-{i:02d}"), "capabilities": ["sleep"]}
        _, registered = await conn.request("POST", "/api/providers/quick-register", body)
        tokens[f"fair-{i:02d}"] = registered["workerToken"]
    job = {"type": "sleep", "payload": {"seconds": 0}, "requirements": FREE}
    ids = {"a": [], "b": []}
    for _ in range(batch):
        _, made = await conn.request("POST", "/api/jobs", job, a)
        ids["a"].append(made["job"]["id"])
    for _ in range(10):
        _, made = await conn.request("POST", "/api/jobs", job, b)
        ids["b"].append(made["job"]["id"])
    left = [batch + 10]
    started = time.perf_counter()
    await asyncio.gather(*(work(server.url, name, token, left) for name, token in tokens.items()))
    took = time.perf_counter() - started
    waits = {}
    for renter, job_ids in ids.items():
        waits[renter] = []
        for job_id in job_ids:
            _, shown = await conn.request("GET", f"/api/jobs/{job_id}", token=API_KEY)
            history = shown["job"]["history"]
            leased = next(e["at"] for e in history if e["event"] == "leased")
            waits[renter].append(leased - history[0]["at"])
    conn.close()
    print(f"{batch} jobs of renter A, then 10 of renter B; 20 workers ran them in {took:.1f} s")
    print(f"{'renter':<8}{'jobs':>6}{'wait p50':>12}{'wait p99':>12}")
    for renter, values in waits.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{renter.upper():<8}{len(values):>6}{p50 * 1000:>10.0f}ms{p99 * 1000:>10.0f}ms")


async def work(url: str, name: str, token: str, left: list[int]) -> None:
    conn = Connection(url)
    while left[0] > 0:
        status, leased = await conn.request("GET", f"/api/jobs/pending/{name}?wait=1", token=token)
        if status != 200:
            continue
        left[0] -= 1
        report = {"attempt": leased["attempt"], "status": "completed", "result": {}}
        await conn.request("POST", f"/api/jobs/{leased['job']['id']}/complete", report, token)
    conn.close()


async def checks_cost(server: Server, cycles: int) -> None:
    conn = Connection(server.url)
    renter = await make_account(conn, "renter-c")
    quota = {"maxQueued": 1000, "maxPerMinute": 1_000_000, "maxRunning": 1000}
    await conn.request("POST", "/api/accounts/renter-c/quota", quota, API_KEY)
    await conn.request("POST", "/api/accounts/renter-c/credit", {"amount": 1e9}, API_KEY)
    body = {**register_body("cycler"), "capabilities": ["sleep"]}
    _, registered = await conn.request("POST", "/api/providers/quick-register", body)
    token = registered["workerToken"]
    job = {"type": "sleep", "payload": {"seconds": 0}, "requirements": {"maxPricePerHour": 1}}
    spent = {"single key": [0.0, 0.0], "renter, all checks": [0.0, 0.0]}
    block = 100
    for _ in range(cycles // block // 2):
        for label, key in (("single key", API_KEY), ("renter, all checks", renter)):
            cpu, wall = server.cpu_s(), time.perf_counter()
            for _ in range(block):
                await conn.request("POST", "/api/jobs", job, key)
                _, leased = await conn.request("GET", "/api/jobs/pending/cycler", token=token)
                report = {"attempt": leased["attempt"], "status": "completed", "result": {}}
                path = f"/api/jobs/{leased['job']['id']}/complete"
                await conn.request("POST", path, report, token)
            spent[label][0] += server.cpu_s() - cpu
            spent[label][1] += time.perf_counter() - wall
    conn.close()
    runs = cycles // block // 2 * block
    print(f"submit -> lease -> report, {runs} cycles each, alternating blocks of {block}")
    for label, (cpu, wall) in spent.items():
        per_cpu, per_wall = cpu / runs * 1000, wall / runs * 1000
        print(f"{label:<20} server CPU {per_cpu:.2f} ms/cycle, wall {per_wall:.2f} ms/cycle")
    base, checked = spent["single key"], spent["renter, all checks"]
    cpu_cost, wall_cost = checked[0] / base[0] - 1, checked[1] / base[1] - 1
    print(f"the checks cost {cpu_cost:+.1%} server CPU, {wall_cost:+.1%} wall")


if __name__ == "__main__":
    main()
