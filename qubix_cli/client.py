"""A small HTTP client for the coordinator's API, used by the CLI commands."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx

from qubix_cli import config
from qubix_cli.errors import ServerError
from qubix_cli.server.schemas import FINISHED, RELATIVE_PATH


class Client:
    """Calls one server; every failure becomes a `ServerError` with a sentence to act on."""

    def __init__(self, server: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(
                f"cannot reach the Qubix server at {self.server} ({exc.__class__.__name__}); "
                "is it running, and is --server / QUBIX_SERVER right?"
            ) from exc
        if response.status_code >= 400:
            raise ServerError(_error_sentence(response))
        return response.json() if response.content else None

    def list_providers(self, **params: Any) -> list[dict[str, Any]]:
        """Every provider that matches, following the pages of `GET /api/providers`."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = self.call("GET", "/api/providers", params=query)
            found += page["providers"]
            cursor = page["nextCursor"]
            if cursor is None:
                return found

    def submit_job(self, body: dict[str, Any]) -> dict[str, Any]:
        job: dict[str, Any] = self.call("POST", "/api/jobs", json=body)["job"]
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.call("GET", f"/api/jobs/{job_id}")["job"]
        return job

    def list_jobs(self, **params: Any) -> dict[str, Any]:
        params = {k: v for k, v in params.items() if v is not None}
        answer: dict[str, Any] = self.call("GET", "/api/jobs", params=params)
        return answer

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.call("POST", f"/api/jobs/{job_id}/cancel")["job"]
        return job

    def upload_input(self, path: Path) -> dict[str, Any]:
        """Upload a file for jobs to name as an input: its sha256 and size."""
        with path.open("rb") as f:
            answer: dict[str, Any] = self.call(
                "POST",
                "/api/inputs",
                content=f,
                headers={"Content-Type": "application/octet-stream"},
            )
        return answer

    def download_artifact(self, job_id: str, artifact: dict[str, Any], target: Path) -> None:
        """Download one output file of a job to `target`, checking its SHA-256 on the way
        (ServerError, and nothing left at `target`, if it does not match). Its name must be
        a path below the download directory (plain names joined by `/`, never `..`), and
        the directories on that path are made."""
        if not RELATIVE_PATH.fullmatch(artifact["name"]):
            raise ServerError(
                f"the server named an output {artifact['name']!r}, which is not a plain path "
                "below the download directory: not written"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"/api/jobs/{job_id}/artifacts/{artifact['name']}"
        digest = hashlib.sha256()
        partial = target.with_name(f".{target.name}.part")
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ServerError(_error_sentence(response))
                with partial.open("wb") as f:
                    for chunk in response.iter_bytes(1024 * 1024):
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise ServerError(f"the download of {artifact['name']!r} failed: {exc}") from exc
        if digest.hexdigest() != artifact["sha256"]:
            partial.unlink(missing_ok=True)
            raise ServerError(f"{artifact['name']!r} arrived damaged (its SHA-256 differs)")
        partial.replace(target)

    def logs(self, job_id: str, after: int, wait_s: float) -> dict[str, Any]:
        params = {"after": after, "wait": wait_s}
        answer: dict[str, Any] = self.call(
            "GET", f"/api/jobs/{job_id}/logs", params=params, timeout=wait_s + 10
        )
        return answer

    def wait_job(self, job_id: str, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll a job until it reaches a final state."""
        while (job := self.get_job(job_id))["status"] not in FINISHED:
            time.sleep(poll_s)
        return job


def connect(server: str | None, api_key: str | None) -> Client:
    """A client for the CLI: the server and key from the flags, else the environment, else
    the config file (`qubix login`)."""
    url = config.server_url(server)
    return Client(url, config.api_key(api_key, url))


def _error_sentence(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    hint = ""
    if response.status_code == 401:
        hint = " (give an API key with --api-key or QUBIX_API_KEY, or store one: qubix login)"
    return f"the server answered {response.status_code}: {message}{hint}"
