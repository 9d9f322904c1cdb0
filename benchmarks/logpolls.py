"""Log long-polls waiting on a running job: what `/healthz` takes and how many database
transactions the server runs while 1,000 of them wait, against the same with none waiting
(the baseline, measured in the same run).

One `qubix serve` on a fresh PostgreSQL database (made beside the one named, dropped
after). A worker leases a job; `--polls` clients (32 per address, the most one client IP
may hold, from addresses given in X-Forwarded-For by a trusted proxy) wait on its log
(`wait=60`); `/healthz` is timed `--probes` times meanwhile (15 s at most). Then one log
part is sent, and what answering every poll cost the server is measured.

    python benchmarks/logpolls.py --database postgresql://user@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from _server import API_KEY, Server, percentile, register_body
from fleet import Postgres

PER_IP = 32
RENTER = {"Authorization": f"Bearer {API_KEY}"}


async def probe(client: httpx.AsyncClient, count: int, most_s: float = 15.0) -> list[float]:
    """Milliseconds each of `count` sequential `/healthz` took (as many as `most_s` allow)."""
    taken: list[float] = []
    deadline = time.monotonic() + most_s
    while len(taken) < count and time.monotonic() < deadline:
        started = time.perf_counter()
        answer = await client.get("/healthz")
        assert answer.status_code == 200, answer.text
        taken.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.05)
    return taken


async def settled(postgres: Postgres, polls: int, most_s: float = 20.0) -> None:
    """Until the polls are all held: once they ran their first reads (a few transactions
    each), a second with few transactions, or `most_s` (a server whose waiting polls read
    the database on a timer never settles)."""
    deadline = time.monotonic() + most_s
    start = before = postgres.transactions()
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = postgres.transactions()
        if now - start > 2 * polls and now - before < 20:
            return
        before = now


async def measure(label: str, postgres: Postgres, client: httpx.AsyncClient, probes: int) -> None:
    """/healthz's latency, and the transactions a second besides its own, printed."""
    before = postgres.transactions()
    started = time.perf_counter()
    taken = await probe(client, probes)
    rate = (postgres.transactions() - before - probes) / (time.perf_counter() - started)
    print(
        f"{label}: /healthz p50 {percentile(taken, 50):.1f} ms, "
        f"p99 {percentile(taken, 99):.1f} ms; other transactions {rate:.0f}/s"
    )


async def quiet(postgres: Postgres, client: httpx.AsyncClient, probes: int) -> None:
    await measure("no polls waiting", postgres, client, probes)


async def loaded(
    server: Server,
    postgres: Postgres,
    client: httpx.AsyncClient,
    job: tuple[str, dict[str, str]],
    polls: int,
    probes: int,
) -> None:
    job_id, worker = job
    url = f"/api/jobs/{job_id}/logs"

    async def wait(n: int) -> httpx.Response:
        headers = {**RENTER, "X-Forwarded-For": f"10.9.{n // PER_IP // 250}.{n // PER_IP % 250}"}
        return await client.get(url, params={"wait": 60}, headers=headers, timeout=90)

    waiting = [asyncio.ensure_future(wait(n)) for n in range(polls)]
    await settled(postgres, polls)
    assert not any(w.done() for w in waiting), [w.result().text for w in waiting if w.done()][:1]
    await measure(f"{polls} log long-polls waiting", postgres, client, probes)
    body = {"attempt": 1, "text": "hello\n"}
    cpu, before = server.cpu_s(), postgres.transactions()
    posted = await client.post(url, json=body, headers=worker)
    assert posted.status_code == 200, posted.text
    answers = await asyncio.gather(*waiting)
    assert all(a.json()["chunks"] for a in answers), [a.text for a in answers][:1]
    print(
        f"one log part answered all {polls} polls: server CPU {server.cpu_s() - cpu:.2f} s, "
        f"{postgres.transactions() - before} transactions (the client's own time is not "
        "the server's: it is left out)"
    )


async def run(server: Server, postgres: Postgres, polls: int, probes: int) -> None:
    limits = httpx.Limits(max_connections=polls + 16, max_keepalive_connections=polls + 16)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        body = register_body("w1")
        token = (await client.post("/api/providers/quick-register", json=body)).json()
        worker = {"Authorization": f"Bearer {token['workerToken']}"}
        submitted = await client.post(
            "/api/jobs",
            json={"type": "sleep", "payload": {"seconds": 600}, "timeoutS": 900},
            headers=RENTER,
        )
        assert submitted.status_code == 201, submitted.text
        leased = await client.get("/api/jobs/pending/w1?wait=5", headers=worker)
        assert leased.status_code == 200, leased.text
        await quiet(postgres, client, probes)
        job = (leased.json()["job"]["id"], worker)
        await loaded(server, postgres, client, job, polls, probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database", required=True, help="a PostgreSQL database to make the run's beside"
    )
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=100)
    args = parser.parse_args()
    postgres = Postgres(args.database, "logpolls")
    options = ("--database", postgres.url, "--trusted-proxy", "127.0.0.1")
    try:
        with Server(30.0, *options) as server:
            asyncio.run(run(server, postgres, args.polls, args.probes))
    finally:
        postgres.drop()


if __name__ == "__main__":
    main()
