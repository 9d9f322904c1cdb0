"""Whose failure a failed run is, which decides what it costs (docs/billing.md).

A job that ran and failed by its own doing (a non-zero exit, its own timeout, its memory
or output limits) is the job's: charged for the time it ran, like a completed one, since
the provider did the work. What the worker or the coordinator caused (a lost lease, a
hand-back, a sandbox or download failure on the worker) is the worker's: free, and the
job is queued again as its next attempt until `maxAttempts`. Neither counts against the
worker's reputation (trust.py): a renter's job failing says nothing of who ran it.
"""

from __future__ import annotations

from typing import Any

JOB, WORKER = "job", "worker"
FAILED_BY = "failedBy"  # on a worker's failed result, and on a failed job


def failed_by(result: Any) -> str:
    """Whose failure a worker's `failed` report is: what it says (`result.failedBy`), or,
    from a worker too old to say, the job's when its program ran (the result has its exit
    code) and the worker's when it did not."""
    said = result.get(FAILED_BY) if isinstance(result, dict) else None
    if said in (JOB, WORKER):
        return str(said)
    return JOB if isinstance(result, dict) and "exitCode" in result else WORKER


def error_of(result: Any) -> str:
    """What a worker said went wrong, short enough for a job's history."""
    error = result.get("error") if isinstance(result, dict) else None
    return str(error or "the worker could not run the job")[:200]


def on_worker(status: str, result: Any) -> bool:
    """Whether a report is of the worker's failure: free, and the job runs again."""
    return status == "failed" and failed_by(result) == WORKER


def of_job(status: str) -> dict[str, str]:
    """The field a job that ends `status` after it ran carries: `failedBy: job` if failed."""
    return {FAILED_BY: JOB} if status == "failed" else {}
