"""'Why does my worker get no jobs?' and 'why is my job still queued?', answered in plain
words with numbers, from the very rules that dispatch applies (`dispatch.ELIGIBLE`)."""

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
    if shown["status"] == "paused":
        reasons.append(paused_sentence(shown))
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
    if eligible and room is not None and shown["status"] not in ("offline", "paused"):
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


def paused_sentence(shown: Doc) -> str:
    """'It is paused by the provider until ...' (or until it is resumed)."""
    until = shown.get("pausedUntil")
    when = (
        f"until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}"
        if until
        else "until it is resumed"
    )
    why = shown.get("pausedReason") or "by the provider"
    return f"It is paused {why} {when}: it takes no jobs meanwhile."


async def why_queued(registry: Registry, jobs: JobQueue, job: Doc) -> Doc:
    """Why a queued job waits: of the online workers, how many pass each rule in turn, and
    how many of those that fit are busy. {online, fit, busy, steps: [{rule, workers}],
    reasons: [sentences]}."""
    liveness = await jobs.store.recall_all("liveness")
    docs = await jobs.store.scan("providers")
    statuses = {
        doc["workerId"]: (liveness.get(doc["workerId"]) or {}).get("status", "offline")
        for doc in docs
    }
    online = [doc for doc in docs if statuses[doc["workerId"]] not in ("offline", "paused")]
    paused = sum(1 for status in statuses.values() if status == "paused")
    held: dict[str, list[Doc]] = {}
    for leased in await jobs.store.scan("jobs", where={"status": "assigned"}):
        held.setdefault(leased["workerId"], []).append(leased)
    reasons = [f"{len(online)} worker(s) are online."]
    if paused:
        reasons[0] += f" {paused} more are paused by their providers."
    if not online and paused:
        reasons.append("No worker takes work now: it runs when one resumes or comes online.")
    elif not online:
        reasons.append("No worker is online: it runs when one comes online.")
    left = [{**doc, dispatch.FREE_GPUS: len(trust.hardware_gpus(doc))} for doc in online]
    steps = []
    for rule in dispatch.ELIGIBLE:
        if rule.check is dispatch.gpus_free:
            continue  # counted below, as busy
        passing = [doc for doc in left if rule.check(doc, job)]
        fits = rule.fits.format(type=job["type"])
        if len(passing) < len(left):
            steps.append({"rule": fits, "workers": len(passing)})
            reasons.append(f"{len(passing)} of those {fits}.")
            if not passing:
                reasons.append(f"None of the online workers {fits}: it waits until one does.")
        left = passing
        if not left:
            break
    busy = sum(
        1
        for doc in left
        if (room := dispatch.with_room(doc, held.get(doc["workerId"], []))) is None
        or not dispatch.gpus_free(room, job)
    )
    if left:
        reasons.append(f"{len(left)} online worker(s) fit it; {busy} of them are busy.")
        if busy == len(left):
            reasons.append("It runs when one of them finishes a job.")
        else:
            reasons.append("It goes to the next of them that asks for work.")
    if left and await jobs.running_in_full(job.get("account")):
        reasons.append(
            f"Its account {job['account']!r} runs as many jobs as its maxRunning quota "
            "allows: it starts when one of them ends."
        )
    return {
        "online": len(online),
        "fit": len(left),
        "busy": busy,
        "steps": steps,
        "reasons": reasons,
    }
