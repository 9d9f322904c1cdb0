"""The worker's identity and credentials."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from qubix_cli.worker import state


def test_the_default_id_is_random_kept_on_disk_and_not_derived_from_the_mac(
    tmp_path: Path,
) -> None:
    """Anyone who knew a machine's MAC could register its id first (the id was its hash)."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = state.default_worker_id(str(tmp_path / "a"))
    assert first.startswith("qx-") and len(first) == 19
    assert state.default_worker_id(str(tmp_path / "a")) == first  # kept, across restarts
    assert (tmp_path / "a" / state.WORKER_ID_FILE).stat().st_mode & 0o777 == 0o600
    mac_hash = "qx-" + hashlib.sha256(uuid.getnode().to_bytes(6, "big")).hexdigest()[:16]
    assert first != mac_hash
    assert state.default_worker_id(str(tmp_path / "b")) != first  # another install: another id


def test_an_earlier_install_keeps_the_id_it_registered_under(tmp_path: Path) -> None:
    home = str(tmp_path)
    os.makedirs(home, exist_ok=True)
    state.save_credentials(home, "qx-0123456789abcdef", "http://s", "secret")
    assert state.default_worker_id(home) == "qx-0123456789abcdef"  # upgraded in place


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
