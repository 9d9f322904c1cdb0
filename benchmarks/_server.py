"""Shared by the benchmarks: a real `qubix serve` on a free loopback port, and its figures."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from qubix_cli.demo import free_port
from qubix_cli.qubic import identity_from_public_key

API_KEY = "benchmark-key"
ADDRESS = identity_from_public_key(bytes(32))


class Server:
    """`qubix serve` with `options`; replicas of one coordinator share `data_dir`."""

    def __init__(
        self, heartbeat_interval_s: float = 30.0, *options: str, data_dir: Path | None = None
    ) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="qubix-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "qubix_cli", "serve", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir / "data")]
        argv += ["--heartbeat-interval", str(heartbeat_interval_s)]
        # A simulated fleet registers from one address: the per-IP limits are lifted.
        argv += ["--max-registrations-per-minute", "0", "--max-providers-per-ip", "0"]
        argv += options
        env = {**os.environ, "QUBIX_API_KEY": API_KEY}
        log = open(self.data_dir / f"server-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def register_body(worker_id: str) -> dict[str, Any]:
    return {
        "type": "native",
        "workerId": worker_id,
        "qubicAddress": ADDRESS,
        "cpu": {"model": "AMD Ryzen 9 7950X 16-Core Processor", "cores": 16, "threads": 32},
        "ramMb": 65536,
        "gpus": [{"vendor": "nvidia", "model": "NVIDIA GeForce RTX 4090", "vramMb": 24564}],
        "capabilities": ["benchmark", "sleep"],
        "agentVersion": "0.1.0",
    }


class Connection:
    """A minimal HTTP/1.1 keep-alive client: httpx's async client costs more CPU per request
    than the server does, and would measure itself instead of the server."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        try:
            return await self._request(method, path, body, token)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()  # the server closed an idle keep-alive connection: once more
            return await self._request(method, path, body, token)

    async def _request(
        self, method: str, path: str, body: Any, token: str | None
    ) -> tuple[int, Any]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(data)}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + data)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length) if length else b""
        return status, json.loads(payload) if payload else None

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    def reset(self) -> None:
        """Close with a reset (SO_LINGER 0) instead of a FIN: a simulator that opens
        thousands of connections a second would otherwise fill the loopback port range
        with its TIME_WAIT sockets."""
        if self._streams is not None:
            sock = self._streams[1].get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()


async def register_many(
    url: str, count: int, concurrency: int = 32
) -> tuple[dict[str, str], list[float]]:
    """Register `count` providers; return their tokens and the seconds per batch of 1,000."""
    tokens: dict[str, str] = {}
    batch_s: list[float] = []
    ids = iter(range(count))

    async def client(conn: Connection, stop: int) -> None:
        for i in ids:
            worker_id = f"w{i:06d}"
            status, answer = await conn.request(
                "POST", "/api/providers/quick-register", register_body(worker_id)
            )
            if status != 201:
                raise RuntimeError(f"registration answered {status}: {answer}")
            tokens[worker_id] = answer["workerToken"]
            if i + 1 >= stop:
                return

    conns = [Connection(url) for _ in range(concurrency)]
    for stop in range(1000, count + 1000, 1000):
        started = time.perf_counter()
        await asyncio.gather(*(client(c, min(stop, count)) for c in conns))
        batch_s.append(time.perf_counter() - started)
    for c in conns:
        c.close()
    return tokens, batch_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
