"""'Why does my worker get no jobs?', answered in plain words with numbers, from the very
rules that dispatch applies (`dispatch.ELIGIBLE`)."""

from __future__ import annotations

import time
from collections import Counter

from qubix_cli.server import dispatch, trust
from qubix_cli.server.jobs import JobQueue, held_by
from qubix_cli.server.providers import Registry
from qubix_cli.server.store import Doc


async def diagnose(registry: Registry, jobs: JobQueue, provider: Doc) -> Doc:
    """{workerId, status, reasons: [sentences], queued, eligible, excluded: {why: n}}."""
    worker_id = provider["workerId"]
    shown = await registry.public(provider)
    reasons: list[str] = []
    if shown["status"] == "offline":
        seen = shown["lastSeenAt"]
        since = (
            f"since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(seen))}"
            if seen
            else "since the server started"
        )
        reasons.append(
            f"It is offline {since}: no heartbeat for "
            f"{registry.settings.offline_after_s:g} s. Start the worker, and check that it "
            "reaches this server."
        )
    record = trust.trust_of(provider)
    if record["quarantined"]:
        reasons.append(
            f"It is quarantined: it answered a check wrongly ({record['canariesFailed']} "
            f"failed in all). It gets only checks until it passes {trust.RELEASE_STREAK} in a "
            f"row ({record['passStreak']} so far); a worker that computes correctly passes them."
        )
    held = await held_by(jobs.store, provider)
    room = dispatch.with_room(provider, held)
    if room is None:
        reasons.append(
            f"It holds {len(held)} lease(s), as many as it runs at once "
            f"({provider.get('concurrency', 1)}): it gets more as they end."
        )
    queued = await jobs.store.scan("jobs", where={"status": "queued"})
    excluded: Counter[str] = Counter()
    eligible = 0
    for job in queued:
        refusal = dispatch.first_refusal(room or provider, job)
        if refusal is None:
            eligible += 1
        else:
            excluded[refusal.why] += 1
    if not queued:
        reasons.append("Nothing is queued: there is no work for any worker right now.")
    for why, count in excluded.most_common():
        reasons.append(f"{count} of the {len(queued)} queued jobs {why}.")
    if eligible and room is not None and shown["status"] != "offline":
        reasons.append(f"{eligible} queued job(s) fit it: it is handed one at its next poll.")
    return {
        "workerId": worker_id,
        "status": shown["status"],
        "reasons": reasons,
        "queued": len(queued),
        "eligible": eligible,
        "excluded": dict(excluded),
        "trust": record,
    }
