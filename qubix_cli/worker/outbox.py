"""The durable outbox: a job's report is on disk before it is sent, and stays there until
the server has answered it, across network failures and worker restarts."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Any

from qubix_cli.worker.client import Client, message
from qubix_cli.worker.state import write_private

log = logging.getLogger("qubix.worker")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what the server makes (and its schemas allow)


def valid_lease(job_id: Any, attempt: Any) -> bool:
    """Whether a job id and attempt have the shapes the server makes: server text goes into
    file names and URL paths only after this."""
    well_formed = isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None
    return well_formed and type(attempt) is int and 1 <= attempt <= 1000


class Outbox:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "outbox")
        self._sending = threading.Lock()  # jobs finish in several threads
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def put(self, job_id: str, report: dict[str, Any]) -> None:
        if not valid_lease(job_id, report["attempt"]):
            raise ValueError(f"not a job id and attempt the server makes: {job_id!r}")
        path = os.path.join(self.path, f"{job_id}.{report['attempt']}.json")
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(self.path):
            raise ValueError(f"the report of job {job_id!r} would leave {self.path}")
        write_private(path, json.dumps({"jobId": job_id, **report}).encode())

    def pending(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if n.endswith(".json"))

    def send(self, client: Client) -> None:
        """Send every stored report; raises `Transient` if the server cannot be reached."""
        with self._sending:
            self._send(client)

    def _send(self, client: Client) -> None:
        for name in self.pending():
            path = os.path.join(self.path, name)
            with open(path) as f:
                entry = json.load(f)
            job_id = entry.pop("jobId")
            if not valid_lease(job_id, entry.get("attempt")):
                log.error("dropped %s from the outbox: not a report this worker writes", name)
                os.unlink(path)
                continue
            status, answer = client.request("POST", f"/api/jobs/{job_id}/complete", entry)
            if status == 200:
                log.info(
                    "reported job %s (attempt %s): %s", job_id, entry["attempt"], entry["status"]
                )
            else:
                # Retrying cannot change a refusal (lease lost, job cancelled or gone).
                log.warning(
                    "the server refused the report of job %s (%s): %s",
                    job_id,
                    status,
                    message(answer),
                )
            os.unlink(path)
