"""A damaged data file at start: `qubix serve` stops with a message naming it, and keeps it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import API_KEY, ServerProcess, all_providers, register_body


def _data_dir_with_a_snapshot_and_a_journal(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    for i in range(30):
        body = register_body(f"w{i}")
        assert (
            httpx.post(server.url + "/api/providers/quick-register", json=body).status_code == 201
        )
    server.stop()
    # Fold the journal into a snapshot, as the server does once the journal outgrows it,
    # then add journal lines after it.
    from qubix_cli.server.store import JournalStore

    store = JournalStore(data)
    store.compact()
    asyncio.run(store.close())
    server.start()
    for i in range(30, 40):
        body = register_body(f"w{i}")
        assert (
            httpx.post(server.url + "/api/providers/quick-register", json=body).status_code == 201
        )
    server.kill()
    assert (data / "qubix.json").stat().st_size > 1000
    return data


def _journal(data: Path) -> Path:
    return max(data.glob("journal-*.jsonl"))


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_a_middle_line(path: Path) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3][:20] + b"\x00garbage" + lines[3][20:]
    path.write_bytes(b"\n".join(lines))


DAMAGE: dict[str, tuple[Callable[[Path], Path], Callable[[Path], None], str]] = {
    "snapshot cut in half": (lambda d: d / "qubix.json", _cut_in_half, "qubix.json is damaged"),
    "snapshot emptied": (lambda d: d / "qubix.json", lambda p: p.write_bytes(b""), "damaged"),
    "snapshot of another shape": (
        lambda d: d / "qubix.json",
        lambda p: p.write_text('{"providers": {"1": 5}}'),
        "providers entry 1 has no workerId",
    ),
    "snapshot that is not JSON text": (
        lambda d: d / "qubix.json",
        lambda p: p.write_bytes(b"\xff\xfe\x00\x01" * 100),
        "qubix.json is damaged",
    ),
    "journal line garbled in the middle": (_journal, _garble_a_middle_line, "damaged at line 4"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_stops_the_server_naming_it_and_is_kept(tmp_path: Path, damage: str) -> None:
    data = _data_dir_with_a_snapshot_and_a_journal(tmp_path)
    pick, harm, message = DAMAGE[damage]
    target = pick(data)
    harm(target)
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    argv = [sys.executable, "-m", "qubix_cli", "serve", "--port", "0", "--data-dir", str(data)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "QUBIX_API_KEY": API_KEY},
    )
    assert done.returncode != 0
    assert message in done.stderr and str(target) in done.stderr  # the path, unbroken
    assert "Traceback" not in done.stderr
    after = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert after == before  # nothing rewritten, nothing emptied, nothing deleted


def test_the_undamaged_data_dir_loads_every_provider(tmp_path: Path) -> None:
    data = _data_dir_with_a_snapshot_and_a_journal(tmp_path)
    server = ServerProcess(data).start()
    try:
        ids = {p["workerId"] for p in all_providers(server.url)}
        assert ids == {f"w{i}" for i in range(40)}
    finally:
        server.stop()
