"""Dispatch: which queued job a worker is handed, in one place (DESIGN.md "Dispatch").

A worker asks for work; of the queued jobs, those it may take (`ELIGIBLE`: every step must
agree) are ordered (`order`) and the first is leased to it. Each later rule is one more
step in `ELIGIBLE` or one more part of `order`; a backend that claims in one statement
(PostgreSQL) expresses the same steps as its WHERE and ORDER BY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from qubix_cli.server.providers import best_vram_mb
from qubix_cli.server.schemas import JOB_TYPES
from qubix_cli.server.store import Doc
from qubix_cli.server.trust import trust_of

Step = Callable[[Doc, Doc], bool]
FREE_GPUS = "freeGpus"  # not stored: what `with_room` adds for one claim


def runs_the_type(provider: Doc, job: Doc) -> bool:
    """The worker runs this job type and has every capability the job asks for."""
    capabilities = set(provider.get("capabilities", []))
    capabilities |= {name for name, kind in JOB_TYPES.items() if kind.always}
    needed = {job["type"], *job["requirements"].get("capabilities", [])}
    return needed <= capabilities


def meets_requirements(provider: Doc, job: Doc) -> bool:
    """VRAM is compared with the best single GPU; the vendor must be that of one of its
    GPUs; it has as many GPUs as the job asks for; it runs renters' code in a sandbox
    and gives the network to jobs, if the job needs either."""
    needs = job["requirements"]
    gpus = provider.get("gpus", [])
    vendor, min_vram = needs.get("gpuVendor"), needs.get("minVramMb")
    if vendor and not any(g["vendor"] == vendor for g in gpus):
        return False
    if needs.get("gpus", 0) > len(gpus):
        return False
    if needs.get("sandbox") and provider.get("sandbox") != "bubblewrap":
        return False
    if needs.get("network") and not provider.get("networkJobs"):
        return False
    return min_vram is None or best_vram_mb(provider) >= min_vram


def gpus_free(provider: Doc, job: Doc) -> bool:
    """The GPUs it asks for are free now: `FREE_GPUS` is set on the record that a claim
    sees, from the leases the worker holds (a record without it has all its GPUs free)."""
    free = provider.get(FREE_GPUS, len(provider.get("gpus", [])))
    return bool(job["requirements"].get("gpus", 0) <= free)


def not_pinned_elsewhere(provider: Doc, job: Doc) -> bool:
    return not job.get("providerId") or job["providerId"] == provider["workerId"]


def trusted_enough(provider: Doc, job: Doc) -> bool:
    """Not quarantined (it gets canaries only), and as trusted as the job asks."""
    trust = trust_of(provider)
    needs = job["requirements"]
    if trust["quarantined"] or (needs.get("verified") and trust["claim"] != "verified"):
        return False
    return needs.get("minReputation") is None or trust["reputation"] >= needs["minReputation"]


ELIGIBLE: tuple[Step, ...] = (
    runs_the_type,
    meets_requirements,
    gpus_free,
    trusted_enough,
    not_pinned_elsewhere,
)


def eligible(provider: Doc, job: Doc) -> bool:
    return all(step(provider, job) for step in ELIGIBLE)


def order(job: Doc) -> tuple[Any, ...]:
    """Oldest first (the id breaks ties between jobs made in the same instant)."""
    return (job["createdAt"], job["id"])


def choose(provider: Doc, queued: Iterable[Doc]) -> Doc | None:
    """The job this provider is handed next, of those queued, or None."""
    return next((job for job in sorted(queued, key=order) if eligible(provider, job)), None)


def with_room(provider: Doc, held: list[Doc]) -> Doc | None:
    """The provider's record as a claim sees it, with its free GPUs counted from the
    leases it holds; None when it holds as many leases as it runs jobs at once."""
    if len(held) >= provider.get("concurrency", 1):
        return None
    used = sum(job["requirements"].get("gpus", 0) for job in held)
    return {**provider, FREE_GPUS: len(provider.get("gpus", [])) - used}
