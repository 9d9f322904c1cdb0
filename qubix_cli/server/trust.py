"""Trust in a worker: canaries, quarantine, the hardware claim and reputation.

A canary is a verifiable job (`matmul`, worker/engine.py) that the coordinator makes on
demand for a worker and knows the answer of; to the worker it is a `matmul` job like a
renter's. It takes the place of a renter's job the worker would be handed, at a rate
that falls as the worker's record grows (every job for a new worker, a few percent
later). A wrong answer quarantines the worker: it gets
only canaries until it has passed `RELEASE_STREAK` in a row, and the results it reported
since its last passed canary are flagged. The canary's timing checks the hardware claim.

Nothing here is pooled by address: addresses are not proven, so a fresh worker starts
with no trust whatever its address, and no worker's record can smear another's.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from qubix_cli.server.store import Doc

TRUST = "trust"  # on a provider's record
CANARY = "canary"  # on a canary job: {"expected": digest}; never shown to anyone
CANARY_N = 32  # small enough for the coordinator to compute the answer in ~2 ms
CANARY_FLOOR = 0.03  # the least share of a trusted worker's jobs that are canaries
CANARY_ONBOARDING = 30.0  # about this many of a new worker's first jobs are canaries
RELEASE_STREAK = 5  # canaries passed in a row that end a quarantine
PRIOR = 5  # the record a worker must build before its reputation means much

# The least speed (multiply-adds a second, on the canary's product) at which a GPU engine
# is believed: far below what any card of the class does with the naive kernel, and far
# above plain Python on any CPU (about 2e7), so an honest GPU is never a mismatch and a
# CPU that says it is a GPU always is. The first entry whose name is in the model counts.
CLAIM_FLOORS: tuple[tuple[str, float], ...] = (
    ("H100", 1e9),
    ("A100", 1e9),
    ("A40", 5e8),
    ("RTX", 2e8),
    ("", 2e8),
)


VOLATILE_RESULT = ("computeS", "engine", "note")  # parts of a result that differ by machine


def hardware_gpus(provider: Doc) -> list[Doc]:
    """Its GPUs, less software renderers (SwiftShader, llvmpipe: listed, never counted)."""
    return [g for g in provider.get("gpus", []) if not g.get("software")]


def answer_digest(status: str, result: Any) -> str:
    """What replicas of a deterministic job must agree on: the status and the result,
    less what differs by machine (timings, the engine)."""
    if isinstance(result, dict):
        result = {k: v for k, v in result.items() if k not in VOLATILE_RESULT}
    text = json.dumps([status, result], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def ip_mark(client_ip: str | None) -> str:
    """A worker's client IP as a replica records it: enough to tell two apart, not to
    show the address."""
    return hashlib.sha256((client_ip or "").encode()).hexdigest()[:16]


TRUSTED_STREAK = 10  # checks passed in a row before a worker's replicas may be skipped


def replicate_rate(trust: Doc, floor: float) -> float:
    """How often a `verify: replicate` job that this worker ran is run again elsewhere:
    always, until it has passed `TRUSTED_STREAK` checks in a row; then 10 / its record,
    never below the operator's floor (adaptive replication, as BOINC does)."""
    if trust["quarantined"] or trust["passStreak"] < TRUSTED_STREAK:
        return 1.0
    good = float(trust["canariesPassed"] + trust["completed"])
    return max(floor, min(1.0, 10.0 / max(good, 1.0)))


def new_trust() -> Doc:
    return {
        "claim": "unverified",
        "quarantined": False,
        "reputation": 0.0,
        "canariesPassed": 0,
        "canariesFailed": 0,
        "passStreak": 0,
        "completed": 0,
        "failed": 0,
        "lost": 0,
        "preempted": 0,
        "lastPassedAt": None,
    }


def trust_of(provider: Doc) -> Doc:
    return {**new_trust(), **provider.get(TRUST, {})}


def unquarantined(provider: Doc) -> Doc:
    """The provider's record as if it were not quarantined: which renters' jobs it waits
    out, each of which brings it a canary instead."""
    return {**provider, TRUST: {**trust_of(provider), "quarantined": False}}


def canary_rate(trust: Doc) -> float:
    """(30 / (record + 1))^2, between the floor and 1; 1 while quarantined. A new worker's
    first jobs are nearly all canaries (a few milliseconds each), a worker with 100 jobs
    behind it gets one in eleven, one with 160 is at the 3 % floor. Over its first 300
    jobs a worker meets about 57 canaries, so one that forges one answer in ten is caught
    with probability 99.7 % by then."""
    if trust["quarantined"]:
        return 1.0
    record = float(trust["canariesPassed"] + trust["completed"] + trust["failed"] + trust["lost"])
    return max(CANARY_FLOOR, min(1.0, (CANARY_ONBOARDING / (record + 1.0)) ** 2))


def canary_due(provider: Doc, rng: random.Random) -> bool:
    """Whether this worker's next job is a canary (only workers that run `matmul`)."""
    if "matmul" not in provider.get("capabilities", []):
        return False
    return rng.random() < canary_rate(trust_of(provider))


CANARIES_PER_HOUR = 30  # the most canaries one worker is given in an hour: checks cannot be farmed
BOOK = "canaryBook"  # on a provider's record, never shown: {owed, hourStart, hourCount}
CANARIED = "canaried"  # on a renter's job, never shown: the workers it brought a canary


def book_of(provider: Doc, now: float) -> Doc:
    """The provider's checks owed ({jobId: canary id, or None before it is made}) and the
    canaries it was given in the hour that began at `hourStart`."""
    book = {"owed": {}, "hourStart": now, "hourCount": 0, **provider.get(BOOK, {})}
    if book["hourStart"] + 3600 <= now:
        book.update(hourStart=now, hourCount=0)
    return book


def within_ceiling(provider: Doc, now: float) -> bool:
    return bool(book_of(provider, now)["hourCount"] < CANARIES_PER_HOUR)


def owed_check(provider: Doc) -> str | None:
    """A replicated job whose runners' disagreement owes this worker a canary not yet made."""
    owed = provider.get(BOOK, {}).get("owed", {})
    return next((job_id for job_id, canary in owed.items() if canary is None), None)


def brought_canary(job: Doc, worker_id: str) -> bool:
    """Whether this renter's job already brought this worker its canary (one per job)."""
    return worker_id in job.get(CANARIED, [])


def reputation(trust: Doc) -> float:
    """good / (good + 4 x failed canaries + failed jobs + 2 x lost jobs + PRIOR), 0 while
    quarantined: between 0 and 1, 0 for a new worker, rising with a clean record."""
    if trust["quarantined"]:
        return 0.0
    good = trust["canariesPassed"] + trust["completed"]
    bad = 4 * trust["canariesFailed"] + trust["failed"] + 2 * trust["lost"]
    return round(float(good) / float(good + bad + PRIOR), 4)


def claim(provider: Doc, result: Any, elapsed_s: float) -> str:
    """What a passed canary says of the hardware claim: `unverified` without a GPU
    engine, `verified` when the engine ran at a speed that fits the claimed GPU, else
    `mismatch` (too slow for it, or a time shorter than possible)."""
    engine = result.get("engine") if isinstance(result, dict) else None
    if engine in (None, "none"):
        # No engine ran it: no penalty, unless the worker said it has one (it found its
        # GPU's driver library when it started) and then did not use it.
        return "mismatch" if provider.get("gpuEngine", "none") != "none" else "unverified"
    if engine == "webgpu":
        return "unverified"  # a browser's timing includes its own overheads: it proves nothing
    seconds, n = result.get("computeS"), result.get("n")
    if not isinstance(seconds, (int, float)) or not isinstance(n, int) or seconds > elapsed_s:
        return "mismatch"
    models = [g["model"] for g in hardware_gpus(provider)]
    if not models:
        return "mismatch"  # a GPU engine on a machine that claims no GPU
    floor = next(f for name, f in CLAIM_FLOORS if name in models[0])
    return "verified" if n**3 / max(seconds, 1e-9) >= floor else "mismatch"


def after_canary(trust: Doc, passed: bool, claim_now: str | None, now: float) -> Doc:
    trust = {**trust}
    if passed:
        trust.update(
            canariesPassed=trust["canariesPassed"] + 1,
            passStreak=trust["passStreak"] + 1,
            lastPassedAt=now,
            claim=claim_now or trust["claim"],
        )
        if trust["quarantined"] and trust["passStreak"] >= RELEASE_STREAK:
            trust["quarantined"] = False
    else:
        trust.update(canariesFailed=trust["canariesFailed"] + 1, passStreak=0, quarantined=True)
    trust["reputation"] = reputation(trust)
    return trust


def after_job(trust: Doc, outcome: str) -> Doc:
    """A renter's job ended: `completed`, `failed` or `lost`."""
    trust = {**trust, outcome: trust[outcome] + 1}
    trust["reputation"] = reputation(trust)
    return trust


def after_preemption(trust: Doc, share: float) -> Doc:
    """A renter's job handed back because of the worker's own preferences (the user came
    back, the battery took over): counted, not a failure, while its hand-backs stay within
    `share` of the jobs it was given (the first is always free); past it each one counts
    as failed too, so handing back cannot be used to dodge work."""
    trust = {**trust, "preempted": trust["preempted"] + 1}
    given = trust["completed"] + trust["failed"] + trust["lost"] + trust["preempted"]
    if trust["preempted"] > max(1.0, share * given):
        trust["failed"] += 1
    trust["reputation"] = reputation(trust)
    return trust


def after_lost_canary(trust: Doc) -> Doc:
    """A canary handed back (the lease expired) counts as not passed, but does not
    quarantine: honest machines crash and lose power too."""
    trust = {**trust, "passStreak": 0}
    trust["reputation"] = reputation(trust)
    return trust
