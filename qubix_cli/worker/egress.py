"""The network of a job that asked for it: the public internet only, never the provider's
LAN, router, loopback services or a cloud's metadata address.

Such a job keeps an empty network namespace of its own (only `lo`), so no packet of its
reaches any network directly. Its one way out is an HTTP proxy: `forward` runs inside the
sandbox (the job's program is its child), listens on 127.0.0.1:PORT there and carries
each connection over a Unix socket, bound into the sandbox, to the worker's `Proxy`
outside. The proxy reads the request (`CONNECT host:port` for TLS and anything tunnelled,
or a plain `http://` request), resolves the name itself, refuses it unless every address
is public (the check URL inputs get: worker/transfer.py `resolve_public`), and connects
to the address it checked. HTTP_PROXY/HTTPS_PROXY/ALL_PROXY name it, which pip, curl,
wget, git, requests, httpx and urllib follow; a program that ignores them has no network.

This module is also the forwarder's own source (copied into the sandbox and run with the
sandbox's Python): standard library only, and nothing of Qubix imported.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Callable
from urllib.parse import urlsplit

PORT = 3128  # where the job's programs find the proxy, inside the sandbox
INSIDE = "/run/qubix"  # the proxy's directory, as the job sees it
SOCKET, SCRIPT = "egress.sock", "forward.py"
MAX_CONNECTIONS = 256  # open at once, per job
_HEAD_BYTES = 16 * 1024
_TIMEOUT_S = 30.0
Resolve = Callable[[str, int], str]  # (host, port) -> the address to connect to


def environment() -> dict[str, str]:
    """What tells a job's programs to use the proxy."""
    url = f"http://127.0.0.1:{PORT}"
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    return {**{n: url for n in names}, **{n.lower(): url for n in names}, "NO_PROXY": ""}


def command(python: str, argv: list[str]) -> list[str]:
    """The job's command line, run as the child of the forwarder in the sandbox."""
    return [python, "-I", "-S", f"{INSIDE}/{SCRIPT}", str(PORT), f"{INSIDE}/{SOCKET}", *argv]


class Proxy:
    """One job's proxy: a Unix socket in a directory of its own (bound into the sandbox
    at INSIDE, with the forwarder's script), served until `close`."""

    def __init__(self, resolve: Resolve) -> None:
        self.resolve = resolve
        self.dir = tempfile.mkdtemp(prefix="qubix-egress-")
        os.chmod(self.dir, 0o755)  # a root worker's job runs as another user
        with open(os.path.join(self.dir, SCRIPT), "w", encoding="utf-8") as f:
            f.write(_own_source())
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(self.dir, SOCKET)
        self._server.bind(path)
        os.chmod(path, 0o666)
        self._server.listen(64)
        self._open: list[socket.socket] = []
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, name="egress", daemon=True).start()

    def close(self) -> None:
        """Stop serving and cut every connection: the job's network ends with it."""
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        with self._guard:
            for conn in self._open:
                _shut(conn)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._guard:
                self._open[:] = [c for c in self._open if c.fileno() != -1]
                if len(self._open) >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(_TIMEOUT_S)
            head = _read_head(conn)
            method, host, port = _target(head)
            try:
                address = self.resolve(host, port)
            except Exception as exc:  # the resolver's reason (not public, unknown name)
                return _answer(conn, "403 Forbidden", f"qubix: {exc}")
            try:
                upstream = socket.create_connection((address, port), timeout=_TIMEOUT_S)
            except OSError as exc:
                return _answer(conn, "502 Bad Gateway", f"qubix: cannot reach {host}: {exc}")
            with self._guard:
                self._open.append(upstream)
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(head)
            conn.settimeout(None)
            upstream.settimeout(None)
            relay(conn, upstream)
        except (OSError, ValueError) as exc:
            try:
                _answer(conn, "400 Bad Request", f"qubix: {exc}")
            except OSError:
                pass
        finally:
            conn.close()


def _read_head(conn: socket.socket) -> bytes:
    """The request line and headers (and whatever came with them)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("the request ended before its headers did")
        data += chunk
        if len(data) > _HEAD_BYTES:
            raise ValueError("the request's headers are too long")
    return data


def _target(head: bytes) -> tuple[str, str, int]:
    """(method, host, port) of a proxy request: `CONNECT host:port` or an absolute
    `http://host[:port]/...` URL. ValueError for anything else."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError(f"not an HTTP request line: {line[:200]!r}")
    method, target = parts[0], parts[1]
    if method == "CONNECT":
        url = urlsplit(f"//{target}")
    elif target.lower().startswith("http://"):
        url = urlsplit(target)
    else:
        raise ValueError("only CONNECT host:port and http:// requests go through this proxy")
    port = url.port or (None if method == "CONNECT" else 80)  # ValueError: a bad port
    if not url.hostname or port is None:
        raise ValueError(f"no host and port in {target[:200]!r}")
    return method, url.hostname, port


def _answer(conn: socket.socket, status: str, reason: str) -> None:
    body = (reason + "\n").encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides are done."""

    def copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            for chunk in iter(lambda: source.recv(65536), b""):
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _shut(sink)
            _shut(source)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join()
    b.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _own_source() -> str:
    loader = globals().get("__loader__")
    source = loader.get_source(__name__) if loader is not None else None  # a zipapp too
    if source is None:
        with open(__file__, encoding="utf-8") as f:
            source = f.read()
    return str(source)


def forward(port: int, path: str, argv: list[str]) -> int:
    """In the sandbox: listen on 127.0.0.1:`port`, carry each connection to the proxy's
    socket at `path`, run `argv` and end as it ends (its exit code, or its signal)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_carry, args=(conn, path), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        print(f"cannot start {argv[0]!r}: {exc}", file=sys.stderr)
        return 127
    code = child.wait()
    if code < 0:  # killed by a signal: end the same way
        import signal

        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _carry(conn: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        conn.close()
        return
    relay(conn, upstream)
    conn.close()


if __name__ == "__main__":
    sys.exit(forward(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))
