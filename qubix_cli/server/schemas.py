"""Request schemas: they validate every body and query, and generate the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from qubix_cli.errors import ValidationError
from qubix_cli.qubic import validate_identity

# Free text that is shown in terminals and pages: no control characters.
_TEXT = r"^[^\x00-\x1f\x7f]*$"
WORKER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _qubic_address(value: str) -> str:
    try:
        return validate_identity(value)
    except ValidationError as exc:
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


class Body(BaseModel):
    """Bodies are strict: wrong types and unknown fields are errors, not guesses."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """Query strings arrive as text, so they are converted, and unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")


class Gpu(Body):
    vendor: Literal["nvidia", "amd", "apple", "intel", "other"]
    model: str = Text(128, 1)
    vramMb: int = Field(ge=0, le=4_194_304)
    driver: str | None = Text(64, default=None)
    cudaVersion: str | None = Text(16, default=None)
    computeCapability: str | None = Text(16, default=None)
    uuid: str | None = Text(128, default=None)
    busId: str | None = Text(64, default=None)
    sharedMemory: bool = False


class Cpu(Body):
    model: str = Text(256, 1)
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
    gpus: list[Gpu] | None = Field(default=None, max_length=64)
    gpu: Gpu | None = Field(default=None, description="The seed's single GPU; use gpus.")
    cpu: Cpu
    ramMb: int = Field(ge=0, le=1 << 32)
    storage: Disk | None = None
    os: OsInfo | None = None
    capabilities: list[Capability] = Field(default_factory=list, max_length=32)
    agentVersion: str = Text(32, 1)

    @model_validator(mode="after")
    def _one_gpu_list(self) -> Register:
        if self.gpu is not None and self.gpus is not None:
            raise ValueError("give either gpus (a list) or gpu (one object), not both")
        return self

    def gpu_list(self) -> list[Gpu]:
        return self.gpus if self.gpus is not None else [self.gpu] if self.gpu else []


class Usage(Body):
    cpuPercent: Percent
    ramPercent: Percent
    gpuPercent: Percent | None = None
    gpuMemUsedMb: int | None = Field(default=None, ge=0, le=4_194_304)
    gpuTempC: float | None = Field(default=None, ge=-50, le=200)


class Heartbeat(Body):
    """POST /api/providers/{workerId}/heartbeat."""

    status: Literal["online", "busy"]
    usage: Usage | None = None
    currentJobId: JobId | None = None


class CheckNewQuery(Query):
    since: float | None = Field(default=None, ge=0)
    qubicAddress: str | None = Field(default=None, max_length=60)
    workerId: WorkerId | None = None
    wait: Seconds = 0


class ProviderListQuery(Query):
    status: Literal["online", "busy", "offline"] | None = None
    minVramMb: int | None = Field(default=None, ge=0)
    gpu: str | None = Field(default=None, max_length=128)


class Requirements(Body):
    minVramMb: int | None = Field(default=None, ge=0, le=4_194_304)
    gpuVendor: Literal["nvidia", "amd", "apple", "intel", "other"] | None = None
    capabilities: list[Capability] = Field(default_factory=list, max_length=16)


class SleepPayload(Body):
    seconds: float = Field(ge=0, le=86_400)


class BenchmarkPayload(Body):
    seconds: float = Field(default=2.0, ge=0.1, le=60)


class CommandPayload(Body):
    argv: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=256
    )
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], str] = Field(
        default_factory=dict, max_length=64
    )
    timeoutS: int | None = Field(default=None, ge=1, le=7 * 86_400)


PAYLOADS: dict[str, type[Body]] = {
    "benchmark": BenchmarkPayload,
    "sleep": SleepPayload,
    "command": CommandPayload,
}


class JobSubmit(Body):
    """POST /api/jobs. `payload` is checked against the schema of its `type`."""

    type: Literal["benchmark", "sleep", "command"]
    payload: dict[str, Any] = Field(default_factory=dict)
    requirements: Requirements = Field(default_factory=Requirements)
    providerId: WorkerId | None = None
    timeoutS: int = Field(default=3600, ge=1, le=7 * 86_400)
    maxAttempts: int = Field(default=3, ge=1, le=20)


class JobReport(Body):
    """POST /api/jobs/{jobId}/complete."""

    attempt: int = Field(ge=1)
    status: Literal["completed", "failed"]
    result: Any = None
    metrics: dict[str, Any] = Field(default_factory=dict, max_length=64)


class PendingQuery(Query):
    wait: Seconds = 0


class JobListQuery(Query):
    status: Literal["queued", "assigned", "completed", "failed", "cancelled"] | None = None
    providerId: WorkerId | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class InstallerQuery(Query):
    """GET /api/installer/{os}: checked in full by the renderer (400 when refused)."""

    backend: str | None = None
    qubicAddress: str | None = None
