"""Schemas: the requests they validate and the answers they document (the OpenAPI
document is generated from both), and the one spelling of each list the API uses."""

from __future__ import annotations

import base64
import binascii
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from qubix_cli.errors import InvalidInput
from qubix_cli.qubic import validate_identity
from qubix_cli.worker.envs import pinned_requirements

# Free text that is shown in terminals and pages: no C0 or C1 controls, no DEL, no
# bidirectional overrides or isolates (they reorder what a reader sees).
_TEXT = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*$"
WORKER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _qubic_address(value: str) -> str:
    try:
        return validate_identity(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from exc


def Text(max_length: int, min_length: int = 0, default: Any = ...) -> Any:  # noqa: N802
    """A string field of free text (reads like a type in the models)."""
    return Field(default, min_length=min_length, max_length=max_length, pattern=_TEXT)


WorkerId = Annotated[str, Field(pattern=WORKER_ID_PATTERN)]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
QubicAddress = Annotated[str, Field(min_length=60, max_length=60), AfterValidator(_qubic_address)]
Capability = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
Percent = Annotated[float, Field(ge=0, le=100)]
Seconds = Annotated[float, Field(ge=0, le=60)]

JobStatus = Literal["queued", "assigned", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
FINISHED = JOB_STATUSES[2:]  # completed, failed, cancelled: a job never leaves these
ReportStatus = Literal["completed", "failed", "preempted"]
ProviderStatus = Literal["online", "busy", "offline", "paused"]
PROVIDER_STATUSES: tuple[str, ...] = get_args(ProviderStatus)
GpuVendor = Literal["nvidia", "amd", "apple", "intel", "other"]
Sandbox = Literal["bubblewrap", "none"]


def _finite(value: Any) -> Any:
    """JSON as the standard has it: NaN and Infinity (which Python's parser lets through)
    would make the database file something that is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and Infinity are not JSON numbers")
    if isinstance(value, dict):
        for item in value.values():
            _finite(item)
    elif isinstance(value, list):
        for item in value:
            _finite(item)
    return value


AnyJson = Annotated[Any, AfterValidator(_finite)]


class Body(BaseModel):
    """Bodies are strict: wrong types and unknown fields are errors, not guesses."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Query(BaseModel):
    """Query strings arrive as text, so they are converted, and unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Gpu(Body):
    vendor: GpuVendor
    model: str = Text(128, 1)
    vramMb: int = Field(ge=0, le=4_194_304)
    driver: str | None = Text(64, default=None)
    cudaVersion: str | None = Text(16, default=None)
    computeCapability: str | None = Text(16, default=None)
    uuid: str | None = Text(128, default=None)
    busId: str | None = Text(64, default=None)
    sharedMemory: bool = False
    software: bool = Field(
        default=False,
        description="A software renderer (SwiftShader, llvmpipe): listed, never counted as a GPU.",
    )


class WebGpuLimits(Body):
    """What a browser's WebGPU adapter allows (its `limits`): what a `wgsl` job must fit."""

    maxBufferSize: int = Field(ge=0, le=2**53)
    maxStorageBufferBindingSize: int = Field(ge=0, le=2**53)
    maxComputeWorkgroupsPerDimension: int = Field(ge=0, le=2**32)
    maxComputeInvocationsPerWorkgroup: int = Field(ge=0, le=2**32)
    maxStorageBuffersPerShaderStage: int = Field(ge=0, le=1024)


class Cpu(Body):
    model: str = Text(128, 1)
    cores: int = Field(ge=1, le=4096)
    threads: int | None = Field(default=None, ge=1, le=8192)
    arch: str | None = Text(32, default=None)


class Disk(Body):
    totalGb: float = Field(ge=0, le=1_000_000)
    freeGb: float = Field(ge=0, le=1_000_000)


class OsInfo(Body):
    system: str = Text(64, 1)
    release: str = Text(128)


class Register(Body):
    """POST /api/providers/quick-register."""

    type: Literal["native", "browser"]
    workerId: WorkerId
    qubicAddress: QubicAddress
    name: str | None = Text(64, default=None)
    location: str | None = Text(64, default=None)
    pricePerHour: float | None = Field(default=None, ge=0, le=1_000_000)
    gpus: list[Gpu] | None = Field(default=None, max_length=16)
    gpu: Gpu | None = Field(default=None, description="The seed's single GPU; use gpus.")
    cpu: Cpu
    ramMb: int = Field(ge=0, le=1 << 32)
    storage: Disk | None = None
    os: OsInfo | None = None
    capabilities: list[Capability] = Field(default_factory=list, max_length=32)
    sandbox: Sandbox = Field(
        default="none", description="How renters' code runs there: `none` means as its user."
    )
    networkJobs: bool = Field(default=False, description="Gives the network to jobs that ask.")
    idleOnly: bool = Field(
        default=False,
        description="Works only while nobody uses its computer (hands jobs back otherwise).",
    )
    concurrency: int = Field(
        default=1, ge=1, le=16, description="How many jobs it runs at once (one per GPU)."
    )
    gpuEngine: Literal["cuda", "torch", "none"] = Field(
        default="none", description="The GPU engine it found when it started (docs/trust.md)."
    )
    webgpu: WebGpuLimits | None = Field(
        default=None, description="A browser's WebGPU limits (browser providers that compute)."
    )
    agentVersion: str = Text(32, 1)
    updateFailed: str | None = Field(
        default=None,
        max_length=32,
        description="A version this worker tried and rolled back from (it is not offered again).",
    )

    @model_validator(mode="after")
    def _one_gpu_list(self) -> Register:
        if self.gpu is not None and self.gpus is not None:
            raise ValueError("give either gpus (a list) or gpu (one object), not both")
        return self

    def gpu_list(self) -> list[Gpu]:
        return self.gpus if self.gpus is not None else [self.gpu] if self.gpu else []


class GpuUsage(Body):
    """One GPU's use, as `nvidia-smi` reports it (index as it numbers the GPUs)."""

    index: int = Field(ge=0, le=15)
    percent: Percent | None = None
    memUsedMb: int | None = Field(default=None, ge=0, le=4_194_304)
    tempC: float | None = Field(default=None, ge=-50, le=200)


class Usage(Body):
    cpuPercent: Percent
    ramPercent: Percent
    gpuPercent: Percent | None = None
    gpuMemUsedMb: int | None = Field(default=None, ge=0, le=4_194_304)
    gpuTempC: float | None = Field(default=None, ge=-50, le=200)
    gpus: list[GpuUsage] | None = Field(default=None, max_length=16)


class Heartbeat(Body):
    """POST /api/providers/{workerId}/heartbeat."""

    status: Literal["online", "busy", "paused"]
    pausedReason: str | None = Field(
        default=None, max_length=200, description="Why it takes no jobs (status paused)."
    )
    pausedUntil: float | None = Field(
        default=None, ge=0, description="Until when (unix seconds); none: until resumed."
    )
    usage: Usage | None = None
    currentJobIds: list[JobId] = Field(
        default_factory=list, max_length=16, description="The jobs it runs now."
    )
    currentJobId: JobId | None = Field(
        default=None, description="The one job of an agent that runs one at a time."
    )

    def job_ids(self) -> list[str]:
        """The jobs it runs, whichever of the two forms it sent."""
        extra = [self.currentJobId] if self.currentJobId else []
        return list(dict.fromkeys([*self.currentJobIds, *extra]))


class CheckNewQuery(Query):
    since: float | None = Field(default=None, ge=0)
    qubicAddress: str | None = Field(default=None, max_length=60)
    workerId: WorkerId | None = None
    wait: Seconds = 0


class ProviderListQuery(Query):
    status: ProviderStatus | None = None
    minVramMb: int | None = Field(default=None, ge=0)
    gpu: str | None = Field(default=None, max_length=128)
    qubicAddress: str | None = Field(default=None, max_length=60, description="Its workers.")
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(
        default=None, max_length=200, description="`nextCursor` of the previous page."
    )


class Requirements(Body):
    minVramMb: int | None = Field(default=None, ge=0, le=4_194_304)
    gpuVendor: GpuVendor | None = None
    capabilities: list[Capability] = Field(default_factory=list, max_length=16)
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs of its own while it runs.")
    verified: bool = Field(default=False, description="Only workers whose GPU claim was verified.")
    minReputation: float | None = Field(default=None, ge=0, le=1)
    sandbox: bool = Field(default=False, description="Only workers that run it in a sandbox.")
    network: bool = Field(default=False, description="It needs the network (off by default).")
    maxPricePerHour: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Only workers that ask at most this."
    )
    hardwareGpu: bool | None = Field(
        default=None,
        description="Only workers with a hardware GPU, not a software renderer (default: "
        "true for GPU job types such as wgsl).",
    )


class SleepPayload(Body):
    seconds: float = Field(ge=0, le=86_400)


class BenchmarkPayload(Body):
    seconds: float = Field(default=2.0, ge=0.1, le=60)


FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
FileName = Annotated[
    str,
    Field(
        pattern=FILE_NAME.pattern,
        description="A plain file name: letters, digits, `._-`, not starting with a dot.",
    ),
]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ArtifactQuery(Query):
    attempt: int = Field(ge=1, description="The attempt whose lease the worker holds.")


# An output's path below $QUBIX_OUTPUT: plain names (as above, so never `..`) joined by `/`.
RELATIVE_PATH = re.compile(rf"^(?:{FILE_NAME.pattern[1:-1]}/){{0,16}}{FILE_NAME.pattern[1:-1]}$")


class ArtifactPath(Body):
    name: str = Field(
        max_length=1024,
        pattern=RELATIVE_PATH.pattern,
        description="A path below $QUBIX_OUTPUT: plain names joined by `/` (`sub/x.txt`).",
    )


class AddressPath(Body):
    qubicAddress: QubicAddress


EnvVars = Annotated[
    dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], str],
    Field(default_factory=dict, max_length=64),
]


def _http_url(value: str | None) -> str | None:
    """A URL whose host and port can be read (urlsplit and `.port` raise on the rest)."""
    if value is None:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("not a valid URL: it names no host")
    if port == 0:
        raise ValueError("not a valid URL: port 0")
    return value


class Input(Body):
    """A file the job finds in `$QUBIX_INPUT` by its name: one uploaded to this server
    (`POST /api/inputs` gives its `sha256`), or one the worker fetches from `url`."""

    name: FileName
    sha256: Sha256
    url: Annotated[str | None, AfterValidator(_http_url)] = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\s]+$"
    )


def _pinned(value: str | None) -> str | None:
    if value is not None:
        pinned_requirements(value)  # ValueError says which line is not pinned
    return value


class PythonPayload(Body):
    """A script (inline, or one of the job's inputs) run with its arguments, and the
    environment of its pinned requirements."""

    script: str | None = Field(default=None, max_length=1024 * 1024)
    scriptInput: FileName | None = None
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=256)
    requirements: Annotated[str | None, AfterValidator(_pinned)] = Field(
        default=None, max_length=64 * 1024, description="name==version lines, --hash allowed."
    )
    env: EnvVars

    @model_validator(mode="after")
    def _one_script(self) -> PythonPayload:
        if (self.script is None) == (self.scriptInput is None):
            raise ValueError("give either script (its text) or scriptInput (an input's name)")
        return self


class CommandPayload(Body):
    argv: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=256
    )
    env: EnvVars


class MatmulPayload(Body):
    """The verifiable job: C = A.B for n x n byte matrices drawn from `seed`; its answer
    is the SHA-256 of C (worker/engine.py says exactly how)."""

    seed: int = Field(ge=0, le=2**32 - 1)
    n: int = Field(ge=8, le=4096)


WGSL_MAX_BUFFER_BYTES = 256 * 2**20  # one buffer of a `wgsl` job
WGSL_MAX_DATA_BYTES = 512 * 1024  # its inputs together, and its outputs (base64 in a result)


class WgslBuffer(Body):
    """A storage buffer of bind group 0: zeroed, or filled from `input`; read back when
    `output`."""

    binding: int = Field(ge=0, le=15)
    sizeBytes: int = Field(ge=4, le=WGSL_MAX_BUFFER_BYTES, multiple_of=4)
    input: str | None = Field(
        default=None, max_length=WGSL_MAX_DATA_BYTES * 4 // 3 + 4, description="Base64."
    )
    output: bool = False

    def input_bytes(self) -> int:
        if self.input is None:
            return 0
        try:
            return len(base64.b64decode(self.input, validate=True))
        except binascii.Error:
            raise ValueError(f"binding {self.binding}: input is not base64") from None


class WgslPayload(Body):
    """A renter's WebGPU compute shader, run in a browser: one dispatch of `workgroups` over
    storage buffers in bind group 0; the result holds the output buffers, base64."""

    shader: str = Field(min_length=1, max_length=64 * 1024, description="WGSL source.")
    entryPoint: str = Field(default="main", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    workgroups: list[Annotated[int, Field(ge=1, le=65_535)]] = Field(min_length=1, max_length=3)
    buffers: list[WgslBuffer] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _fits(self) -> WgslPayload:
        bindings = [b.binding for b in self.buffers]
        if len(set(bindings)) != len(bindings):
            raise ValueError("two buffers have the same binding")
        for buffer in self.buffers:
            if buffer.input_bytes() > buffer.sizeBytes:
                raise ValueError(f"binding {buffer.binding}: input is larger than sizeBytes")
        if sum(b.input_bytes() for b in self.buffers) > WGSL_MAX_DATA_BYTES:
            raise ValueError(f"the inputs are over {WGSL_MAX_DATA_BYTES} bytes together")
        if sum(b.sizeBytes for b in self.buffers if b.output) > WGSL_MAX_DATA_BYTES:
            raise ValueError(f"the output buffers are over {WGSL_MAX_DATA_BYTES} bytes together")
        if not any(b.output for b in self.buffers):
            raise ValueError("no buffer is an output: the job would return nothing")
        return self


@dataclass(frozen=True)
class JobType:
    payload: type[Body]  # the schema of its `payload`
    always: bool  # every native worker runs it; otherwise only workers that list it
    gpu: bool = False  # needs a hardware GPU unless the renter says otherwise (hardwareGpu)


# The job types: the worker's runners for them are in worker/jobs.py (`RUNNERS`).
JOB_TYPES: dict[str, JobType] = {
    "benchmark": JobType(BenchmarkPayload, always=True),
    "sleep": JobType(SleepPayload, always=False),
    "command": JobType(CommandPayload, always=False),
    "python": JobType(PythonPayload, always=False),
    "matmul": JobType(MatmulPayload, always=False),
    "wgsl": JobType(WgslPayload, always=False, gpu=True),
}


def _known_job_type(value: str) -> str:
    if value not in JOB_TYPES:
        raise ValueError(f"Input should be one of {', '.join(map(repr, JOB_TYPES))}")
    return value


JobTypeName = Annotated[
    str, Field(json_schema_extra={"enum": list(JOB_TYPES)}), AfterValidator(_known_job_type)
]


class JobSubmit(Body):
    """POST /api/jobs. `payload` is checked against the schema of its `type`."""

    type: JobTypeName
    payload: dict[str, AnyJson] = Field(default_factory=dict)
    requirements: Requirements = Field(default_factory=Requirements)
    providerId: WorkerId | None = None
    timeoutS: int = Field(default=3600, ge=1, le=7 * 86_400)
    maxAttempts: int = Field(default=3, ge=1, le=20)
    inputs: list[Input] = Field(default_factory=list, max_length=32)
    verify: Literal["replicate"] | None = Field(
        default=None,
        description="replicate: run it on workers of different addresses and networks "
        "until a majority agree (at most five runs, else it fails disputed); only for jobs "
        "whose result is deterministic.",
    )

    @model_validator(mode="after")
    def _distinct_inputs(self) -> JobSubmit:
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("two inputs have the same name")
        if "timeoutS" in self.payload:
            raise ValueError(
                "payload.timeoutS is not a field: a job has one timeout, its own timeoutS "
                "(beside type and payload)"
            )
        script = self.payload.get("scriptInput")
        if isinstance(script, str) and script not in names:
            raise ValueError(f"scriptInput {script!r} is not the name of one of the inputs")
        return self


class JobReport(Body):
    """POST /api/jobs/{jobId}/complete."""

    attempt: int = Field(ge=1)
    status: ReportStatus
    result: AnyJson = None
    metrics: dict[str, AnyJson] = Field(default_factory=dict, max_length=64)


class PendingQuery(Query):
    wait: Seconds = 0


class JobListQuery(Query):
    status: JobStatus | None = None
    providerId: WorkerId | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class InstallerQuery(Query):
    """GET /api/installer/{os}: checked in full by the renderer (400 when refused)."""

    backend: str | None = None
    qubicAddress: str | None = None


# -- answers: documented in OpenAPI, and checked against real answers by the schema fuzz tests


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(Answer):
    error: str
    message: str
    details: Any = None


class Provider(Register):
    """A provider as answers show it: its registration and what the server knows of it."""

    registeredAt: float
    lastRegisteredAt: float
    status: ProviderStatus
    lastSeenAt: float | None
    usage: Usage | None
    currentJobId: str | None
    currentJobIds: list[str]
    trust: Trust
    outdated: bool = Field(default=False, description="Its agent is older than the server's.")
    pausedReason: str | None = None
    pausedUntil: float | None = None
    failedUpdates: list[str] = Field(default_factory=list)


class Trust(Answer):
    """What the coordinator has checked of a worker (docs/trust.md)."""

    claim: Literal["verified", "unverified", "mismatch"]
    quarantined: bool
    reputation: float
    canariesPassed: int
    canariesFailed: int
    passStreak: int
    completed: int
    failed: int
    lost: int
    preempted: int = 0
    lastPassedAt: float | None


class Diagnosis(Answer):
    workerId: str
    status: ProviderStatus
    reasons: list[str] = Field(description="Plain sentences, the most important first.")
    queued: int
    eligible: int = Field(description="Queued jobs this worker may take.")
    excluded: dict[str, int] = Field(description="Queued jobs left out, by the reason.")
    trust: Trust


class Registered(Answer):
    provider: Provider
    workerToken: str | None = Field(None, description="Only in the first registration's answer.")


class OneProvider(Answer):
    provider: Provider


class Providers(Answer):
    providers: list[Provider]


class ProviderPage(Providers):
    nextCursor: str | None = Field(description="Pass it as `cursor` for the next page.")


class NewProviders(Providers):
    serverTime: float = Field(description="Pass it as `since` to the next call.")


class UpdateOffer(Answer):
    version: str
    url: str
    sha256: str
    size: int
    signature: str = Field(description="Ed25519, hex, of the version, SHA-256 and size.")


class HeartbeatAnswer(Answer):
    ok: bool
    serverTime: float
    heartbeatIntervalS: float
    pollWaitS: float
    cancelJobIds: list[str]
    update: UpdateOffer | None = Field(default=None, description="A newer signed worker.")


class HistoryEntry(BaseModel):
    event: str
    at: float


class Artifact(Answer):
    """A file a job left in `$QUBIX_OUTPUT`, uploaded by its worker."""

    name: str
    sha256: str
    size: int


class OneArtifact(Answer):
    artifact: Artifact


class Uploaded(Answer):
    sha256: str
    size: int


class LogChunk(Body):
    """POST /api/jobs/{jobId}/logs: the next part of a running job's output."""

    attempt: int = Field(ge=1)
    text: str = Field(max_length=64 * 1024)
    droppedLines: int = Field(default=0, ge=0)


class LogStored(Answer):
    stored: bool = Field(description="false: this job's log is full; send no more.")


class LogsQuery(Query):
    after: int = Field(default=-1, ge=-1, description="`seq` of the last chunk you have.")
    wait: Seconds = 0


class LogText(Answer):
    seq: int
    text: str


class Logs(Answer):
    attempt: int
    chunks: list[LogText]
    droppedLines: int
    finished: bool = Field(description="The job has ended: no more chunks will come.")


class QueueStep(Answer):
    rule: str
    workers: int


class QueueWhy(Answer):
    online: int
    fit: int
    busy: int
    steps: list[QueueStep]
    reasons: list[str]


class Job(JobSubmit):
    """A job as answers show it: the submission and its state."""

    model_config = ConfigDict(extra="forbid", strict=False)
    id: str
    status: JobStatus
    attempt: int
    workerId: str | None
    createdAt: float
    updatedAt: float
    result: Any
    metrics: dict[str, Any] | None
    history: list[HistoryEntry]
    leaseExpiresAt: float | None
    artifacts: list[Artifact] = Field(default_factory=list)
    replicas: list[dict[str, Any]] | None = None
    account: str | None = Field(default=None, description="The account that submitted it.")
    hold: float | None = Field(default=None, description="Its worst case, held while open.")
    pricePerHour: float | None = Field(default=None, description="Fixed by its lease.")
    cost: float | None = Field(default=None, description="What it was charged, once ended.")
    preemptions: int | None = Field(default=None, description="Times its worker handed it back.")
    why: QueueWhy | None = Field(default=None, description="While queued: why it waits.")
    verified: bool | None = Field(default=None, description="Replicas agreed on the result.")
    unverified: str | None = Field(default=None, description="Why its result is in doubt.")
    failedBy: Literal["job", "worker"] | None = Field(
        default=None, description="Once failed: its own doing (charged) or not (free)."
    )
    log: dict[str, int] | None = Field(default=None, description="storedBytes, droppedLines")


class OneJob(Answer):
    job: Job


class Jobs(Answer):
    jobs: list[Job]
    total: int
    offset: int


class Lease(Answer):
    job: Job
    attempt: int
    leaseExpiresAt: float
    inputNetworks: list[str] = Field(
        default_factory=list, description="Networks that URL inputs may be in besides public."
    )


class Health(Answer):
    ok: bool
    serverTime: float
    workerVersion: str = Field(description="The worker version this server ships.")
    updateKey: str = Field(description="The public key its worker updates are signed with.")
    leads: bool = Field(
        description="Whether this server does the periodic work (offline providers, expired "
        "leases, forgetting): the one server on a data dir, one replica on a database."
    )


# -- accounts, keys, the ledger -------------------------------------------------------

AccountName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
KeyName = Annotated[str, Field(min_length=1, max_length=64)]
QuotaValue = Annotated[int, Field(ge=0, le=10_000_000)]


class AccountCreate(Body):
    """POST /api/accounts."""

    name: AccountName
    role: Literal["operator", "renter"] = "renter"
    keyName: KeyName = "first"


class QuotaChange(Body):
    """POST /api/accounts/{name}/quota: the quotas given change (null: no limit)."""

    maxQueued: QuotaValue | None = Field(default=None, description="Jobs queued at once.")
    maxPerMinute: QuotaValue | None = Field(default=None, description="Jobs submitted a minute.")
    maxRunning: QuotaValue | None = Field(default=None, description="Jobs running at once.")
    maxStorageMb: QuotaValue | None = Field(
        default=None,
        description="MiB of uploaded inputs (null: the server's default, --renter-storage-mb "
        "for a renter, no limit for an operator).",
    )


class Credit(Body):
    """POST /api/accounts/{name}/credit (negative: take back)."""

    amount: float = Field(ge=-1e12, le=1e12)
    model_config = ConfigDict(strict=False, extra="forbid", allow_inf_nan=False)


class KeyCreate(Body):
    """POST /api/keys: a renter makes keys for its own account only."""

    account: AccountName | None = None
    name: KeyName = "key"


class LedgerQuery(Query):
    account: str | None = None
    qubicAddress: str | None = None
    jobId: str | None = None


class Quota(Answer):
    maxQueued: int | None
    maxPerMinute: int | None
    maxRunning: int | None
    maxStorageMb: int | None = None


class Account(Answer):
    name: str
    role: str
    createdAt: float
    quota: Quota
    balance: float
    held: float
    spent: float = Field(default=0.0, description="Charged for its jobs, less refunds.")


class OneAccount(Answer):
    account: Account


class AccountList(Answer):
    accounts: list[Account]


class ApiKey(Answer):
    id: str = Field(description="The key's first 12 characters.")
    account: str
    name: str
    createdAt: float
    revokedAt: float | None
    lastUsedAt: float | None


class OneKey(Answer):
    key: ApiKey


class KeyList(Answer):
    keys: list[ApiKey]


class NewKey(Answer):
    key: ApiKey
    apiKey: str = Field(description="The key itself, shown only now.")


class NewAccount(Answer):
    account: Account
    key: ApiKey
    apiKey: str = Field(description="The account's first key, shown only now.")


class LedgerEntry(Answer):
    model_config = ConfigDict(extra="allow")
    id: str
    at: float
    kind: Literal["credit", "charge", "refund"]
    account: str
    amount: float


class Ledger(Answer):
    entries: list[LedgerEntry]


class EarningsQuery(Query):
    since: float | None = Field(default=None, description="Only lines from then (unix seconds).")
    workerId: str | None = Field(default=None, max_length=64, description="Only this worker's.")


class Earnings(Answer):
    qubicAddress: str
    today: float
    last7Days: float
    last30Days: float
    allTime: float
    jobs: int
    lines: list[LedgerEntry] | None = Field(
        default=None, description="Each line: to a worker token of the address or an operator."
    )


class WorkerJob(Answer):
    """A job as a worker's public page shows it: no id, payload, result nor renter."""

    type: str
    status: JobStatus
    leasedAt: float
    endedAt: float | None
    durationS: float | None
    earned: float


class WorkerJobs(Answer):
    jobs: list[WorkerJob]
