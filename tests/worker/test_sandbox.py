"""Renters' code in the sandbox (real bubblewrap), with GPUs and concurrency: real worker
processes against a real `qubix serve`."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qubix_cli.worker import jobs, process, sandbox
from tests.helpers import ServerProcess, job, submit, wait_for
from tests.worker.fakes import nvidia

PYTHON = "/usr/bin/python3"  # the system's: a job sees the system, not the host's venvs


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory that is not under /tmp, where a provider's home and state dir may be."""
    path = Path(tempfile.mkdtemp(prefix="qubix-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def finished(server: ServerProcess, job_id: str, timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: job(server, job_id)["status"] in ("completed", "failed"), timeout=timeout)
    return job(server, job_id)


def command(server: ServerProcess, argv: list[str], **body: Any) -> str:
    payload = {"argv": argv, **body.pop("payload", {})}
    return submit(server, type="command", payload=payload, **body)


def sh(server: ServerProcess, script: str, **body: Any) -> str:
    return command(server, ["/bin/sh", "-c", script], **body)


def test_echo_ok_runs_in_the_sandbox(server: ServerProcess, workers: Any) -> None:
    """The positive control: a sandboxed job runs at all, and says where."""
    workers("w1")
    done = finished(server, command(server, ["echo", "ok"]))
    assert done["status"] == "completed", done
    assert done["result"]["stdoutTail"] == "ok\n"
    assert done["metrics"]["sandbox"] == "bubblewrap"
    provider = httpx.get(f"{server.url}/api/providers/w1").json()["provider"]
    assert provider["sandbox"] == "bubblewrap" and "command" in provider["capabilities"]


def test_a_job_sees_its_work_dir_and_nothing_of_the_worker(
    server: ServerProcess, workers: Any
) -> None:
    workers("w1")
    script = "import os; print(os.getcwd()); print(sorted(os.environ)); print('$HOME')"
    secret = {"payload": {"env": {"A": "1"}}, "requirements": {"minReputation": 0}}
    done = finished(server, command(server, [PYTHON, "-c", script], **secret))
    assert done["status"] == "completed", done
    cwd, env, literal = done["result"]["stdoutTail"].splitlines()
    assert cwd == "/job" and literal == "$HOME"  # argv is not given to a shell
    names = ["A", "CUDA_VISIBLE_DEVICES", "HOME", "LANG", "PATH", "PWD"]
    assert env == str([*names, "QUBIX_INPUT", "QUBIX_OUTPUT", "TMPDIR"])


def test_a_job_cannot_read_the_workers_token_or_the_providers_home(
    server: ServerProcess, workers: Any, outside_tmp: Path
) -> None:
    state_dir, host_home = outside_tmp / "state", outside_tmp / "alice"
    host_home.mkdir()
    (host_home / "notes.txt").write_text("private")
    workers("w1", home=state_dir, env={"HOME": str(host_home)})
    wait_for(lambda: (state_dir / "credentials.json").exists())
    token = json.loads((state_dir / "credentials.json").read_text())["token"]
    script = f"cat {state_dir}/credentials.json; cat {host_home}/notes.txt; ls {outside_tmp}"
    done = finished(server, sh(server, script))
    output = done["result"]["stdoutTail"] + done["result"]["stderrTail"]
    assert "No such file or directory" in output, done
    assert token not in output and "private" not in output


def test_a_job_cannot_write_outside_its_work_dir(
    server: ServerProcess, workers: Any, outside_tmp: Path
) -> None:
    state_dir, host_home = outside_tmp / "state", outside_tmp / "alice"
    host_home.mkdir()
    workers("w1", home=state_dir, env={"HOME": str(host_home)})
    mark = f"escaped-{random.getrandbits(32):x}"
    targets = [Path("/tmp") / mark, state_dir / mark, host_home / mark, outside_tmp / mark]
    script = "; ".join(f"echo x > {t}" for t in targets) + "; echo x > mine; cat mine"
    done = finished(server, sh(server, script))
    assert done["result"]["stdoutTail"] == "x\n", done  # its own work dir is writable
    assert [t for t in targets if t.exists()] == []


def _leftovers(mark: str) -> list[str]:
    """The command lines of the processes on this machine that name `mark`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if mark.encode() in cmdline:
            found.append(cmdline.decode(errors="replace").replace("\0", " ").strip())
    return found


def test_a_timeout_leaves_no_process_behind_even_detached_ones(
    server: ServerProcess, workers: Any
) -> None:
    workers("w1")
    mark = f"{random.randint(1000, 9999)}.{random.randint(1000, 9999)}"
    script = (
        f"setsid sh -c 'sleep {mark}1 &'; (sleep {mark}2 &); yes | head -c 200000; sleep {mark}3"
    )
    job_id = sh(server, script, timeoutS=2)
    sleeps = {f"sleep {mark}{n}" for n in (1, 2, 3)}
    wait_for(lambda: sleeps <= set(_leftovers(mark)), timeout=20)  # all three were running
    done = finished(server, job_id)
    assert "timed out" in done["result"]["error"]
    assert len(done["result"]["stdoutTail"]) == process.TAIL_BYTES  # the output is capped
    wait_for(lambda: _leftovers(mark) == [], timeout=5)


def test_a_job_that_ends_takes_its_detached_children_with_it(
    server: ServerProcess, workers: Any
) -> None:
    workers("w1")
    mark = f"{random.randint(1000, 9999)}.{random.randint(1000, 9999)}"
    done = finished(server, sh(server, f"setsid sh -c 'sleep {mark} &'; echo left"))
    assert done["status"] == "completed"
    wait_for(lambda: _leftovers(mark) == [], timeout=5)


def test_four_gpus_run_four_one_gpu_jobs_at_once_and_a_fifth_waits(
    server: ServerProcess, workers: Any, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "a40"
    nvidia(bin_dir, "nvidia-smi-4xA40.csv", usage="nvidia-smi-usage-4gpu.csv")
    script = "echo $CUDA_VISIBLE_DEVICES; sleep 3"
    ids = [sh(server, script, requirements={"gpus": 1}) for _ in range(5)]
    workers("a40", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})

    def states() -> list[str]:
        return [job(server, i)["status"] for i in ids]

    def provider() -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{server.url}/api/providers/a40").json()["provider"]
        return answer

    wait_for(lambda: states() == ["assigned"] * 4 + ["queued"], timeout=20)
    assert provider()["concurrency"] == 4
    assert [g["model"] for g in provider()["gpus"]] == ["NVIDIA A40"] * 4
    wait_for(lambda: len(provider()["currentJobIds"]) == 4)
    usage = provider()["usage"]
    assert usage["gpus"][0] == {"index": 0, "percent": 87, "memUsedMb": 30112, "tempC": 71}
    assert usage["gpus"][2] == {"index": 2, "memUsedMb": 2, "tempC": 35}  # [N/A] left out
    done = [finished(server, i, timeout=40) for i in ids]
    assert [d["status"] for d in done] == ["completed"] * 5
    seen = sorted((d["result"]["stdoutTail"], d["metrics"]["gpus"]) for d in done[:4])
    assert seen == [("0\n", [0]), ("1\n", [1]), ("2\n", [2]), ("3\n", [3])]


def test_without_bwrap_user_jobs_need_allow_unsandboxed(
    server: ServerProcess, workers: Any, tmp_path: Path
) -> None:
    no_bwrap = tmp_path / "no-bwrap"
    nvidia(no_bwrap, "nvidia-smi-2gpu.csv")
    env = {"PATH": str(no_bwrap)}  # the fake nvidia-smi, and no bwrap
    waiting = command(server, ["/bin/echo", "ran"])
    refusing = workers("refusing", "--burst", env=env)
    assert refusing.wait() == 0
    provider = httpx.get(f"{server.url}/api/providers/refusing").json()["provider"]
    assert provider["sandbox"] == "none" and "command" not in provider["capabilities"]
    assert job(server, waiting)["status"] == "queued"  # dispatch did not send it there

    needs_sandbox = command(server, ["/bin/echo", "ran"], requirements={"sandbox": True})
    unsandboxed = workers("open", "--allow-unsandboxed", "--burst", env=env)
    assert unsandboxed.wait() == 0
    done = job(server, waiting)
    assert done["status"] == "completed" and done["result"]["stdoutTail"] == "ran\n"
    assert done["metrics"]["sandbox"] == "none"
    assert job(server, needs_sandbox)["status"] == "queued"


def test_no_user_jobs_refuses_them_even_with_a_sandbox(server: ServerProcess, workers: Any) -> None:
    waiting = command(server, ["/bin/echo", "ran"])
    worker = workers("careful", "--no-user-jobs", "--burst")
    assert worker.wait() == 0
    provider = httpx.get(f"{server.url}/api/providers/careful").json()["provider"]
    assert "command" not in provider["capabilities"]
    assert job(server, waiting)["status"] == "queued"


def test_the_assigned_gpus_device_nodes_are_bound_in_and_no_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (dev / name).write_text("")
    monkeypatch.setattr(sandbox, "DEV", str(dev))
    gpus = [{"vendor": "nvidia", "model": "NVIDIA A40", "vramMb": 46068}] * 4
    job_doc = {
        "id": "job_1",
        "type": "command",
        "payload": {"argv": ["/bin/sh", "-c", "ls /dev | grep nvidia; echo $CUDA_VISIBLE_DEVICES"]},
        "requirements": {"gpus": 1},
    }
    run = jobs.Run(job_doc, lambda: False, gpus=gpus, assigned=[2])
    status, result, _ = jobs.run_job(run)
    assert status == "completed", result
    assert result["stdoutTail"].split() == ["nvidia-uvm", "nvidia2", "nvidiactl", "2"]


def test_a_sandbox_that_cannot_be_set_up_is_the_workers_failure_not_the_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bwrap failing before the program starts (here a bind source the worker lost: a
    Python it removed, say) once failed the job as the job's own doing, charged to the
    renter. The job never ran: it is the worker's failure, and the job's next attempt."""
    gone = tmp_path / "gone-python"
    monkeypatch.setattr(sandbox, "python_binds", lambda: [(str(gone), str(gone))])
    job_doc = {"id": "job_1", "type": "python", "payload": {"script": "print('ran')"}}
    status, result, _ = jobs.run_job(jobs.Run(job_doc, lambda: False))
    assert status == "failed" and result["failedBy"] == "worker", result
    assert "the sandbox could not start the job" in result["error"], result
    assert "gone-python" in result["error"]
    # A program of the job's that does not exist is still the job's own failure.
    job_doc = {"id": "job_2", "type": "command", "payload": {"argv": ["/no/such/program"]}}
    status, result, _ = jobs.run_job(jobs.Run(job_doc, lambda: False))
    assert status == "failed" and result["failedBy"] == "job", result


def test_a_worker_refuses_a_user_job_it_cannot_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "available", lambda: False)
    job_doc = {"id": "job_1", "type": "command", "payload": {"argv": ["/bin/true"]}}
    status, result, _ = jobs.run_job(jobs.Run(job_doc, lambda: False))
    assert status == "failed"
    assert result == {"error": "this worker does not run 'command'", "failedBy": "worker"}
    allowed = jobs.Policy(allow_unsandboxed=True)
    assert jobs.run_job(jobs.Run(job_doc, lambda: False, policy=allowed))[0] == "completed"


def test_the_benchmark_says_it_measured_the_cpu() -> None:
    job_doc = {"id": "job_1", "type": "benchmark", "payload": {"seconds": 0.1}}
    status, result, _ = jobs.run_job(jobs.Run(job_doc, lambda: False))
    assert status == "completed" and result["measured"] == "cpu" and result["engine"] == "none"
    assert result["cpuScore"] > 0


def test_a_socket_probe_of_the_test_itself() -> None:
    """The network test above means something only if the port is reachable from here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        socket.create_connection(s.getsockname(), timeout=2).close()
