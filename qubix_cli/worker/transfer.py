"""A job's files: its inputs fetched and checked before it runs, its outputs uploaded
after it ran.

Inputs come from the coordinator (files the renter uploaded) or from a URL the renter
named, each with its SHA-256; a file whose bytes do not match fails the job before it
starts. A URL must lead to a public address: loopback, private, link-local, multicast and
reserved addresses are refused (a renter must not reach into the provider's network)
unless the coordinator's operator allowed that network. The address is checked once and
then connected to, so a name that resolves differently a moment later changes nothing.

Outputs are the regular files the job left in its output directory and the directories
below it, read through worker/jobdir.py: a symlink (to `~/.ssh/id_rsa`, say), a device, or
an output directory replaced by a link uploads nothing and the report says so.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import urllib.parse
from typing import Any, Iterable

from qubix_cli.worker import jobdir
from qubix_cli.worker.client import Client, Transient, message

CHUNK = 1024 * 1024
FETCH_TIMEOUT_S = 60.0


class InputError(Exception):
    """An input cannot be had or is not what the renter said: the job fails with this."""


def address_allowed(address: str, allowed: Iterable[str] = ()) -> bool:
    """A public (global unicast) address, or one in a network the operator allowed."""
    ip = ipaddress.ip_address(address)
    if any(ip in ipaddress.ip_network(net, strict=False) for net in allowed):
        return True
    return ip.is_global and not ip.is_multicast


def resolve_public(host: str, port: int, allowed: Iterable[str] = ()) -> str:
    """The address to connect to for `host`: every address it resolves to must be
    allowed (InputError naming the first that is not)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InputError(f"cannot resolve {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    allowed = list(allowed)
    for address in addresses:
        if not address_allowed(address, allowed):
            raise InputError(
                f"{host} resolves to {address}, a loopback, private, link-local or "
                "multicast address: inputs and network jobs reach public addresses only"
            )
    return addresses[0]


def fetch_inputs(api: Client, job: dict[str, Any], dest: str, networks: list[str]) -> None:
    """Place every input of the job in `dest`, by name, each checked against its SHA-256."""
    for item in job.get("inputs", []):
        path = os.path.join(dest, item["name"])
        if item.get("url"):
            _fetch_url(item["url"], path, networks)
        else:
            try:
                status, answer = api.download(f"/api/jobs/{job['id']}/inputs/{item['name']}", path)
            except Transient as exc:
                raise InputError(f"input {item['name']!r} could not be fetched: {exc}") from exc
            if status != 200:
                raise InputError(
                    f"input {item['name']!r}: the server answered {status}: {message(answer)}"
                )
        digest = file_sha256(path)
        if digest != item["sha256"]:
            os.unlink(path)
            raise InputError(
                f"input {item['name']!r} has SHA-256 {digest}, not the {item['sha256']} the "
                "renter gave: it was changed or damaged, so the job does not run"
            )


def _fetch_url(url: str, path: str, networks: list[str]) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_public(parts.hostname, port, networks)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, port, timeout=FETCH_TIMEOUT_S)
    # Connect to the address that was checked (TLS still checks the name).
    conn._create_connection = lambda addr, *args: socket.create_connection(  # type: ignore[attr-defined]
        (address, addr[1]), *args
    )
    try:
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("GET", target, headers={"User-Agent": "qubix-worker"})
        response = conn.getresponse()
        if response.status != 200:
            raise InputError(f"{url} answered {response.status} (redirects are not followed)")
        with open(path, "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                f.write(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise InputError(f"{url} could not be fetched: {exc}") from exc
    finally:
        conn.close()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_outputs(api: Client, job_id: str, attempt: int, out_dir: str) -> dict[str, Any]:
    """Upload each regular file under `out_dir` (by its relative path, read through
    worker/jobdir.py) under the lease; what was uploaded and what was skipped, and why."""
    uploaded: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        for name, f, size in jobdir.read_files(out_dir, skipped):
            url = f"/api/jobs/{job_id}/artifacts/{urllib.parse.quote(name)}?attempt={attempt}"
            try:
                status, answer = api.upload(url, f, size)
            except Transient as exc:
                skipped.append({"name": name, "reason": f"upload failed: {exc}"})
                continue
            if status == 200:
                uploaded.append(answer["artifact"])
            else:
                skipped.append({"name": name, "reason": f"refused ({status}): {message(answer)}"})
    except jobdir.NotADirectory as exc:
        reason = f"$QUBIX_OUTPUT is not a real directory ({exc}): nothing was uploaded"
        return {"uploaded": [], "skipped": [{"name": ".", "reason": reason}]}
    return {"uploaded": uploaded, "skipped": skipped}
