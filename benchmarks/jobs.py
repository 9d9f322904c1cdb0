"""What the sandbox adds to a job: the same `true` run by the worker's own runner with and
without bubblewrap, in one run, alternating so that both see the same machine.

Each run is the whole path a `command` job takes on the worker: a fresh work dir, the
spawn (wrapped in bwrap for the sandbox), the output pipes, the wait and the clean-up.

    python benchmarks/jobs.py [--runs 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

from qubix_cli.worker import jobs, sandbox


def once(run: jobs.Run, sandboxed: bool) -> float:
    with mock.patch.object(sandbox, "available", lambda: sandboxed):
        started = time.perf_counter()
        status, result, _ = jobs.run_job(run)
        elapsed = time.perf_counter() - started
    assert status == "completed", result
    return elapsed * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    if not sandbox.available():
        raise SystemExit("bubblewrap cannot run here: install it (apt-get install bubblewrap)")
    job = {"id": "job_bench", "type": "command", "payload": {"argv": ["true"]}}
    run = jobs.Run(job, lambda: False, policy=jobs.Policy(allow_unsandboxed=True))
    direct: list[float] = []
    boxed: list[float] = []
    for _ in range(args.runs):
        direct.append(once(run, False))
        boxed.append(once(run, True))
    print(f"{args.runs} runs of `true` as a command job (ms)")
    print(f"{'':<12}{'p50':>8}{'p99':>8}{'mean':>8}")
    for name, values in (("direct", direct), ("sandboxed", boxed)):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{name:<12}{p50:>8.1f}{p99:>8.1f}{statistics.mean(values):>8.1f}")
    overhead = [b - d for b, d in zip(boxed, direct, strict=True)]
    p50, p99 = percentile(overhead, 50), percentile(overhead, 99)
    print(f"{'overhead':<12}{p50:>8.1f}{p99:>8.1f}{statistics.mean(overhead):>8.1f}")
    print(f"target: overhead p50 < 50 ms: {'met' if p50 < 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
