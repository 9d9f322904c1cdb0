"""The worker's identity and credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qubix_cli.worker import state


def test_the_default_id_is_a_hash_of_a_real_mac(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(state.uuid, "getnode", lambda: 0x0242AC110002)
    first = state.default_worker_id(str(tmp_path))
    assert first.startswith("qx-") and len(first) == 19
    assert state.default_worker_id(str(tmp_path)) == first
    assert not (tmp_path / state.WORKER_ID_FILE).exists()


def test_a_made_up_mac_gives_a_generated_id_kept_on_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    macs = iter([0x010000000001, 0x030000000002])  # multicast bit set: random each call
    monkeypatch.setattr(state.uuid, "getnode", lambda: next(macs))
    first = state.default_worker_id(str(tmp_path))
    assert state.default_worker_id(str(tmp_path)) == first
    assert (tmp_path / state.WORKER_ID_FILE).stat().st_mode & 0o777 == 0o600


def test_credentials_are_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUBIX_HOME", str(tmp_path / "home"))
    home = state.home()
    assert os.stat(home).st_mode & 0o777 == 0o700
    state.save_credentials(home, "w1", "http://s", "secret")
    path = Path(home) / state.CREDENTIALS
    assert path.stat().st_mode & 0o777 == 0o600
    assert state.load_credentials(home) == {
        "workerId": "w1",
        "server": "http://s",
        "token": "secret",
    }
    path.write_text("{torn")
    assert state.load_credentials(home) is None
