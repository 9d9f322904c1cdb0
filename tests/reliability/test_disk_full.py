"""A full disk under a real server (a small tmpfs as its data dir): writes answer 503 and
change nothing, nothing acknowledged is lost, and it recovers when space returns."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import auth
from tests.helpers import API_KEY, ServerProcess, all_providers, register_body


def _mount(disk: Path, size: str, *options: str) -> subprocess.CompletedProcess[str]:
    opts = ",".join([*options, f"size={size}", "mode=0700"])
    argv = ["mount", "-t", "tmpfs", "-o", opts, "qubix-test", str(disk)]
    return subprocess.run(argv, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount(disk, "256k")
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_refuses_writes_loses_nothing_and_recovers(small_disk: Path) -> None:
    server = ServerProcess(small_disk / "data")
    server.log = small_disk.parent / "server.log"  # not on the small disk
    server.start()
    http = httpx.Client(base_url=server.url, timeout=10)
    acknowledged: dict[str, str] = {}
    refused: list[httpx.Response] = []
    try:
        for i in range(2000):
            answer = http.post("/api/providers/quick-register", json=register_body(f"w{i:04d}"))
            if answer.status_code == 201:
                acknowledged[f"w{i:04d}"] = answer.json()["workerToken"]
            else:
                refused.append(answer)
                if len(refused) == 5:
                    break
        assert len(acknowledged) > 50 and len(refused) == 5
        for answer in refused:
            assert answer.status_code == 503
            assert answer.json()["error"] == "storage_unavailable"
            assert "disk is full" in answer.json()["message"]
        refused_id = json.loads(refused[-1].request.content)["workerId"]
        assert http.get(f"/api/providers/{refused_id}").status_code == 404  # nothing half-done
        # A job larger than a registration: the space a refused registration left is too small.
        big = {"type": "command", "payload": {"argv": ["x" * 2000]}}
        job = http.post("/api/jobs", json=big, headers=auth(API_KEY))
        assert job.status_code == 503
        assert http.get("/api/jobs", headers=auth(API_KEY)).json()["total"] == 0
        # What needs no disk goes on: heartbeats, reads.
        some = next(iter(acknowledged))
        path = f"/api/providers/{some}/heartbeat"
        beat = http.post(path, json={"status": "online"}, headers=auth(acknowledged[some]))
        assert beat.status_code == 200
        assert len(all_providers(server.url)) == len(acknowledged)

        assert _mount(small_disk, "4m", "remount").returncode == 0  # space returns
        again = http.post("/api/providers/quick-register", json=register_body(refused_id))
        assert again.status_code == 201, again.text
        acknowledged[refused_id] = again.json()["workerToken"]
        job = http.post(
            "/api/jobs", json={"type": "sleep", "payload": {"seconds": 0}}, headers=auth(API_KEY)
        )
        assert job.status_code == 201

        server.stop()
        server.start()  # and everything acknowledged is still there
        listed = {p["workerId"] for p in all_providers(server.url)}
        assert listed == set(acknowledged)
        kept = http.get(f"/api/jobs/{job.json()['job']['id']}", headers=auth(API_KEY))
        assert kept.status_code == 200
    finally:
        http.close()
        server.stop()
    assert "Traceback" not in server.output()


def _upload(http: httpx.Client, size: int) -> httpx.Response:
    return http.post("/api/inputs", content=b"x" * size, headers=auth(API_KEY))


def test_an_upload_that_fills_the_disk_is_503_and_one_under_the_reserve_is_507(
    small_disk: Path,
) -> None:
    assert _mount(small_disk, "2m", "remount").returncode == 0
    data = small_disk / "data"
    for reserve in ("0", "1"):
        server = ServerProcess(data, 30.0, "--min-free-mb", reserve)
        server.log = small_disk.parent / f"server-{reserve}.log"  # not on the small disk
        server.start()
        http = httpx.Client(base_url=server.url, timeout=10)
        try:
            if reserve == "0":  # no reserve: the disk fills, and that is the storage's failure
                full = _upload(http, 3 * 2**20)
                assert full.status_code == 503, full.text
                assert full.json()["error"] == "storage_unavailable"
                assert "disk is full" in full.json()["message"]
            else:  # under the reserve: refused before a byte is written
                under = _upload(http, 1536 * 1024)
                assert under.status_code == 507, under.text
                assert under.json()["error"] == "insufficient_storage"
                assert _upload(http, 16 * 1024).status_code == 201  # above it, still fine
            assert not list(data.glob("blobs/.upload-*"))  # nothing half-written stays
            registered = http.post(
                "/api/providers/quick-register", json=register_body(f"w-{reserve}")
            )
            assert registered.status_code == 201, registered.text
            job = http.post(
                "/api/jobs",
                json={"type": "sleep", "payload": {"seconds": 0}},
                headers=auth(API_KEY),
            )
            assert job.status_code == 201, job.text
        finally:
            http.close()
            server.stop()
        assert "Traceback" not in server.output()
