"""Connections held open: long-polls do not starve other requests, and slow or silent
clients (slowloris) are disconnected."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx

from qubix_cli.server.protocol import REQUEST_READ_TIMEOUT_S
from qubix_cli.server.routes import LONG_POLLS_PER_IP
from tests.conftest import auth
from tests.helpers import ServerProcess, register_body

LONG_POLLS = 1000


async def _long_poll(
    port: int, n: int, started: asyncio.Event, opened: list[int]
) -> dict[str, object]:
    # From many loopback addresses, as many clients would be (each may hold 32 at once).
    source = f"127.0.{n // LONG_POLLS_PER_IP}.{2 + n % LONG_POLLS_PER_IP}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    path = "/api/providers/check-new?workerId=late&wait=60"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    opened.append(1)
    if len(opened) == LONG_POLLS:
        started.set()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    answer: dict[str, object] = json.loads(await reader.readexactly(length))
    writer.close()
    return answer


def test_a_thousand_long_polls_do_not_starve_other_requests(server: ServerProcess) -> None:
    async def scenario() -> None:
        started, opened = asyncio.Event(), []
        polls = [
            asyncio.create_task(_long_poll(server.port, n, started, opened))
            for n in range(LONG_POLLS)
        ]
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.5)  # all of them are waiting in the server now
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            first = await http.post("/api/providers/quick-register", json=register_body("other"))
            assert first.status_code == 201
            beat = await http.post(
                "/api/providers/other/heartbeat",
                json={"status": "online"},
                headers=auth(first.json()["workerToken"]),
            )
            assert beat.status_code == 200
            assert not any(p.done() for p in polls)  # none of them was answered by these
            late = await http.post("/api/providers/quick-register", json=register_body("late"))
            assert late.status_code == 201
        answers = await asyncio.wait_for(asyncio.gather(*polls), 30)  # each woken by it
        assert all([p["workerId"] for p in a["providers"]] == ["late"] for a in answers)  # type: ignore[index,union-attr]

    asyncio.run(scenario())


def _probe(port: int, sends: bytes, closed_after: dict[str, float], name: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        s.sendall(sends)
        s.settimeout(REQUEST_READ_TIMEOUT_S + 15)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        closed_after[name] = time.monotonic() - started


def test_silent_and_slow_clients_are_disconnected(server: ServerProcess) -> None:
    probes = {
        "silent": b"",
        "head sent slowly": b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        "body sent slowly": (
            b"POST /api/providers/quick-register HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 900\r\n\r\n{"type": '
        ),
    }
    closed_after: dict[str, float] = {}
    threads = [
        threading.Thread(target=_probe, args=(server.port, sends, closed_after, name))
        for name, sends in probes.items()
    ]
    for t in threads:
        t.start()
    time.sleep(1)
    assert httpx.get(server.url + "/healthz").status_code == 200  # others are served meanwhile
    for t in threads:
        t.join()
    assert set(closed_after) == set(probes)
    for name, seconds in closed_after.items():
        assert REQUEST_READ_TIMEOUT_S - 1 < seconds < REQUEST_READ_TIMEOUT_S + 5, (name, seconds)
    assert "Traceback" not in server.output()
