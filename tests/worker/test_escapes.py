"""Attacks from a renter's job on the provider's machine, with the zipapp the installers
ship run as an unprivileged provider (as a provider runs it), real bubblewrap and real
uploads to a real `qubix serve`."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qubix_cli.installer.pack import build_worker_pyz
from tests.helpers import ServerProcess, job, submit, wait_for

PROVIDER = "qubixprovider"  # the provider's own user when the suite runs as root


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A provider's home outside /tmp with a worker token and an SSH key to steal, the
    zipapp in it, and the user that runs it (None: this one, when not root)."""
    home = Path(tempfile.mkdtemp(prefix="qubix-provider-", dir="/var/tmp"))
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY----- stolen?\n")
    (home / "qubix_worker.pyz").write_bytes(build_worker_pyz())
    user = None
    if os.geteuid() == 0:
        user = PROVIDER
        try:
            pwd.getpwnam(PROVIDER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PROVIDER], check=True)
        os.chmod(home, 0o700)
        subprocess.run(["chown", "-R", f"{PROVIDER}:", str(home)], check=True)
    yield {"home": home, "user": user, "pyz": home / "qubix_worker.pyz"}
    shutil.rmtree(home, ignore_errors=True)


def start_provider(workers: Any, provider: dict[str, Any]) -> Path:
    home = provider["home"]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    workers("w1", pyz=provider["pyz"], home=home / ".qubix", env=env, user=provider["user"])
    credentials = home / ".qubix" / "credentials.json"
    wait_for(credentials.exists)
    return credentials


def finished(server: ServerProcess, job_id: str) -> dict[str, Any]:
    wait_for(lambda: job(server, job_id)["status"] in ("completed", "failed"), timeout=40)
    return job(server, job_id)


def sh(server: ServerProcess, script: str) -> str:
    return submit(server, type="command", payload={"argv": ["/bin/sh", "-c", script]})


def test_an_output_dir_replaced_by_a_link_uploads_nothing(
    server: ServerProcess, workers: Any, provider: dict[str, Any]
) -> None:
    token = json.loads(start_provider(workers, provider).read_text())["token"]
    home = provider["home"]
    done = finished(server, sh(server, f"rm -rf /job/output && ln -s {home}/.qubix /job/output"))
    assert done["artifacts"] == [], done["artifacts"]  # no credentials.json, no worker.log
    (skipped,) = done["result"]["outputs"]["skipped"]
    assert skipped["name"] == "." and "not a real directory" in skipped["reason"]
    assert token not in json.dumps(done)


def test_outputs_keep_their_subdirectories_and_no_link_inside_is_followed(
    server: ServerProcess, workers: Any, provider: dict[str, Any]
) -> None:
    start_provider(workers, provider)
    home = provider["home"]
    script = (
        "cd /job/output && mkdir -p sub/deeper && echo x > sub/x.txt && echo y > sub/deeper/y"
        f" && ln -s {home}/.ssh sub/keys && ln -s {home}/.ssh/id_rsa key && mkfifo sub/pipe"
        " && ln -s /job/output/sub loop"
    )
    done = finished(server, sh(server, script))
    assert done["status"] == "completed", done
    assert sorted(a["name"] for a in done["artifacts"]) == ["sub/deeper/y", "sub/x.txt"]
    reasons = {s["name"]: s["reason"] for s in done["result"]["outputs"]["skipped"]}
    assert set(reasons) == {"key", "loop", "sub/keys", "sub/pipe"}
    assert "not followed" in reasons["sub/keys"] and "not a regular file" in reasons["sub/pipe"]
    assert "stolen" not in json.dumps(done)


def _bwraps() -> list[dict[str, Any]]:
    """The bubblewrap processes on this machine: their environment, command line and
    working directory on the host."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "bwrap":
                continue
            found.append(
                {
                    "environ": Path(f"/proc/{pid}/environ").read_bytes(),
                    "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes(),
                    "cwd": os.readlink(f"/proc/{pid}/cwd"),
                }
            )
        except OSError:
            continue
    return found


def test_the_jobs_environment_reaches_only_the_sandboxed_program(
    server: ServerProcess, workers: Any, provider: dict[str, Any]
) -> None:
    """`LD_PRELOAD` in a job's env once ran the renter's library in bwrap itself, on the
    host: no variable of the job's is in a host process's environment or command line,
    and bwrap runs in a directory the job cannot write."""
    start_provider(workers, provider)
    secret = f"s3cret-{os.urandom(4).hex()}"
    env = {"HF_TOKEN": secret, "LD_PRELOAD": "/job/input/evil.so"}
    argv = ["/bin/sh", "-c", 'echo "$HF_TOKEN"; sleep 3']
    payload, anyone = {"argv": argv, "env": env}, {"minReputation": 0}  # env: a new worker too
    job_id = submit(server, type="command", payload=payload, requirements=anyone)
    running = wait_for(_bwraps, timeout=30, step=0.01)
    for process in running:
        assert secret.encode() not in process["environ"] + process["cmdline"]
        assert b"LD_PRELOAD" not in process["environ"] and "qubix-job-" not in process["cwd"]
    done = finished(server, job_id)
    assert done["result"]["stdoutTail"].startswith(f"{secret}\n"), done["result"]


# What of /etc a job must never see, and some of what programs need from it.
SECRET_ETC = ("shadow", "gshadow", "ssh", "sudoers", "sudoers.d", "machine-id")
NEEDED_ETC = ("passwd", "group", "hosts", "ld.so.cache", "ssl")
LOOK_AT_ETC = "for f in {}; do [ -e /etc/$f ] && echo seen:$f; done; true".format(
    " ".join(SECRET_ETC + NEEDED_ETC)
)


def _seen_in_etc(done: dict[str, Any]) -> set[str]:
    assert done["status"] == "completed", done
    out = done["result"]["stdoutTail"]
    return {line[5:] for line in out.splitlines() if line.startswith("seen:")}


def test_a_job_sees_only_the_parts_of_etc_that_programs_need(
    server: ServerProcess, workers: Any, provider: dict[str, Any]
) -> None:
    """As the provider runs it (the zipapp, an unprivileged user): /etc was bound whole,
    with its SSH host keys and, for a root worker, /etc/shadow."""
    start_provider(workers, provider)
    seen = _seen_in_etc(finished(server, sh(server, LOOK_AT_ETC)))
    assert seen == {name for name in NEEDED_ETC if os.path.exists(f"/etc/{name}")}


def _uids_of(marker: str) -> set[int]:
    """The host uids of the processes whose command line holds `marker`."""
    uids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                status = Path(f"/proc/{pid}/status").read_text()
                uids.add(
                    int(
                        next(
                            line for line in status.splitlines() if line.startswith("Uid:")
                        ).split()[1]
                    )
                )
        except OSError:
            continue
    return uids


@pytest.mark.skipif(os.geteuid() != 0, reason="a worker that runs as root")
def test_a_root_worker_runs_jobs_as_an_unprivileged_host_user(
    server: ServerProcess, workers: Any
) -> None:
    """A root worker's job ran as uid 0 in a namespace mapping 0 to 0: root on the host,
    with every file's reach. Now its processes have the job user's uid on the host, no
    groups, and the same part of /etc."""
    workers("w1")  # as root, as the suite runs
    marker = f"qubix-mark-{os.urandom(4).hex()}"
    script = f"id -G; touch /job/output/made; {LOOK_AT_ETC}; exec sleep 3 # {marker}"
    job_id = sh(server, script)
    uids = wait_for(lambda: _uids_of(marker), timeout=30, step=0.01)
    job_user = pwd.getpwnam("qubix-job")
    assert uids == {job_user.pw_uid}, uids
    done = finished(server, job_id)
    assert _seen_in_etc(done) == {n for n in NEEDED_ETC if os.path.exists(f"/etc/{n}")}
    assert [a["name"] for a in done["artifacts"]] == ["made"]  # its own dir is writable
    assert done["result"]["stdoutTail"].split()[0] != "0"  # not in root's group either
