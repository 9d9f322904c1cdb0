"""A real PostgreSQL cluster for the tests: Debian's server binaries, `initdb` and `pg_ctl`
as an unprivileged user (created when the suite runs as root), in a temporary directory,
on a free loopback port; one cluster a session, one fresh database a test."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from qubix_cli.demo import free_port

USER = "qubixtest"  # the cluster's owner when the suite runs as root


def server_bin() -> Path | None:
    """Debian's PostgreSQL binaries (the newest installed), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


class Cluster:
    """`initdb`, then `pg_ctl start` on 127.0.0.1:port; `stop` removes it all."""

    def __init__(self) -> None:
        bin_dir = server_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="qubix-pg-"))
        self.port = free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.names = itertools.count(1)
        if os.getuid() == 0:
            self.user = USER
            try:
                pwd.getpwnam(USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
            shutil.chown(self.root, USER)
        self.data = self.root / "data"
        self._as_owner(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "--auth=trust",
                "--locale=C",
                "-E",
                "UTF8",
                "-U",
                self.user,
            ]
        )
        self.options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self.options += " -c max_connections=300"
        self.start()

    def pg_ctl(self, *args: str) -> None:
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), *args])

    def start(self) -> None:
        self.pg_ctl("-o", self.options, "-l", str(self.root / "log"), "-w", "start")

    def stop_server(self) -> None:
        """Stop PostgreSQL itself (fast: connections are cut), keeping its data."""
        self.pg_ctl("-m", "fast", "-w", "stop")

    def _as_owner(self, argv: list[str]) -> None:
        if os.getuid() == 0:
            argv = ["runuser", "-u", USER, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"test_{next(self.names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def stop(self) -> None:
        try:
            self._as_owner(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
