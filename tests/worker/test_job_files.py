"""Python jobs, inputs, outputs and logs: a real `qubix serve`, real worker processes in
the real sandbox, the real `qubix jobs` commands, and pip against the package index."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import API_KEY, ServerProcess, Worker, job, wait_for

SCRIPT = """
import os, sys, six
data = open(os.path.join(os.environ["QUBIX_INPUT"], "numbers.csv")).read()
total = sum(int(x) for x in data.split(","))
open(os.path.join(os.environ["QUBIX_OUTPUT"], "total.txt"), "w").write(str(total))
open(os.path.join(os.environ["QUBIX_OUTPUT"], "twice.csv"), "w").write(data * 2)
print("six", six.__version__, "cached", os.environ["QUBIX_ENV_CACHED"], *sys.argv[1:])
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path / "data", 0.5, "--allow-input-network", "127.0.0.0/8", "--max-output-mb", "1"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def worker(tmp_path: Path, server: ServerProcess) -> Iterator[Worker]:
    started = Worker(tmp_path, server.url, "w1")
    yield started
    started.proc.kill()
    started.proc.wait()


def qubix(server: ServerProcess, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"QUBIX_SERVER": server.url, "QUBIX_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "qubix_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=180,
        check=False,
    )


def shell_job(server: ServerProcess, script: str, cwd: Path) -> dict[str, Any]:
    """A `sh -c script` command job, submitted with the CLI and waited for."""
    command = ["--type", "command", "--argv", "/bin/sh", "--argv", "-c", "--argv", script]
    return submit_json(server, *command, cwd=cwd)


def submit_json(server: ServerProcess, *args: str, cwd: Path) -> dict[str, Any]:
    done = qubix(server, "jobs", "submit", *args, "--wait", "--json", cwd=cwd)
    assert done.stdout, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_a_python_job_with_a_pinned_requirement_reads_inputs_and_leaves_outputs(
    server: ServerProcess, worker: Worker, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(SCRIPT)
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    (tmp_path / "numbers.csv").write_text("1,2,3,4")
    args = ["--type", "python", "--script", "main.py", "--requirements", "requirements.txt"]
    args += ["--input", "numbers.csv", "--arg", "hello"]
    first = submit_json(server, *args, cwd=tmp_path)
    assert first["status"] == "completed", first
    assert first["result"]["stdoutTail"] == "six 1.16.0 cached 0 hello\n"
    assert first["metrics"]["sandbox"] == "bubblewrap"

    download = qubix(server, "jobs", "download", first["id"], "--dir", "out", cwd=tmp_path)
    assert download.returncode == 0, download.stdout + download.stderr
    total, twice = (tmp_path / "out" / "total.txt"), (tmp_path / "out" / "twice.csv")
    assert total.read_text() == "10" and twice.read_text() == "1,2,3,41,2,3,4"
    shas = {a["name"]: a["sha256"] for a in first["artifacts"]}
    assert shas == {
        "total.txt": hashlib.sha256(total.read_bytes()).hexdigest(),
        "twice.csv": hashlib.sha256(twice.read_bytes()).hexdigest(),
    }

    second = submit_json(server, *args, cwd=tmp_path)  # the same requirements: reused
    assert second["result"]["stdoutTail"] == "six 1.16.0 cached 1 hello\n"
    fresh, cached = first["metrics"]["durationS"], second["metrics"]["durationS"]
    print(f"python job: fresh environment {fresh:.2f} s, cached {cached:.2f} s")
    assert cached < fresh


def test_a_source_only_requirement_is_refused_with_its_reason(
    server: ServerProcess, worker: Worker, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text("print('never')\n")
    (tmp_path / "requirements.txt").write_text("pycrypto==2.6.1\n")  # an sdist, no wheel
    args = ["--type", "python", "--script", "main.py", "--requirements", "requirements.txt"]
    done = submit_json(server, *args, cwd=tmp_path)
    assert done["status"] == "failed"
    assert "source distributions are refused" in done["result"]["error"]
    assert "pycrypto" in done["result"]["error"]


def test_unpinned_or_url_requirements_are_refused_at_submission(
    server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text("print(1)\n")
    for text in ["six>=1.0\n", "six @ http://10.0.0.1/six.whl\n", "--index-url http://x\n"]:
        (tmp_path / "requirements.txt").write_text(text)
        args = ["--type", "python", "--script", "main.py", "--requirements", "requirements.txt"]
        done = qubix(server, "jobs", "submit", *args, cwd=tmp_path)
        assert done.returncode == 1 and "is not a pinned requirement" in done.stderr + done.stdout


@pytest.fixture
def files_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving `tmp_path/served`."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_inputs_from_a_url_are_checked_and_a_tampered_one_fails_before_the_run(
    server: ServerProcess, worker: Worker, tmp_path: Path, files_server: str
) -> None:
    (tmp_path / "served" / "data.txt").write_text("payload")
    good = hashlib.sha256(b"payload").hexdigest()
    cat = ["--type", "command", "--argv", "/bin/sh", "--argv", "-c"]
    cat += ["--argv", 'cat "$QUBIX_INPUT/data.txt"; touch "$QUBIX_OUTPUT/ran"']
    done = submit_json(server, *cat, "--input-url", f"{good}:{files_server}/data.txt", cwd=tmp_path)
    assert done["status"] == "completed" and done["result"]["stdoutTail"] == "payload"

    (tmp_path / "served" / "data.txt").write_text("tampered")
    done = submit_json(server, *cat, "--input-url", f"{good}:{files_server}/data.txt", cwd=tmp_path)
    assert done["status"] == "failed"
    assert f"not the {good} the renter gave" in done["result"]["error"]
    assert done["artifacts"] == []  # it never ran: no `ran` output


def test_a_tampered_upload_fails_the_job_before_it_runs(
    server: ServerProcess, worker: Worker, tmp_path: Path
) -> None:
    (tmp_path / "data.txt").write_text("original")
    sha = hashlib.sha256(b"original").hexdigest()
    worker.proc.kill()  # hold the job until the stored copy is damaged
    worker.proc.wait()
    args = ["--type", "command", "--argv", "/bin/cat", "--input", "data.txt"]
    submitted = qubix(server, "jobs", "submit", *args, "--json", cwd=tmp_path)
    job_id = json.loads(submitted.stdout)["id"]
    (server.data_dir / "blobs" / sha[:2] / sha).write_text("damaged!")
    restarted = Worker(tmp_path, server.url, "w2")
    try:
        # The worker's failure, free and retried until maxAttempts: a lone worker takes the
        # requeued job at its next poll.
        wait_for(lambda: job(server, job_id)["status"] == "failed", timeout=120)
        assert (
            "it was changed or damaged, so the job does not run"
            in job(server, job_id)["result"]["error"]
        )
    finally:
        restarted.proc.kill()
        restarted.proc.wait()


def test_an_output_that_is_a_symlink_uploads_nothing_and_says_so(
    server: ServerProcess, worker: Worker, tmp_path: Path
) -> None:
    secret = worker.home / "credentials.json"
    script = f'ln -s {secret} "$QUBIX_OUTPUT/id_rsa"; ln -s /etc/hostname "$QUBIX_OUTPUT/host"'
    script += '; mkdir "$QUBIX_OUTPUT/dir"; echo fine > "$QUBIX_OUTPUT/real.txt"'
    script += '; mkfifo "$QUBIX_OUTPUT/dir/pipe"'
    done = shell_job(server, script, tmp_path)
    assert done["status"] == "completed", done["result"]
    assert [a["name"] for a in done["artifacts"]] == ["real.txt"]
    skipped = {s["name"]: s["reason"] for s in done["result"]["outputs"]["skipped"]}
    assert skipped["id_rsa"] == skipped["host"] == "a symbolic link: not followed"
    assert skipped["dir/pipe"].startswith("not a regular file")


def test_an_output_over_the_cap_is_refused_and_the_rest_kept(
    server: ServerProcess, worker: Worker, tmp_path: Path
) -> None:
    script = 'head -c 2000000 /dev/zero > "$QUBIX_OUTPUT/big"; echo x > "$QUBIX_OUTPUT/small"'
    done = shell_job(server, script, tmp_path)
    assert [a["name"] for a in done["artifacts"]] == ["small"]
    (big,) = done["result"]["outputs"]["skipped"]
    assert big["name"] == "big" and "413" in big["reason"] and "1 MiB" in big["reason"]


def test_logs_of_a_job_printing_100000_lines_follow_live_with_head_and_tail(
    server: ServerProcess, worker: Worker, tmp_path: Path
) -> None:
    script = "import time\nfor i in range(100000): print('line', i)\ntime.sleep(1)\n"
    (tmp_path / "loud.py").write_text(script)
    submitted = qubix(
        server, "jobs", "submit", "--type", "python", "--script", "loud.py", "--json", cwd=tmp_path
    )
    job_id = json.loads(submitted.stdout)["id"]
    out_path, err_path = tmp_path / "follow.out", tmp_path / "follow.err"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        follow = subprocess.Popen(
            [sys.executable, "-m", "qubix_cli", "jobs", "logs", job_id, "--follow"],
            stdout=out_file,
            stderr=err_file,
            env={"QUBIX_SERVER": server.url, "QUBIX_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"},
        )
        worker_peak = 0
        while follow.poll() is None:
            worker_peak = max(worker_peak, psutil.Process(worker.proc.pid).memory_info().rss)
            time.sleep(0.05)
    out, err = out_path.read_text(), err_path.read_text()
    assert follow.returncode == 0, err
    assert out.startswith("line 0\nline 1\n")  # the head, live
    assert out.rstrip().endswith("line 99999")  # the tail, with the result
    done = job(server, job_id)
    assert done["status"] == "completed"
    dropped = done["log"]["droppedLines"]
    assert dropped > 0 and f"{dropped} lines were dropped" in err
    assert done["result"]["droppedLogLines"] >= dropped
    assert done["log"]["storedBytes"] <= 1024 * 1024  # what the coordinator keeps is capped
    assert worker_peak < 120 * 2**20  # the worker's buffers are bounded too


def test_urls_into_the_providers_network_are_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", 1.0).start()  # no networks allowed
    try:
        for url in [
            "http://127.0.0.1:9/x",
            "http://10.0.0.1/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data",
            "http://224.0.0.1/x",
        ]:
            body = {
                "type": "command",
                "payload": {"argv": ["true"]},
                "inputs": [{"name": "x", "sha256": "0" * 64, "url": url}],
            }
            answer = httpx.post(
                f"{server.url}/api/jobs", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
            )
            assert answer.status_code == 422, url
            assert "public addresses only" in answer.json()["message"], url
    finally:
        server.stop()


def test_the_worker_checks_the_address_again_when_it_fetches() -> None:
    from qubix_cli.worker.transfer import InputError, resolve_public

    for host in ["127.0.0.1", "10.0.0.1", "localhost", "::1"]:
        with pytest.raises(InputError, match="public addresses only"):
            resolve_public(host, 80)
    assert resolve_public("127.0.0.1", 80, ["127.0.0.0/8"]) == "127.0.0.1"
