"""The exception tree. Domain code raises these; nothing here knows HTTP.

The CLI catches `QubixError` once and prints its message. The server maps each class to a
status in one table (`server/http.py`, `STATUS`). `code` is the machine-readable name of
the error (`{"error": code}` in answers); each class has a default and a raise may be more
specific, as in `Conflict("job job_1 is already completed", code="job_finished")`.
"""

from __future__ import annotations

from typing import Any


class QubixError(Exception):
    """Base of every error that Qubix reports to a person."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code


class InvalidInput(QubixError):
    """A value given by a person or a client is invalid."""

    code = "invalid_fields"


class Malformed(QubixError):
    """A request that cannot be read at all (not JSON, cut off)."""

    code = "malformed"


class Unauthorized(QubixError):
    """No credential, or one that is not valid."""

    code = "unauthorized"


class Forbidden(QubixError):
    """A valid credential that may not do this."""

    code = "forbidden"


class NotFound(QubixError):
    code = "not_found"


class Conflict(QubixError):
    """The request contradicts the current state (a lease not held, a finished job)."""

    code = "conflict"


class TooLarge(QubixError):
    code = "too_large"


class RateLimited(QubixError):
    code = "rate_limited"


class QuotaExceeded(RateLimited):
    """An account's quota, set by an operator, is used up (`details.quota` names it)."""

    code = "quota_exceeded"


class UpgradeRequired(QubixError):
    """The worker's agent is older than the coordinator accepts (`--min-agent-version`)."""

    code = "agent_too_old"


class PaymentRequired(QubixError):
    """What a job may cost is more than its account has available."""

    code = "insufficient_funds"


class Unavailable(QubixError):
    """Something the server needs is not there now; the same request may work later."""

    code = "unavailable"


class StorageError(Unavailable):
    """Storage cannot be read or written: a change that raises it was not saved, and
    nothing of it is visible."""

    code = "storage_unavailable"


class InsufficientStorage(Unavailable):
    """The server keeps its last free space (`--min-free-mb`) for what it must save (jobs,
    registrations, reports): uploads are refused until space returns."""

    code = "insufficient_storage"


class ServerError(QubixError):
    """A Qubix server could not be reached or refused a request."""
