"""What an operator watches, in Prometheus' text format (`GET /metrics`), made with
`prometheus_client`. Counters and histograms are updated where things happen; the
gauges (providers by status, jobs by state, open long-polls and streams) are read from
the coordinator when the page is asked for."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qubix_cli.errors import QuotaExceeded, RateLimited
from qubix_cli.server.schemas import JOB_STATUSES, PROVIDER_STATUSES
from qubix_cli.server.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """One coordinator's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.providers = Gauge("qubix_providers", "Providers by status", ["status"], registry=r)
        self.jobs = Gauge("qubix_jobs", "Jobs by state", ["status"], registry=r)
        self.queue_wait = Histogram(
            "qubix_job_queue_wait_seconds",
            "From a renter's submission to the job's first lease",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.dispatch = Histogram(
            "qubix_dispatch_seconds",
            "How long a claim (choosing a job for a worker and leasing it) takes",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter("qubix_heartbeats", "Heartbeats accepted", registry=r)
        self.leases_expired = Counter(
            "qubix_leases_expired", "Leases ended by the server", ["reason"], registry=r
        )
        self.commit = Histogram(
            "qubix_storage_commit_seconds",
            "From a transaction's commit to its being durable",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "qubix_refusals",
            "Requests refused with 429 (rate limits, quotas)",
            ["code"],
            registry=r,
        )
        for code in (RateLimited.code, QuotaExceeded.code):
            self.refusals.labels(code)  # shown as 0 before the first
        self.long_polls = Gauge(
            "qubix_open_long_polls", "Long-polls waiting now", ["kind"], registry=r
        )
        self.streams = Gauge("qubix_open_event_streams", "Open WS /api/events", registry=r)

    async def page(self, store: Store, job_polls: int, check_new_polls: int, streams: int) -> bytes:
        """The metrics page, with the gauges read now."""
        liveness = await store.recall_all("liveness")
        statuses = Tally(live.get("status", "offline") for live in liveness.values())
        known = await store.count("providers")
        statuses["offline"] += max(0, known - sum(statuses.values()))
        for status in PROVIDER_STATUSES:
            self.providers.labels(status).set(statuses.get(status, 0))
        for status in JOB_STATUSES:
            self.jobs.labels(status).set(await store.count("jobs", {"status": status}))
        self.long_polls.labels("job").set(job_polls)
        self.long_polls.labels("check_new").set(check_new_polls)
        self.streams.set(streams)
        return generate_latest(self.registry)
