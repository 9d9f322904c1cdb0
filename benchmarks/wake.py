"""Wake-up across replicas: how long after a submission on replica A a worker
long-polling on replica B has the job, against the same on one replica (the baseline,
measured in the same run).

Two `qubix serve` replicas on one fresh PostgreSQL database (made beside the one named,
dropped after). One provider long-polls (`wait=20`); a job is submitted, the poll's answer
is timed from the submission, the job is reported, and again, `--rounds` times for each
case: poll on A and submit on A, then poll on B and submit on A.

    python benchmarks/wake.py --database postgresql://user@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _server import API_KEY, Server, percentile, register_body
from fleet import Postgres


def poll(
    client: httpx.Client, url: str, headers: dict[str, str], into: list[httpx.Response]
) -> None:
    into.append(client.get(url, headers=headers))


def rounds(poll_on: Server, submit_on: Server, token: str, count: int) -> list[float]:
    """Milliseconds from each submission to the waiting worker's answer."""
    worker = {"Authorization": f"Bearer {token}"}
    renter = {"Authorization": f"Bearer {API_KEY}"}
    taken: list[float] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            answer: list[httpx.Response] = []
            url = f"{poll_on.url}/api/jobs/pending/w1?wait=20"
            waiting = threading.Thread(target=poll, args=(client, url, worker, answer))
            waiting.start()
            time.sleep(0.3)  # the worker waits
            body = {"type": "sleep", "payload": {"seconds": 0}}
            started = time.perf_counter()
            submitted = client.post(f"{submit_on.url}/api/jobs", json=body, headers=renter)
            assert submitted.status_code == 201, submitted.text
            waiting.join()
            ended = time.perf_counter()
            assert answer[0].status_code == 200, answer[0].text
            taken.append((ended - started) * 1000)
            leased = answer[0].json()
            report = {"attempt": leased["attempt"], "status": "completed", "result": {}}
            job_id = leased["job"]["id"]
            done = client.post(
                f"{poll_on.url}/api/jobs/{job_id}/complete", json=report, headers=worker
            )
            assert done.status_code == 200, done.text
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database", required=True, help="a PostgreSQL database to make the run's beside"
    )
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    postgres = Postgres(args.database, "wake")
    data_dir = Path(tempfile.mkdtemp(prefix="qubix-bench-"))
    options = ("--database", postgres.url)
    try:
        with (
            Server(30.0, *options, data_dir=data_dir) as a,
            Server(30.0, *options, data_dir=data_dir) as b,
        ):
            registered = httpx.post(
                f"{a.url}/api/providers/quick-register", json=register_body("w1")
            )
            token = registered.json()["workerToken"]
            for name, poll_on in (("same replica (A -> A)", a), ("across replicas (A -> B)", b)):
                taken = rounds(poll_on, a, token, args.rounds)
                print(
                    f"{name}: {len(taken)} wake-ups, p50 {percentile(taken, 50):.1f} ms, "
                    f"p99 {percentile(taken, 99):.1f} ms, max {max(taken):.1f} ms"
                )
    finally:
        postgres.drop()


if __name__ == "__main__":
    main()
