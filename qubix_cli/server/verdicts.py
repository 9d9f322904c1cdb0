"""Verdicts on replicated jobs: which runs count, and what a job's runs decide.

A `verify: replicate` job runs on workers of different networks, addresses and IPs until
a majority of the runs that count agree. A disagreement is evidence for a check, never a
verdict: each party is owed a canary (trust.py) before its run counts, a worker that fails
it is punished as any canary failure is (and its run no longer counts), and if all pass
the job gets one more run from a new party. Five runs without a majority end the job
`failed` with `error: "disputed"`: nobody punished, nothing charged. With canaries on, a
run counts only once its worker has passed a canary; with them off (a fleet of one's own),
the runs of workers in good standing count.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any, NamedTuple

from qubix_cli.server.store import Doc
from qubix_cli.server.trust import answer_digest, ip_mark, trust_of

MAX_RUNS = 5  # runs of one job without a majority before it ends disputed
DISPUTED = "disputed"
CHECKS = "checks"  # on a replicated job: {workerId: "owed" | "passed" | "failed" | "lost"}
ANSWERS = "answers"  # on a replicated job: {digest: {result, metrics}}; never shown
PREFIX = "replicaPrefix"  # on a replicated job: [IPv4, IPv6] prefix lengths of a network
OWED, PASSED = "owed", "passed"
DISCOUNTED = ("failed", "lost")  # a check failed, or not answered: the run does not count


class Decision(NamedTuple):
    """`verified` (with the agreed digest and the workers whose runs agreed on it), `more`
    (one more run), `wait` (for the checks owed), or `disputed`; and the workers that now
    owe a check."""

    outcome: str
    digest: str | None = None
    agreed: tuple[str, ...] = ()
    owe: tuple[str, ...] = ()


def network_mark(client_ip: str | None, prefix: list[int] | tuple[int, ...]) -> str:
    """The network of a client IP (its first `prefix[0]` bits for IPv4, `prefix[1]` for
    IPv6), as a replica records it: enough to tell two apart, not to show the address."""
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return ip_mark(client_ip)  # not an address (a test client's name): itself
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    bits = prefix[0] if address.version == 4 else prefix[1]
    network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
    return ip_mark(str(network))


def run_of(provider: Doc, status: str, result: Any, prefix: tuple[int, int]) -> Doc:
    """One run of a replicated job, as the job records it (and its renter sees it)."""
    return {
        "workerId": provider["workerId"],
        "qubicAddress": provider["qubicAddress"],
        "ip": ip_mark(provider.get("clientIp")),
        "net": network_mark(provider.get("clientIp"), prefix),
        "status": status,
        "digest": answer_digest(status, result),
    }


def same_party(provider: Doc, job: Doc) -> bool:
    """Whether the worker, its address, its IP or its network already ran the job."""
    runs = job.get("replicas", [])
    if not runs:
        return False
    mark = ip_mark(provider.get("clientIp"))
    net = network_mark(provider.get("clientIp"), job.get(PREFIX, (32, 128)))
    return any(
        r["workerId"] == provider["workerId"]
        or r["qubicAddress"] == provider["qubicAddress"]
        or r["ip"] == mark
        or r.get("net") == net
        for r in runs
    )


def disagree(job: Doc) -> bool:
    return len({r["digest"] for r in job.get("replicas", [])}) > 1


def awaits_checks(job: Doc) -> bool:
    """A job whose runs disagree waits for the checks owed before it runs again."""
    owed = OWED in job.get(CHECKS, {}).values()
    return bool(owed and (disagree(job) or len(job.get("replicas", [])) >= MAX_RUNS))


def checkable(worker: Doc, canaries: bool) -> bool:
    """Whether a canary can check this worker (it runs `matmul`, and canaries are on);
    the runs of one that cannot count while it is in good standing."""
    return canaries and "matmul" in worker.get("capabilities", [])


def decide(job: Doc, workers: dict[str, Doc | None], canaries: bool) -> Decision:
    """What the job's runs decide, given its runners' records now."""
    runs, checks = job.get("replicas", []), job.get(CHECKS, {})
    disputed = disagree(job)
    counted: list[Doc] = []
    owe: list[str] = []
    pending = False
    for run in runs:
        worker, state = workers.get(run["workerId"]), checks.get(run["workerId"])
        if worker is None or trust_of(worker)["quarantined"] or state in DISCOUNTED:
            continue  # gone, or failed a check
        if state == OWED:
            pending = True
        elif (
            checkable(worker, canaries)
            and state != PASSED
            and (disputed or not trust_of(worker)["lastPassedAt"])
        ):
            owe.append(run["workerId"])
        else:
            counted.append(run)
    tally = Counter(r["digest"] for r in counted)
    if tally:
        digest, count = tally.most_common(1)[0]
        if count >= 2 and 2 * count > len(counted):
            agreed = tuple(r["workerId"] for r in counted if r["digest"] == digest)
            return Decision("verified", digest, agreed)
    if (owe or pending) and (disputed or len(runs) >= MAX_RUNS):
        return Decision("wait", owe=tuple(owe))
    if len(runs) >= MAX_RUNS:
        return Decision(DISPUTED)
    return Decision("more", owe=tuple(owe))
