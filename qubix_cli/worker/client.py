"""The worker's HTTP client (standard library only). Network trouble and 5xx answers are
`Transient` (retry later); every other answer is returned to the caller to decide."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from typing import Any, Callable

USER_AGENT = "qubix-worker"


class Transient(Exception):
    """The server could not be reached or failed (5xx): try again later."""


class Client:
    def __init__(self, server: str, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"the server URL must be http(s)://host[:port]: {server!r}")
        self.server = server.rstrip("/")
        self._scheme, self._netloc = parsed.scheme, parsed.netloc
        self._base = parsed.path.rstrip("/")
        self.timeout_s = timeout_s
        self.token: str | None = None
        self._open: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: Any = None, timeout_s: float | None = None
    ) -> tuple[int, Any]:
        """Send one request and return (status, parsed JSON body or None)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return self._exchange(method, path, data, headers, timeout_s, None)

    def upload(self, path: str, file: Any, size: int) -> tuple[int, Any]:
        """PUT the bytes of an open file (streamed, not read into memory)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        return self._exchange("PUT", path, file, headers, None, None)

    def download(self, path: str, target: str) -> tuple[int, Any]:
        """GET into the file `target` (written only on a 200); (status, error body)."""
        return self._exchange("GET", path, None, {}, None, target)

    def _exchange(
        self,
        method: str,
        path: str,
        data: Any,
        extra: dict[str, str],
        timeout_s: float | None,
        target: str | None,
    ) -> tuple[int, Any]:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._netloc, timeout=timeout_s or self.timeout_s)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **extra}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._open = conn
        try:
            conn.request(method, self._base + path, body=data, headers=headers)
            response = conn.getresponse()
            if target is not None and response.status == 200:
                with open(target, "wb") as f:
                    for chunk in iter(lambda: response.read(1024 * 1024), b""):
                        f.write(chunk)
                raw = b""
            else:
                raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Transient(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            self._open = None
            conn.close()
        if response.status >= 500:
            raise Transient(f"{method} {path}: the server answered {response.status}")
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None

    def request_unless(
        self, method: str, path: str, stop: Callable[[], bool], tick_s: float
    ) -> tuple[int, Any]:
        """`request` in a helper thread, cut short (`abort`) once `stop()` is true, which
        is looked at every `tick_s` (a signal handler aborts it at once). Cut short, it
        answers (204, None) unless the answer came first."""
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["answer"] = self.request(method, path)
            except Transient as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=send, name="poll", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(tick_s)
            if stop():
                self.abort()
                thread.join()
        if "error" in outcome and not stop():
            raise outcome["error"]
        answer: tuple[int, Any] = outcome.get("answer", (204, None))
        return answer

    def abort(self) -> None:
        """Cut an in-flight request short (from another thread): it raises `Transient`."""
        conn = self._open
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def message(answer: Any) -> str:
    """The server's error sentence, for the log."""
    if isinstance(answer, dict) and "message" in answer:
        return str(answer["message"])
    return "no details"
