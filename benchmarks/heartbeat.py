"""Heartbeat throughput and latency with 10,000 registered providers, against /healthz.

Starts a real `qubix serve`, registers N providers (timing each batch of 1,000, which shows
whether a write's cost grows with the database), then drives heartbeats from all of them
with wrk and a Lua script, and in the same run drives GET /healthz the same way.

The two alternate in rounds (heartbeats first in odd rounds, /healthz first in even ones),
so that each pair sees the same machine; the ratio printed is the median of the rounds'
ratios, which a passing slowdown of the machine moves less than one run would.

    python benchmarks/heartbeat.py [--providers 10000] [--seconds 5] [--rounds 9]

Needs wrk (Debian: apt-get install wrk). Loopback only; bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path

from _server import Server, register_many

HERE = Path(__file__).parent


def wrk(
    url: str, script: str, seconds: int, connections: int, env: dict[str, str]
) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    figures = {k: float(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    figures["wrk_cpu"] = cpu / (figures["duration_us"] / 1e6) * 100
    return figures


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with Server() as server:
        tokens, batches = asyncio.run(register_many(server.url, args.providers))
        print(
            f"registered {len(tokens)} providers; seconds per 1,000: "
            f"first {batches[0]:.2f}, last {batches[-1]:.2f}"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
            f.writelines(f"{w} {t}\n" for w, t in tokens.items())
        journal = sum(p.stat().st_size for p in (server.data_dir / "data").glob("journal-*"))
        targets: dict[str, tuple[str, str, dict[str, str]]] = {
            "heartbeat": (server.url, "heartbeat.lua", {"TOKENS": f.name}),
            "healthz": (server.url + "/healthz", "report.lua", {}),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        cpu_s = 0.0
        for i in range(args.rounds):
            for name in ("heartbeat", "healthz") if i % 2 == 0 else ("healthz", "heartbeat"):
                url, script, env = targets[name]
                cpu0 = server.cpu_s()
                results[name].append(wrk(url, script, args.seconds, args.connections, env))
                if name == "heartbeat":
                    cpu_s += server.cpu_s() - cpu0
        beats, healths = results["heartbeat"], results["healthz"]
        journal_after = sum(p.stat().st_size for p in (server.data_dir / "data").glob("journal-*"))
        beat, health = median_run(beats), median_run(healths)
        print(f"{args.rounds} rounds of {args.seconds} s each; the median round of each:")
        print(
            f"{'endpoint':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'wrk CPU':>9}"
        )
        for name, r in (("heartbeat", beat), ("healthz", health)):
            errors = int(r["errors"] + r["non2xx"])
            print(
                f"{name:<12}{r['rps']:>10.0f}{r['p50_us'] / 1000:>10.2f}"
                f"{r['p99_us'] / 1000:>10.2f}{errors:>8}{r['wrk_cpu']:>8.0f}%"
            )
        ratios = [b["rps"] / h["rps"] for b, h in zip(beats, healths, strict=True)]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"heartbeat/healthz ratio: {statistics.median(ratios):.2f} (rounds: {listed})")
        total_errors = sum(int(r["errors"] + r["non2xx"]) for r in beats + healths)
        print(f"errors in all rounds: {total_errors}")
        print(
            f"server CPU during heartbeats: {cpu_s / (args.seconds * args.rounds) * 100:.0f} %, "
            f"RSS {server.rss_mb():.0f} MB"
        )
        print(
            f"journal bytes written by {int(sum(b['requests'] for b in beats))} heartbeats: "
            f"{journal_after - journal}"
        )
        os.unlink(f.name)


if __name__ == "__main__":
    main()
