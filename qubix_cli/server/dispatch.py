"""Dispatch: which queued job a worker is handed, in one place (DESIGN.md "Dispatch").

A worker asks for work; of the queued jobs, those it may take (`ELIGIBLE`: every step must
agree) are ordered (`candidates`: accounts in turn, then age) and the first whose account
is not at its running quota is leased to it. Each later rule is one more step in
`ELIGIBLE` or one more part of `candidates`; a backend that claims in one statement
(PostgreSQL) expresses the same steps as its WHERE and ORDER BY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from qubix_cli.server import verdicts
from qubix_cli.server.providers import best_vram_mb
from qubix_cli.server.schemas import JOB_TYPES
from qubix_cli.server.store import Doc
from qubix_cli.server.trust import hardware_gpus, trust_of

Step = Callable[[Doc, Doc], bool]
FREE_GPUS = "freeGpus"  # not stored: what `with_room` adds for one claim


def runs_the_type(provider: Doc, job: Doc) -> bool:
    """The worker runs this job type and has every capability the job asks for (a browser
    runs only what it lists)."""
    capabilities = set(provider.get("capabilities", []))
    if provider.get("type") != "browser":
        capabilities |= {name for name, kind in JOB_TYPES.items() if kind.always}
    needed = {job["type"], *job["requirements"].get("capabilities", [])}
    return needed <= capabilities


def within_webgpu_limits(provider: Doc, job: Doc) -> bool:
    """A `wgsl` job fits the browser's WebGPU adapter: its workgroups, buffer sizes and
    number of storage buffers."""
    if job["type"] != "wgsl":
        return True
    limits, payload = provider.get("webgpu"), job["payload"]
    if not limits:
        return False
    buffers = payload["buffers"]
    return bool(
        max(payload["workgroups"]) <= limits["maxComputeWorkgroupsPerDimension"]
        and max(b["sizeBytes"] for b in buffers) <= limits["maxStorageBufferBindingSize"]
        and len(buffers) <= limits["maxStorageBuffersPerShaderStage"]
    )


def hardware_if_asked(provider: Doc, job: Doc) -> bool:
    """`requirements.hardwareGpu` (by default, whether the job type is a GPU type): the
    worker has a GPU that is not a software renderer."""
    asked = job["requirements"].get("hardwareGpu")
    if asked is None:
        asked = JOB_TYPES[job["type"]].gpu
    return not asked or bool(hardware_gpus(provider))


def enough_vram(provider: Doc, job: Doc) -> bool:
    """VRAM is compared with the best single GPU."""
    needed = job["requirements"].get("minVramMb")
    return needed is None or best_vram_mb(provider) >= needed


def right_vendor(provider: Doc, job: Doc) -> bool:
    vendor = job["requirements"].get("gpuVendor")
    return not vendor or any(g["vendor"] == vendor for g in hardware_gpus(provider))


def enough_gpus(provider: Doc, job: Doc) -> bool:
    return bool(job["requirements"].get("gpus", 0) <= len(hardware_gpus(provider)))


def sandboxed(provider: Doc, job: Doc) -> bool:
    return not job["requirements"].get("sandbox") or provider.get("sandbox") == "bubblewrap"


def gives_network(provider: Doc, job: Doc) -> bool:
    return not job["requirements"].get("network") or bool(provider.get("networkJobs"))


def gpus_free(provider: Doc, job: Doc) -> bool:
    """The GPUs it asks for are free now: `FREE_GPUS` is set on the record that a claim
    sees, from the leases the worker holds (a record without it has all its GPUs free)."""
    free = provider.get(FREE_GPUS, len(hardware_gpus(provider)))
    return bool(job["requirements"].get("gpus", 0) <= free)


def not_quarantined(provider: Doc, job: Doc) -> bool:
    """A quarantined worker gets canaries only (trust.py)."""
    return not trust_of(provider)["quarantined"]


def verified_if_asked(provider: Doc, job: Doc) -> bool:
    return not job["requirements"].get("verified") or trust_of(provider)["claim"] == "verified"


def reputation_if_asked(provider: Doc, job: Doc) -> bool:
    least = job["requirements"].get("minReputation")
    return least is None or bool(trust_of(provider)["reputation"] >= least)


def not_a_checker_of_itself(provider: Doc, job: Doc) -> bool:
    """A replica never goes to a worker that already ran one of the job, nor to one of the
    same address, client IP or network (`--replica-prefix`) as such a worker: they would
    check each other."""
    return not verdicts.same_party(provider, job)


def not_awaiting_checks(provider: Doc, job: Doc) -> bool:
    """A job whose runs disagree runs again only once its runners answered their checks."""
    return not verdicts.awaits_checks(job)


def within_price(provider: Doc, job: Doc) -> bool:
    most = job["requirements"].get("maxPricePerHour")
    return most is None or bool((provider.get("pricePerHour") or 0.0) <= most)


PREEMPTIONS_BEFORE_STEADY = 2  # hand-backs after which a job waits for a steady worker


def steady_if_handed_back(provider: Doc, job: Doc) -> bool:
    """A job handed back twice goes only to workers that do not work only while their
    computer is idle: the likeliest to hand it back a third time."""
    return job.get("preemptions", 0) < PREEMPTIONS_BEFORE_STEADY or not provider.get("idleOnly")


def not_pinned_elsewhere(provider: Doc, job: Doc) -> bool:
    return not job.get("providerId") or job["providerId"] == provider["workerId"]


class Rule(NamedTuple):
    """One step of eligibility, and what it says when it leaves a worker out ("N queued
    jobs ...", for `qubix providers why`) and what the workers that pass it do ("N online
    workers ...", for `qubix jobs why`; `{type}` is the job's type)."""

    check: Step
    why: str
    fits: str


ELIGIBLE: tuple[Rule, ...] = (
    Rule(runs_the_type, "are of a type this worker does not run", "accept `{type}` jobs"),
    Rule(
        within_webgpu_limits,
        "are shaders larger than its browser's WebGPU limits allow",
        "have WebGPU limits it fits",
    ),
    Rule(
        hardware_if_asked,
        "need a hardware GPU, and it has only a software renderer",
        "have a hardware GPU",
    ),
    Rule(enough_vram, "need more VRAM than its best GPU has", "have a GPU with enough VRAM"),
    Rule(right_vendor, "need a GPU of a vendor it does not have", "have a GPU of its vendor"),
    Rule(enough_gpus, "need more GPUs than it has", "have as many GPUs as it needs"),
    Rule(
        sandboxed,
        "need a sandbox for renters' code, which it does not have",
        "run renters' code in a sandbox",
    ),
    Rule(
        gives_network,
        "need the network, which it does not give (--allow-network-jobs)",
        "give jobs the network",
    ),
    Rule(gpus_free, "need more GPUs than are free on it now", "have that many GPUs free now"),
    Rule(not_quarantined, "wait while it is quarantined", "are not quarantined"),
    Rule(
        verified_if_asked,
        "need a verified GPU claim, and its claim is not verified",
        "have a verified GPU claim",
    ),
    Rule(
        reputation_if_asked,
        "need a higher reputation than it has",
        "have the reputation it asks for",
    ),
    Rule(
        not_a_checker_of_itself,
        "are replicas that it, its address, its IP or its network ran already",
        "did not run it already (nor their address, IP or network)",
    ),
    Rule(
        not_awaiting_checks,
        "are replicas that disagree, waiting for their runners' checks",
        "are not waited for by checks of disagreeing replicas",
    ),
    Rule(
        within_price,
        "allow a lower price per hour than it asks",
        "ask at most its maxPricePerHour",
    ),
    Rule(
        steady_if_handed_back,
        "were handed back twice and wait for a worker that is not idle-only",
        "do not work only while their computer is idle",
    ),
    Rule(not_pinned_elsewhere, "are pinned to other workers", "are the worker it is pinned to"),
)


def eligible(provider: Doc, job: Doc) -> bool:
    return all(rule.check(provider, job) for rule in ELIGIBLE)


def first_refusal(provider: Doc, job: Doc) -> Rule | None:
    """The first rule that leaves this worker out of this job, or None if it may take it."""
    return next((rule for rule in ELIGIBLE if not rule.check(provider, job)), None)


def order(job: Doc) -> tuple[Any, ...]:
    """Oldest first (the id breaks ties between jobs made in the same instant)."""
    return (job["createdAt"], job["id"])


def candidates(provider: Doc, queued: Iterable[Doc], turns: Mapping[str, int]) -> Iterator[Doc]:
    """The jobs this provider may be handed, best first: accounts take turns (the one
    served longest ago first: `turns` holds when each was last served), and each account
    offers its oldest job that this provider may take. One account's batch of 10,000
    jobs so waits one round behind another account's single job, not 10,000."""
    by_account: dict[str, list[Doc]] = {}
    for job in queued:
        by_account.setdefault(job.get("account") or "", []).append(job)
    firsts = []
    for account, jobs in by_account.items():
        first = next((j for j in sorted(jobs, key=order) if eligible(provider, j)), None)
        if first is not None:
            firsts.append((turns.get(account, -1), order(first), first))
    firsts.sort(key=lambda first: first[:2])
    return (job for *_, job in firsts)


def with_room(provider: Doc, held: list[Doc]) -> Doc | None:
    """The provider's record as a claim sees it, with its free GPUs counted from the
    leases it holds; None when it holds as many leases as it runs jobs at once."""
    if len(held) >= provider.get("concurrency", 1):
        return None
    used = sum(job["requirements"].get("gpus", 0) for job in held)
    return {**provider, FREE_GPUS: len(hardware_gpus(provider)) - used}


LEASED = ("id", "type", "payload", "inputs", "timeoutS", "attempt", "pricePerHour")
HONOURED = ("gpus", "network", "sandbox")  # the requirements a worker must honour itself


def lease_view(job: Doc, expires_at: float) -> Doc:
    """A lease shows the worker only what it needs to run the job (DESIGN.md "Dispatch"
    step 6): never another run's result or digest, the history, the renter's account, its
    hold, whether it is pinned, when it was made, or who else ran it. A canary's lease and
    a renter's job's of the same type have the same fields and value shapes."""
    view = {key: job[key] for key in LEASED if key in job}
    view["requirements"] = {key: job["requirements"].get(key) for key in HONOURED}
    view["leaseExpiresAt"] = expires_at
    return view
