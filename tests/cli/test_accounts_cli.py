"""`qubix accounts`, `qubix keys` and `qubix login`, run as real processes against a real
`qubix serve`, with a config directory of their own."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import httpx

from tests.cli.test_watch import qubix as run_qubix
from tests.helpers import API_KEY, ServerProcess, register_body


def qubix(home: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with a config dir of its own (and `key` as QUBIX_API_KEY, if given)."""
    return run_qubix(home, *args, **({"QUBIX_API_KEY": key} if key else {}))


def test_an_operator_makes_a_renter_who_logs_in_and_works_without_flags(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        url = server.url
        create = ["accounts", "create", "alice", "--server", url, "--json"]
        made = qubix(tmp_path, *create, key=API_KEY)
        assert made.returncode == 0, made.stderr
        alice = json.loads(made.stdout)["apiKey"]
        assert alice.startswith("qbx_")
        quota = ["accounts", "quota", "alice", "--max-queued", "1", "--server", url]
        assert qubix(tmp_path, *quota, key=API_KEY).returncode == 0
        credit = qubix(tmp_path, "accounts", "credit", "alice", "2.5", "--server", url, key=API_KEY)
        assert "balance 2.5, held for open jobs 0" in credit.stdout

        logged = qubix(tmp_path, "login", "--server", url, "--api-key", alice)
        assert logged.returncode == 0, logged.stderr
        assert f"logged in to {url} as account alice (renter)" in logged.stdout
        config = tmp_path / "config" / "qubix" / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert json.loads(config.read_text())["keys"][url] == alice

        # no --server, no --api-key: the stored ones
        shown = qubix(tmp_path, "accounts", "show")
        assert shown.returncode == 0 and "account alice (renter)" in shown.stdout
        dear = qubix(tmp_path, "jobs", "submit", "--type", "sleep", "--seconds", "0")
        assert dear.returncode == 1 and "402" in dear.stderr and "may cost up to" in dear.stderr
        submit = ["jobs", "submit", "--type", "sleep", "--seconds", "0", "--max-price", "0"]
        first = qubix(tmp_path, *submit)
        assert first.returncode == 0, first.stderr
        second = qubix(tmp_path, *submit)
        assert second.returncode == 1
        assert "429" in second.stderr and "maxQueued is 1" in second.stderr

        refused = qubix(tmp_path, "accounts", "list")
        assert refused.returncode == 1 and "only an operator may do this" in refused.stderr

        ci = json.loads(qubix(tmp_path, "keys", "create", "--name", "ci", "--json").stdout)
        listed = qubix(tmp_path, "keys", "list")
        assert ci["key"]["id"] in listed.stdout and ci["apiKey"] not in listed.stdout
        revoked = qubix(tmp_path, "keys", "revoke", ci["key"]["id"])
        assert "is revoked" in revoked.stdout
        after = qubix(tmp_path, "accounts", "show", key=ci["apiKey"])
        assert after.returncode == 1 and "401" in after.stderr and "revoked" in after.stderr
        listed = json.loads(qubix(tmp_path, "accounts", "list", "--json", key=API_KEY).stdout)
        assert [a["name"] for a in listed] == ["operator", "alice"]

        # a worker runs the queued job at 3.6 an hour: the address earns, the CSV says so
        address = register_body()["qubicAddress"]
        body = register_body("w1", capabilities=["sleep"], pricePerHour=3.6)
        token = httpx.post(f"{url}/api/providers/quick-register", json=body).json()["workerToken"]
        headers = {"Authorization": f"Bearer {token}"}
        job = {"type": "sleep", "payload": {"seconds": 0}, "requirements": {"maxPricePerHour": 4}}
        operator = {"Authorization": f"Bearer {API_KEY}"}
        assert httpx.post(f"{url}/api/jobs", json=job, headers=operator).status_code == 201
        leased = httpx.get(f"{url}/api/jobs/pending/w1", headers=headers).json()
        assert leased["job"]["pricePerHour"] == 3.6  # alice's free job is not for this worker
        report = {"attempt": 1, "status": "completed", "result": {}}
        done = httpx.post(
            f"{url}/api/jobs/{leased['job']['id']}/complete", json=report, headers=headers
        )
        assert done.status_code == 200
        shown = qubix(tmp_path, "earnings", address, "--server", url)
        assert "all time" in shown.stdout and "from 1 job(s)" in shown.stdout
        refused = qubix(tmp_path, "earnings", address, "--csv")  # alice is not an operator
        assert refused.returncode == 1 and "the key used is neither" in refused.stderr
        lines = qubix(tmp_path, "earnings", address, "--csv", "--since", "2020-01-01", key=API_KEY)
        header, line = lines.stdout.splitlines()
        assert header == "at,kind,jobId,workerId,account,pricePerHour,seconds,amount"
        assert f",charge,{leased['job']['id']},w1,operator,3.6," in line
        bad = qubix(tmp_path, "earnings", address, "--since", "yesterday")
        assert bad.returncode == 2 and "is not a day" in bad.stderr

        # what a newcomer tripped on
        for odd in ("nan", "1e309", "0"):
            wrong = qubix(tmp_path, "accounts", "credit", "alice", odd, key=API_KEY)
            assert wrong.returncode == 2 and "give a finite amount" in wrong.stderr
            assert "Traceback" not in wrong.stderr
        back = qubix(tmp_path, "accounts", "credit", "alice", "--", "-0.5", key=API_KEY)
        assert "balance 2, held for open jobs 0" in back.stdout
        big = qubix(tmp_path, "accounts", "credit", "alice", "1234567.123456", key=API_KEY)
        assert "balance 1,234,569.123456" in big.stdout  # no exponent
        both = ["accounts", "quota", "alice", "--max-queued", "3", "--no-limit", "max-queued"]
        assert qubix(tmp_path, *both, key=API_KEY).returncode == 2
        nope = qubix(tmp_path, "login", "--server", url, "--api-key", "qbx_not-a-key")
        assert nope.returncode == 1 and "does not know this key" in nope.stderr
        assert "qubix login)" not in nope.stderr
    finally:
        server.stop()
