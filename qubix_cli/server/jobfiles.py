"""What jobs bring in and take out: uploaded inputs, output files (artifacts), logs, and
how long they are kept.

The bytes of inputs and outputs are blobs (`blobs.py`); which job has which is in the job
(`inputs`, `artifacts`), and its log is in the `logs` table, a chunk a document: all
through the store. Only the worker that holds a job's lease may fetch its inputs or add
to its outputs and log, for the attempt it holds.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

from qubix_cli.errors import Conflict, InvalidInput, TooLarge
from qubix_cli.server.accounts import Caller
from qubix_cli.server.blobs import Blobs
from qubix_cli.server.http import not_found
from qubix_cli.server.jobs import find_job, holds
from qubix_cli.server.logwaits import LogWaiters
from qubix_cli.server.providers import Clock
from qubix_cli.server.schemas import FINISHED, Input, LogChunk, LogsQuery
from qubix_cli.server.settings import Settings
from qubix_cli.server.store import Doc, Store
from qubix_cli.server.uploads import UPLOAD_GRACE_S, Uploads
from qubix_cli.worker.transfer import InputError, resolve_public

LOG_LIMIT_BYTES = 1024 * 1024  # of one attempt's log; the rest is counted, not kept
LOG_CHUNKS_PER_ANSWER = 64


class JobFiles:
    def __init__(self, store: Store, blobs: Blobs, settings: Settings, clock: Clock) -> None:
        self.store, self.blobs, self.settings, self.clock = store, blobs, settings, clock
        self.uploads = Uploads(store, settings, clock)
        self.log_waiters = LogWaiters()

    # -- inputs ----------------------------------------------------------------------

    async def upload_input(
        self, chunks: AsyncIterator[bytes], caller: Caller, expected: int
    ) -> Doc:
        """Store an input of the caller's account (`expected`: its announced size, or 0),
        within the most one input may be and what the account's storage quota leaves."""
        most = self.settings.max_input_bytes
        allowance = await self.uploads.allowance(caller)
        if allowance is not None and allowance < max(1, expected):
            raise await self.uploads.refusal(caller)
        limit = most if allowance is None else min(most, allowance)

        async def admit(sha256: str, size: int) -> None:
            await self.uploads.check(caller, sha256, size)

        try:
            sha256, size = await self.blobs.write(chunks, limit, "the input", expected, admit)
        except TooLarge as exc:
            if limit < most and exc.code == "upload_too_large":
                raise await self.uploads.refusal(caller) from None
            raise
        await self.uploads.record(caller, sha256, size)
        return {"sha256": sha256, "size": size}

    async def check_inputs(self, inputs: list[Input]) -> None:
        """Each uploaded input is here; each URL leads to a public address (or one in a
        network the operator allowed). InvalidInput naming the first that does not."""
        loop = asyncio.get_running_loop()
        for item in inputs:
            if item.url is None:
                if not self.blobs.exists(item.sha256):
                    raise InvalidInput(
                        f"input {item.name!r}: no uploaded file has SHA-256 {item.sha256}; "
                        "upload it first (POST /api/inputs)",
                        code="input_not_uploaded",
                    )
                continue
            parts = urllib.parse.urlsplit(item.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            networks = self.settings.input_networks
            try:
                host = parts.hostname or ""
                await loop.run_in_executor(None, resolve_public, host, port, list(networks))
            except InputError as exc:
                raise InvalidInput(f"input {item.name!r}: {exc}", code="input_refused") from exc

    async def input_path(self, job_id: str, name: str, provider: Doc) -> Path:
        """The file of an uploaded input, for the worker that holds the job's lease."""
        job = await find_job(self.store, job_id)
        _check_lease(job, provider, None)
        for item in job.get("inputs", []):
            if item["name"] == name and not item.get("url"):
                return self.blobs.path(item["sha256"])
        raise not_found(f"uploaded input {name!r} of job {job_id}")

    # -- outputs ---------------------------------------------------------------------

    async def add_artifact(
        self, job_id: str, name: str, attempt: int, provider: Doc, chunks: AsyncIterator[bytes]
    ) -> Doc:
        """Store one output file of the job, for the lease holder of `attempt`, within the
        caps per file and per job; the same name again replaces it."""
        job = await find_job(self.store, job_id)
        _check_lease(job, provider, attempt)
        used = sum(a["size"] for a in job.get("artifacts", []) if a["name"] != name)
        room = min(self.settings.max_output_bytes, self.settings.max_job_outputs_bytes - used)
        if room <= 0:
            raise TooLarge(
                f"job {job_id}'s outputs already take all "
                f"{self.settings.max_job_outputs_bytes // 2**20} MiB that a job may leave",
                code="outputs_too_large",
            )
        sha256, size = await self.blobs.write(chunks, room, f"output {name!r}")
        artifact = {"name": name, "sha256": sha256, "size": size}
        async with self.store.transaction() as tx:
            job = await find_job(tx, job_id)
            _check_lease(job, provider, attempt)
            others = [a for a in job.get("artifacts", []) if a["name"] != name]
            tx.put("jobs", {**job, "artifacts": [*others, artifact]})
        return artifact

    async def artifact(self, job_id: str, name: str) -> tuple[Path, Doc]:
        job = await find_job(self.store, job_id)
        for item in job.get("artifacts", []):
            if item["name"] == name:
                return self.blobs.path(item["sha256"]), item
        raise not_found(f"output {name!r} of job {job_id}")

    # -- logs ------------------------------------------------------------------------

    async def append_log(self, job_id: str, provider: Doc, chunk: LogChunk) -> bool:
        """Keep the next chunk of the attempt's log, up to `LOG_LIMIT_BYTES`; past that the
        lines are counted. Whether the worker should send more."""
        size = len(chunk.text.encode())
        async with self.store.transaction() as tx:
            job = await find_job(tx, job_id)
            _check_lease(job, provider, chunk.attempt)
            log = job.get("log") or {}
            if log.get("attempt") != chunk.attempt:
                log = {"attempt": chunk.attempt, "chunks": 0, "storedBytes": 0, "droppedLines": 0}
            log = {**log, "droppedLines": log["droppedLines"] + chunk.droppedLines}
            stored: bool = log["storedBytes"] + size <= LOG_LIMIT_BYTES
            if stored:
                seq = log["chunks"]
                tx.put(
                    "logs",
                    {
                        "id": _log_id(job_id, chunk.attempt, seq),
                        "jobId": job_id,
                        "attempt": chunk.attempt,
                        "seq": seq,
                        "text": chunk.text,
                    },
                )
                log.update(chunks=seq + 1, storedBytes=log["storedBytes"] + size)
            else:
                log["droppedLines"] += chunk.text.count("\n")
            tx.put("jobs", {**job, "log": log})
        return stored

    async def logs(self, job_id: str, query: LogsQuery) -> Doc:
        """The chunks after `query.after` of the job's latest attempt, waiting up to
        `query.wait` for one to come (or for the job to end): the store is read again when
        the job changes (`LogWaiters`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + query.wait
        while True:
            with self.log_waiters.watch(job_id) as woken:
                job, found = await self.log_waiters.read(job_id, self._log_state)
                log = job.get("log") or {"attempt": job["attempt"], "droppedLines": 0}
                wanted = [c for c in found if c["attempt"] == log["attempt"]]
                chunks = [c for c in wanted if c["seq"] > query.after][:LOG_CHUNKS_PER_ANSWER]
                answer = {
                    "attempt": log["attempt"],
                    "chunks": [{"seq": c["seq"], "text": c["text"]} for c in chunks],
                    "droppedLines": log["droppedLines"],
                    "finished": job["status"] in FINISHED,
                }
                if chunks or answer["finished"] or loop.time() >= deadline:
                    return answer
                await asyncio.wait({woken}, timeout=deadline - loop.time())
                if not woken.done():
                    return answer  # nothing changed since it was read

    async def _log_state(self, job_id: str) -> tuple[Doc, list[Doc]]:
        """The job and every chunk of its log, as the store has them now."""
        job = await find_job(self.store, job_id)
        return job, await self.store.scan("logs", where={"jobId": job_id}, order_by="id")

    # -- retention -------------------------------------------------------------------

    async def forget_old(self) -> int:
        """Remove the jobs that finished more than the retention ago, with their logs, and
        every blob that no job refers to any more; how many jobs went."""
        cutoff = self.clock() - self.settings.retention_s
        gone = 0
        for job in await self.store.scan("jobs"):
            if job["status"] in FINISHED and job["updatedAt"] < cutoff:
                logs = await self.store.scan("logs", where={"jobId": job["id"]})
                async with self.store.transaction() as tx:
                    tx.delete("jobs", job["id"])
                    for chunk in logs:
                        tx.delete("logs", chunk["id"])
                gone += 1
        await self._collect_blobs()
        return gone

    async def _collect_blobs(self) -> None:
        kept: set[str] = set()
        named: dict[str, set[str]] = {}  # account -> the inputs its jobs name
        for job in await self.store.scan("jobs"):
            inputs = {i["sha256"] for i in job.get("inputs", []) if not i.get("url")}
            named.setdefault(job.get("account") or "", set()).update(inputs)
            kept |= inputs | {a["sha256"] for a in job.get("artifacts", [])}
        kept |= await self.uploads.collect(named)
        cutoff = self.clock() - UPLOAD_GRACE_S
        for sha256, written_at in self.blobs.names():
            if sha256 not in kept and written_at < cutoff:
                self.blobs.delete(sha256)


def _log_id(job_id: str, attempt: int, seq: int) -> str:
    return f"{job_id}.{attempt:04d}.{seq:08d}"


def _check_lease(job: Doc, provider: Doc, attempt: int | None) -> None:
    """The provider holds the job's lease (of `attempt`, when given): else 409."""
    held = (
        job["status"] == "assigned"
        and job["workerId"] == provider["workerId"]
        and holds(job, provider)
        and attempt in (None, job["attempt"])
    )
    if not held:
        raise Conflict(
            f"job {job['id']} is {job['status']} (attempt {job['attempt']}); this worker does "
            "not hold its lease",
            code="lease_not_held",
        )
