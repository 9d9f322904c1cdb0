"""HTTP endpoints: one table (`ENDPOINTS`) gives both the routes and the OpenAPI paths;
each endpoint parses its input, calls the registry or the queue, answers JSON."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from qubix_cli.errors import (
    Forbidden,
    InvalidInput,
    Malformed,
    NotFound,
    QubixError,
    RateLimited,
    Unauthorized,
)
from qubix_cli.installer.render import render
from qubix_cli.server.accounts import Accounts, Caller
from qubix_cli.server.diagnosis import diagnose, why_queued
from qubix_cli.server.events import Subscription
from qubix_cli.server.http import (
    LongPolls,
    PerIp,
    bearer_token,
    client_ip,
    declared_length,
    error_response,
    internal_error,
    json_response,
    parse_json,
    read_body,
    read_json,
    read_query,
    request_headers,
    require_token,
    send_json,
    validate,
)
from qubix_cli.server.jobfiles import JobFiles
from qubix_cli.server.jobs import RESULT_LIMIT_BYTES, JobQueue
from qubix_cli.server.metrics import CONTENT_TYPE, Metrics
from qubix_cli.server.providers import Registry
from qubix_cli.server.schemas import (
    JOB_TYPES,
    AccountCreate,
    AccountList,
    AddressPath,
    ArtifactPath,
    ArtifactQuery,
    CheckNewQuery,
    Credit,
    Diagnosis,
    Earnings,
    EarningsQuery,
    Health,
    Heartbeat,
    HeartbeatAnswer,
    InstallerQuery,
    JobListQuery,
    JobReport,
    Jobs,
    JobSubmit,
    KeyCreate,
    KeyList,
    Lease,
    Ledger,
    LedgerQuery,
    LogChunk,
    Logs,
    LogsQuery,
    LogStored,
    NewAccount,
    NewKey,
    NewProviders,
    OneAccount,
    OneArtifact,
    OneJob,
    OneKey,
    OneProvider,
    PendingQuery,
    ProviderListQuery,
    ProviderPage,
    QuotaChange,
    Register,
    Registered,
    Uploaded,
    WorkerJobs,
)
from qubix_cli.server.store import Doc
from qubix_cli.server.updates import UPDATE_PATH, Release, check_floor, offer_for

HEARTBEAT_PATH = "/api/providers/{workerId}/heartbeat"
REGISTRATION_LIMIT_BYTES = 16 * 1024
# Open check-new long-polls and event streams per client IP (a page or `qubix watch` holds
# one of each); workers' job polls are bounded by --max-providers-per-ip instead.
LONG_POLLS_PER_IP = 32
STREAMS_PER_IP = 32
SEND_TIMEOUT_S = 10.0  # an event stream whose reader takes longer than this is closed


class Heartbeats:
    """POST /api/providers/{workerId}/heartbeat, as a plain ASGI app.

    Heartbeats are most of the traffic: 10,000 workers send 333 a second, and each is a
    POST whose token is checked and whose body is validated. `Coordinator` hands them to
    this app before Starlette's middleware and router; it reads the two headers it needs
    from the ASGI scope instead of building a `Request`, and sends its answer without a
    `Response`. Together that is a tenth of a heartbeat's cost (docs/performance.md). It
    answers its own errors, as every other endpoint does."""

    def __init__(
        self, registry: Registry, jobs: JobQueue, metrics: Metrics, release: Release
    ) -> None:
        self.registry, self.jobs, self.settings = registry, jobs, registry.settings
        self.metrics, self.release = metrics, release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            answer = await self._answer(scope, receive)
        except QubixError as exc:
            await error_response(exc)(scope, receive, send)
        except Exception:
            await internal_error(scope)(scope, receive, send)
        else:
            await send_json(send, answer)

    async def _answer(self, scope: Scope, receive: Receive) -> Doc:
        headers = request_headers(scope, b"authorization", b"content-length")
        worker_id = scope["path_params"]["workerId"]
        provider = await self.registry.authenticate(worker_id, require_token(headers))
        check_floor(provider.get("agentVersion"), self.settings.min_agent_version, self.release)
        body = parse_json(await read_body(receive, headers), Heartbeat)
        await self.registry.heartbeat(worker_id, body)
        if body.status == "paused":
            self.jobs.release([worker_id])  # a paused worker is handed nothing
        cancels = await self.jobs.heartbeat(worker_id, body.job_ids())
        self.metrics.heartbeats.inc()
        return {
            "ok": True,
            "serverTime": self.registry.clock(),
            "heartbeatIntervalS": self.settings.heartbeat_interval_s,
            "pollWaitS": self.settings.poll_wait_s,
            "cancelJobIds": cancels,
            "update": offer_for(provider, self.release, self.settings.update_rollout),
        }


# Who may call an endpoint, and the security schemes that says. A key's account is checked
# in one place (`Api._guard`); a job of another renter is then not found (`find_job`).
ANYONE, WORKER, RENTER, OPERATOR, WORKER_OR_OPERATOR = (
    "anyone",
    "worker",  # the worker token of the worker named in the path, or of the lease holder
    "renter",  # any account's key: a renter's or an operator's
    "operator",  # an operator's key
    "worker or operator",
)
METRICS = "operator, or anyone with --metrics-public"
ACCESS: dict[str, tuple[str, ...]] = {
    METRICS: ("apiKey",),
    ANYONE: (),
    WORKER: ("workerToken",),
    RENTER: ("apiKey",),
    OPERATOR: ("apiKey",),
    WORKER_OR_OPERATOR: ("workerToken", "apiKey"),
}


@dataclass(frozen=True)
class Endpoint:
    """One HTTP operation: its route (the `Api` method named `handler`) and its OpenAPI
    entry. Path parameters are read from the path."""

    method: str
    path: str
    handler: str
    summary: str
    codes: tuple[int, ...]  # the statuses it answers with
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None  # the model of its 200/201 answers
    media_type: str = "application/json"  # of its 200 answer
    access: str = ANYONE  # who may call it: one of ACCESS
    upload: bool = False  # its body is a file's bytes (application/octet-stream)

    @property
    def auth(self) -> tuple[str, ...]:
        """Its OpenAPI security schemes."""
        return ACCESS[self.access]


LOG_BODY_LIMIT_BYTES = 512 * 1024  # a log chunk's 64 KiB of text, JSON-escaped

# Routes are matched in this order, the busiest first. Heartbeat POSTs are handed over
# before the router (see `Coordinator`); their route answers other methods (405).
ENDPOINTS = (
    Endpoint(
        "POST",
        HEARTBEAT_PATH,
        "heartbeats",
        "Heartbeat; renews the current job's lease (and may offer a signed update)",
        (200, 400, 401, 403, 404, 422, 426),
        body=Heartbeat,
        answer=HeartbeatAnswer,
        access=WORKER,
    ),
    Endpoint(
        "GET",
        "/api/jobs/pending/{workerId}",
        "pending_job",
        "Lease the oldest queued job this worker can run (long-poll)",
        (200, 204, 401, 403, 404, 422, 426),
        query=PendingQuery,
        answer=Lease,
        access=WORKER,
    ),
    Endpoint(
        "GET",
        "/healthz",
        "healthz",
        "Liveness: 503 while the server cannot read its storage (its database is down)",
        (200, 503),
        answer=Health,
    ),
    Endpoint(
        "POST",
        "/api/providers/quick-register",
        "quick_register",
        "Register or re-register a provider",
        (200, 201, 400, 409, 413, 422, 426, 429),
        body=Register,
        answer=Registered,
    ),
    Endpoint(
        "GET",
        "/api/providers/check-new",
        "check_new",
        "Providers registered since a time (long-poll)",
        (200, 422, 429),
        query=CheckNewQuery,
        answer=NewProviders,
    ),
    Endpoint(
        "GET",
        "/api/providers",
        "list_providers",
        "Marketplace list, a page at a time",
        (200, 422),
        query=ProviderListQuery,
        answer=ProviderPage,
    ),
    Endpoint(
        "GET",
        "/api/providers/{workerId}",
        "get_provider",
        "One provider",
        (200, 404),
        answer=OneProvider,
    ),
    Endpoint(
        "GET",
        "/api/providers/{workerId}/diagnosis",
        "diagnosis",
        "Why this worker gets no jobs, in words and numbers (its token or the API key)",
        (200, 401, 403, 404),
        answer=Diagnosis,
        access=WORKER_OR_OPERATOR,
    ),
    Endpoint(
        "GET",
        "/api/providers/{workerId}/jobs",
        "worker_jobs",
        "The last renters' jobs a worker ran: type, state, times, earned (no ids, payloads, "
        "results nor renters)",
        (200, 404),
        answer=WorkerJobs,
    ),
    Endpoint(
        "DELETE",
        "/api/providers/{workerId}",
        "delete_provider",
        "Deregister (its worker token or the API key)",
        (204, 401, 403, 404),
        access=WORKER_OR_OPERATOR,
    ),
    Endpoint(
        "POST",
        "/api/jobs",
        "submit_job",
        "Submit a job",
        (201, 400, 401, 402, 413, 422, 429),
        body=JobSubmit,
        answer=OneJob,
        access=RENTER,
    ),
    Endpoint(
        "GET",
        "/api/jobs",
        "list_jobs",
        "List jobs, newest first",
        (200, 401, 422),
        query=JobListQuery,
        answer=Jobs,
        access=RENTER,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}",
        "get_job",
        "One job with its history (and, while it is queued, why: `why`)",
        (200, 401, 404),
        answer=OneJob,
        access=RENTER,
    ),
    Endpoint(
        "POST",
        "/api/jobs/{jobId}/cancel",
        "cancel_job",
        "Cancel a queued or assigned job",
        (200, 401, 404, 409),
        answer=OneJob,
        access=RENTER,
    ),
    Endpoint(
        "POST",
        "/api/jobs/{jobId}/complete",
        "complete_job",
        "Report a result, once, as the lease holder",
        (200, 400, 401, 404, 409, 413, 422),
        body=JobReport,
        answer=OneJob,
        access=WORKER,
    ),
    Endpoint(
        "POST",
        "/api/inputs",
        "upload_input",
        "Upload a file that jobs name as an input (by its SHA-256)",
        (201, 401, 413, 503, 507),
        answer=Uploaded,
        access=RENTER,
        upload=True,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}/inputs/{name}",
        "job_input",
        "An uploaded input of a job, for the worker that holds its lease",
        (200, 401, 404, 409),
        media_type="application/octet-stream",
        access=WORKER,
    ),
    Endpoint(
        "PUT",
        "/api/jobs/{jobId}/artifacts/{name:path}",
        "put_artifact",
        "Upload an output file, as the lease holder of that attempt",
        (200, 401, 404, 409, 413, 422, 503, 507),
        query=ArtifactQuery,
        answer=OneArtifact,
        access=WORKER,
        upload=True,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}/artifacts/{name:path}",
        "get_artifact",
        "Download an output file of a job",
        (200, 401, 404),
        media_type="application/octet-stream",
        access=RENTER,
    ),
    Endpoint(
        "POST",
        "/api/jobs/{jobId}/logs",
        "post_log",
        "Send the next part of a running job's output, as its lease holder",
        (200, 400, 401, 404, 409, 413, 422),
        body=LogChunk,
        answer=LogStored,
        access=WORKER,
    ),
    Endpoint(
        "GET",
        "/api/jobs/{jobId}/logs",
        "get_logs",
        "A job's output so far (long-poll for more with wait)",
        (200, 401, 404, 422, 429),
        query=LogsQuery,
        answer=Logs,
        access=RENTER,
    ),
    Endpoint(
        "GET",
        "/api/account",
        "my_account",
        "The account of the key used: name, role, quotas, balance",
        (200, 401),
        answer=OneAccount,
        access=RENTER,
    ),
    Endpoint(
        "POST",
        "/api/accounts",
        "create_account",
        "Create an account and its first key (shown once)",
        (201, 400, 401, 403, 409, 413, 422),
        body=AccountCreate,
        answer=NewAccount,
        access=OPERATOR,
    ),
    Endpoint(
        "GET",
        "/api/accounts",
        "list_accounts",
        "All accounts",
        (200, 401, 403),
        answer=AccountList,
        access=OPERATOR,
    ),
    Endpoint(
        "GET",
        "/api/accounts/{name}",
        "get_account",
        "One account (an operator, or the account's own key)",
        (200, 401, 404),
        answer=OneAccount,
        access=RENTER,
    ),
    Endpoint(
        "POST",
        "/api/accounts/{name}/quota",
        "set_quota",
        "Change an account's quotas (null: no limit)",
        (200, 400, 401, 403, 404, 413, 422),
        body=QuotaChange,
        answer=OneAccount,
        access=OPERATOR,
    ),
    Endpoint(
        "POST",
        "/api/accounts/{name}/credit",
        "credit_account",
        "Add to an account's balance (recorded in the ledger)",
        (200, 400, 401, 403, 404, 413, 422),
        body=Credit,
        answer=OneAccount,
        access=OPERATOR,
    ),
    Endpoint(
        "POST",
        "/api/keys",
        "create_key",
        "Create a key (shown once): a renter for itself, an operator for any account",
        (201, 400, 401, 404, 413, 422),
        body=KeyCreate,
        answer=NewKey,
        access=RENTER,
    ),
    Endpoint(
        "GET",
        "/api/keys",
        "list_keys",
        "Keys: a renter's own, or every key for an operator",
        (200, 401),
        answer=KeyList,
        access=RENTER,
    ),
    Endpoint(
        "DELETE",
        "/api/keys/{keyId}",
        "revoke_key",
        "Revoke a key; it is refused from the next request",
        (200, 401, 404),
        answer=OneKey,
        access=RENTER,
    ),
    Endpoint(
        "GET",
        "/api/ledger",
        "ledger",
        "Credits, charges and refunds, oldest first (a renter sees its own)",
        (200, 401, 422),
        query=LedgerQuery,
        answer=Ledger,
        access=RENTER,
    ),
    Endpoint(
        "GET",
        "/api/earnings/{qubicAddress}",
        "earnings",
        "What a Qubic address earned (public totals; each line to a worker token of that "
        "address or an operator)",
        (200, 401, 422),
        query=EarningsQuery,
        answer=Earnings,
    ),
    Endpoint(
        "GET",
        "/metrics",
        "metrics_text",
        "Operator metrics in Prometheus' text format (an operator's key, or anyone with "
        "--metrics-public)",
        (200, 401, 403),
        media_type="text/plain",
        access=METRICS,
    ),
    Endpoint(
        "GET",
        UPDATE_PATH,
        "worker_update",
        "The worker zipapp this server ships (signed: see the update offer)",
        (200,),
        media_type="application/octet-stream",
    ),
    Endpoint(
        "GET",
        "/api/installer/{os}",
        "installer",
        "A one-file installer for windows, linux or macos (.bat or .sh)",
        (200, 400),
        query=InstallerQuery,
        media_type="text/x-shellscript",
    ),
)


class Api:
    """The endpoints, bound to one registry, one queue and the store that holds the keys."""

    def __init__(
        self,
        registry: Registry,
        jobs: JobQueue,
        files: JobFiles,
        accounts: Accounts,
        metrics: Metrics,
        release: Release,
    ) -> None:
        self.registry, self.jobs, self.files, self.accounts = registry, jobs, files, accounts
        self.metrics, self.release = metrics, release
        self.settings = registry.settings
        self.store = registry.store
        self.heartbeats = Heartbeats(registry, jobs, metrics, release)
        self._polls = PerIp("check-new long-polls", LONG_POLLS_PER_IP)
        self._log_polls = PerIp("log long-polls", LONG_POLLS_PER_IP)
        self.long_polls = LongPolls()
        self._streams = PerIp("event streams", STREAMS_PER_IP)

    def routes(self) -> list[BaseRoute]:
        """The routes of `ENDPOINTS`, then the events stream."""
        routes: list[BaseRoute] = [
            Route(e.path, self._guarded(e), methods=[e.method]) for e in ENDPOINTS
        ]
        return [*routes, WebSocketRoute("/api/events", self.events)]

    def _guarded(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        handler = getattr(self, endpoint.handler)

        async def guarded(request: Request) -> Response:
            request.state.caller = await self._guard(endpoint, request)
            answer: Response = await handler(request)
            return answer

        return guarded

    async def _guard(self, endpoint: Endpoint, request: Request) -> Caller | None:
        """Who may call an endpoint, checked here for every endpoint (`Endpoint.access`):
        the account of the key shown, or None where a worker token is checked by the
        endpoint itself (it names the worker)."""
        if endpoint.access in (ANYONE, WORKER):
            return None
        if endpoint.access == METRICS and self.settings.metrics_public:
            return None
        token = require_token(request.headers)
        caller = await self.accounts.caller(token)
        if endpoint.access == WORKER_OR_OPERATOR:
            if caller is not None and not caller.is_operator:
                raise Forbidden(
                    f"the key of the renter account {caller.account!r} cannot do this: it "
                    "needs the worker's token or an operator's key"
                )
            return caller
        if caller is None:
            raise Unauthorized(
                "this needs an API key (Authorization: Bearer qbx_...); the one given is "
                "not known, or was revoked"
            )
        if endpoint.access in (OPERATOR, METRICS) and not caller.is_operator:
            raise Forbidden(
                f"only an operator may do this; the key's account {caller.account!r} is a renter",
                code="operator_only",
            )
        return caller

    @staticmethod
    def _caller(request: Request) -> Caller:
        """The account of an endpoint that needs a key (checked by `_guard`)."""
        caller: Caller = request.state.caller
        return caller

    async def _worker(self, request: Request) -> Doc:
        """The provider named in the path, authenticated by its worker token."""
        token = require_token(request.headers)
        return await self.registry.authenticate(request.path_params["workerId"], token)

    async def healthz(self, request: Request) -> Response:
        await self.registry.store.get("accounts", "operator")  # StorageError: 503
        return json_response(
            {
                "ok": True,
                "serverTime": self.registry.clock(),
                "workerVersion": self.release.version,
                "updateKey": self.release.public_key,
                "leads": self.registry.store.leads(),
            }
        )

    # -- providers ---------------------------------------------------------------------

    async def quick_register(self, request: Request) -> Response:
        body = await read_json(request, Register, limit=REGISTRATION_LIMIT_BYTES)
        check_floor(body.agentVersion, self.settings.min_agent_version, self.release)
        ip = self._ip(request.scope)
        doc, token = await self.registry.register(body, bearer_token(request.headers), ip)
        answer: Doc = {"provider": await self.registry.public(doc)}
        if token is not None:
            answer["workerToken"] = token
        return json_response(answer, 201 if token else 200)

    async def check_new(self, request: Request) -> Response:
        query = read_query(request, CheckNewQuery)
        with self._polls.hold(self._ip(request.scope)) if query.wait else contextlib.nullcontext():
            providers = await self.long_polls.wait(request, self.registry.check_new(query)) or []
        return json_response({"providers": providers, "serverTime": self.registry.clock()})

    async def list_providers(self, request: Request) -> Response:
        page, cursor = await self.registry.search(read_query(request, ProviderListQuery))
        return json_response({"providers": page, "nextCursor": cursor})

    async def get_provider(self, request: Request) -> Response:
        provider = await self.registry.get(request.path_params["workerId"])
        return json_response({"provider": provider})

    async def _worker_or_operator(self, request: Request) -> Doc:
        """The provider in the path, for its own worker token or an operator's key."""
        worker_id = request.path_params["workerId"]
        if request.state.caller is not None:
            return await self.registry.find(worker_id)
        try:
            return await self.registry.authenticate(worker_id, require_token(request.headers))
        except Forbidden as exc:
            message = f"this is neither an operator's API key nor the token of {worker_id!r}"
            raise Forbidden(message) from exc

    async def diagnosis(self, request: Request) -> Response:
        provider = await self._worker_or_operator(request)
        return json_response(await diagnose(self.registry, self.jobs, provider))

    async def delete_provider(self, request: Request) -> Response:
        worker_id = (await self._worker_or_operator(request))["workerId"]
        await self.registry.delete(worker_id)
        await self.jobs.requeue_held_by(worker_id)
        return Response(status_code=204)

    # -- jobs --------------------------------------------------------------------------

    async def submit_job(self, request: Request) -> Response:
        body = await read_json(request, JobSubmit)
        payload = validate(JOB_TYPES[body.type].payload, body.payload, "body.payload")
        await self.files.check_inputs(body.inputs)
        payload_doc = payload.model_dump(exclude_none=True)
        job = await self.jobs.submit(body, payload_doc, self._caller(request))
        return json_response({"job": job}, 201)

    async def list_jobs(self, request: Request) -> Response:
        query = read_query(request, JobListQuery)
        jobs, total = await self.jobs.search(query, self._caller(request))
        return json_response({"jobs": jobs, "total": total, "offset": query.offset})

    async def get_job(self, request: Request) -> Response:
        job = await self.jobs.get(request.path_params["jobId"], self._caller(request))
        if job["status"] == "queued":
            job["why"] = await why_queued(self.registry, self.jobs, job)
        return json_response({"job": job})

    async def cancel_job(self, request: Request) -> Response:
        job = await self.jobs.cancel(request.path_params["jobId"], self._caller(request))
        return json_response({"job": job})

    async def pending_job(self, request: Request) -> Response:
        provider = await self._worker(request)
        check_floor(provider.get("agentVersion"), self.settings.min_agent_version, self.release)
        query = read_query(request, PendingQuery)
        if await self.registry.is_paused(provider["workerId"]):
            return Response(status_code=204)  # dispatch never sends work to a paused worker
        await self.registry.polled(provider["workerId"])
        job = await self.long_polls.wait(request, self.jobs.lease(provider, query.wait))
        if job is None:
            return Response(status_code=204)
        return json_response(
            {
                "job": job,
                "attempt": job["attempt"],
                "leaseExpiresAt": job["leaseExpiresAt"],
                "inputNetworks": list(self.settings.input_networks),
            }
        )

    async def complete_job(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        job_id = request.path_params["jobId"]
        report = await read_json(request, JobReport, limit=2 * RESULT_LIMIT_BYTES)
        job = await self.jobs.complete(job_id, provider, report)
        return json_response({"job": job})

    # -- inputs, outputs, logs ------------------------------------------------------

    async def upload_input(self, request: Request) -> Response:
        expected = declared_length(request.headers)
        uploaded = await self.files.upload_input(request.stream(), self._caller(request), expected)
        return json_response(uploaded, 201)

    async def job_input(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        job_id, name = request.path_params["jobId"], request.path_params["name"]
        path = await self.files.input_path(job_id, name, provider)
        return FileResponse(path, media_type="application/octet-stream")

    async def put_artifact(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        name = validate(ArtifactPath, {"name": request.path_params["name"]}, "path").name
        attempt = read_query(request, ArtifactQuery).attempt
        job_id = request.path_params["jobId"]
        artifact = await self.files.add_artifact(job_id, name, attempt, provider, request.stream())
        return json_response({"artifact": artifact})

    async def get_artifact(self, request: Request) -> Response:
        job_id, name = request.path_params["jobId"], request.path_params["name"]
        await self.jobs.get(job_id, self._caller(request))  # another renter's: not found
        path, artifact = await self.files.artifact(job_id, name)
        headers = {
            "X-Checksum-Sha256": artifact["sha256"],
            "Content-Disposition": f'attachment; filename="{artifact["name"].rsplit("/")[-1]}"',
        }
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    async def post_log(self, request: Request) -> Response:
        provider = await self.registry.worker_for_token(require_token(request.headers))
        chunk = await read_json(request, LogChunk, limit=LOG_BODY_LIMIT_BYTES)
        stored = await self.files.append_log(request.path_params["jobId"], provider, chunk)
        return json_response({"stored": stored})

    async def get_logs(self, request: Request) -> Response:
        query = read_query(request, LogsQuery)
        job_id = request.path_params["jobId"]
        await self.jobs.get(job_id, self._caller(request))  # another renter's: not found
        ip = self._ip(request.scope)
        with self._log_polls.hold(ip) if query.wait else contextlib.nullcontext():
            logs = await self.long_polls.wait(request, self.files.logs(job_id, query))
        return json_response(logs) if logs is not None else Response(status_code=204)

    # -- accounts, keys, the ledger ------------------------------------------------------

    async def my_account(self, request: Request) -> Response:
        account = await self.accounts.get(self._caller(request).account)
        return json_response({"account": account})

    async def create_account(self, request: Request) -> Response:
        body = await read_json(request, AccountCreate)
        account, key, secret = await self.accounts.create(body.name, body.role, body.keyName)
        return json_response({"account": account, "key": key, "apiKey": secret}, 201)

    async def list_accounts(self, request: Request) -> Response:
        return json_response({"accounts": await self.accounts.all()})

    async def get_account(self, request: Request) -> Response:
        caller, name = self._caller(request), request.path_params["name"]
        if not caller.is_operator and name != caller.account:
            raise NotFound(f"no account {name!r}", code="account_not_found")
        return json_response({"account": await self.accounts.get(name)})

    async def set_quota(self, request: Request) -> Response:
        body = await read_json(request, QuotaChange)
        changes = body.model_dump(include=body.model_fields_set)
        account = await self.accounts.set_quota(request.path_params["name"], changes)
        return json_response({"account": account})

    async def credit_account(self, request: Request) -> Response:
        body = await read_json(request, Credit)
        name, caller = request.path_params["name"], self._caller(request)
        return json_response({"account": await self.accounts.credit(name, body.amount, caller)})

    async def create_key(self, request: Request) -> Response:
        body = await read_json(request, KeyCreate)
        caller = self._caller(request)
        account = body.account or caller.account
        if not caller.is_operator and account != caller.account:
            raise NotFound(f"no account {account!r}", code="account_not_found")
        key, secret = await self.accounts.create_key(account, body.name)
        return json_response({"key": key, "apiKey": secret}, 201)

    async def list_keys(self, request: Request) -> Response:
        return json_response({"keys": await self.accounts.keys(self._caller(request))})

    async def revoke_key(self, request: Request) -> Response:
        key = await self.accounts.revoke(self._caller(request), request.path_params["keyId"])
        return json_response({"key": key})

    async def ledger(self, request: Request) -> Response:
        query, caller = read_query(request, LedgerQuery), self._caller(request)
        where = query.model_dump(exclude_none=True)
        if not caller.is_operator:
            where["account"] = caller.account
        return json_response({"entries": await self.accounts.ledger(where or None)})

    async def earnings(self, request: Request) -> Response:
        where = {"qubicAddress": request.path_params["qubicAddress"]}
        address = validate(AddressPath, where, "path").qubicAddress
        query = read_query(request, EarningsQuery)
        token = bearer_token(request.headers)
        lines = False
        if token is not None:
            caller = await self.accounts.caller(token)
            if caller is not None:
                lines = caller.is_operator
            else:  # a worker token (Unauthorized if it is not one either)
                worker = await self.registry.worker_for_token(token)
                lines = worker["qubicAddress"] == address
        found = await self.accounts.earnings(address, query.since, query.workerId, lines)
        return json_response(found)

    async def worker_jobs(self, request: Request) -> Response:
        worker = await self.registry.find(request.path_params["workerId"])
        return json_response({"jobs": await self.jobs.of_worker(worker["workerId"])})

    async def metrics_text(self, request: Request) -> Response:
        page = await self.metrics.page(
            self.store,
            job_polls=self.jobs.waiting(),
            check_new_polls=self.registry.watching(),
            streams=self.registry.events.subscribers(),
        )
        return Response(page, media_type=CONTENT_TYPE)

    async def worker_update(self, request: Request) -> Response:
        headers = {
            "X-Checksum-Sha256": self.release.sha256,
            "X-Qubix-Worker-Version": self.release.version,
            "X-Qubix-Signature": self.release.signature,
        }
        return Response(self.release.data, media_type="application/octet-stream", headers=headers)

    # -- installers --------------------------------------------------------------------

    async def installer(self, request: Request) -> Response:
        query = read_query(request, InstallerQuery)
        backend = query.backend or self.settings.public_url or str(request.base_url)
        public = self.settings.public_url
        if public and backend.rstrip("/") not in {public, *self.settings.allow_backends}:
            raise Malformed(
                f"this server builds installers for {public} only (and the URLs its operator "
                "allows with --allow-backend), not for another coordinator",
                code="backend_not_allowed",
            )
        try:
            built = render(
                request.path_params["os"],
                backend.rstrip("/"),
                query.qubicAddress,
                self.release.public_key,
            )
        except InvalidInput as exc:
            raise Malformed(str(exc), code="invalid_installer_request") from exc
        disposition = f'attachment; filename="{built.filename}"'
        headers = {"Content-Disposition": disposition, "X-Checksum-Sha256": built.sha256}
        return Response(built.content, media_type=built.media_type, headers=headers)

    # -- events ------------------------------------------------------------------------

    async def events(self, websocket: WebSocket) -> None:
        """WS /api/events: provider events for anyone; job events once a key is shown, as
        `Authorization: Bearer` on the upgrade or (browsers) a first message
        `{"type": "auth", "key": ...}`. An upgrade from a foreign `Origin` is refused."""
        if not self._own_origin(websocket):
            await websocket.close(code=1008)  # before accepting: the upgrade is answered 403
            return
        caller = await self.accounts.caller(bearer_token(websocket.headers))
        await websocket.accept()
        try:
            with self._streams.hold(self._ip(websocket.scope)):
                await self._stream(websocket, caller)
        except RateLimited as exc:
            await websocket.close(code=1013, reason=exc.message[:120])

    def _ip(self, scope: Scope) -> str:
        return client_ip(scope, self.settings.trusted_proxies)

    async def _stream(self, websocket: WebSocket, caller: Caller | None) -> None:
        async with self.registry.events.subscribe(caller.may_see if caller else None) as sub:
            tasks = {
                asyncio.ensure_future(self._send_events(websocket, sub)),
                asyncio.ensure_future(self._read_auth(websocket, sub)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()

    def _own_origin(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin")
        if origin is None:
            return True  # not a browser
        scheme = "https" if websocket.url.scheme == "wss" else "http"
        allowed = {f"{scheme}://{websocket.url.netloc}", *self.settings.allowed_origins()}
        return origin.rstrip("/").lower() in {o.lower() for o in allowed}

    async def _send_events(self, websocket: WebSocket, sub: Subscription) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while (event := await sub.queue.get()) is not None:
                try:
                    await asyncio.wait_for(websocket.send_json(event), SEND_TIMEOUT_S)
                except TimeoutError:
                    break  # a reader that does not read
            await websocket.close(code=1013, reason="too slow: reconnect")

    async def _read_auth(self, websocket: WebSocket, sub: Subscription) -> None:
        """Until the client goes away: an `auth` message adds job events, or, with a key
        that is not valid, closes the stream."""
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                try:
                    message = await websocket.receive_json()
                except ValueError:
                    continue  # not JSON: ignored
                if not isinstance(message, dict) or message.get("type") != "auth":
                    continue
                key = message.get("key")
                caller = await self.accounts.caller(key) if isinstance(key, str) else None
                if caller is None:
                    await websocket.close(code=1008, reason="this key is not valid")
                    return
                sub.sees = caller.may_see
                await websocket.send_json(
                    {"type": "AUTHENTICATED", "data": {}, "at": self.registry.clock()}
                )
