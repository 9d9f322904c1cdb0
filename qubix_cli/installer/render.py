"""Render the one-file installers (.sh for Linux and macOS, .bat for Windows) around the
packed worker. Every value is validated before anything is rendered, and still quoted for
the shell it lands in."""

from __future__ import annotations

import base64
import platform
import re
from dataclasses import dataclass
from importlib import resources

from qubix_cli import __version__
from qubix_cli.errors import InvalidInput
from qubix_cli.installer.pack import build_worker_pyz, sha256
from qubix_cli.qubic import validate_identity

MAX_URL_LENGTH = 2048
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_URL = re.compile(rf"https?://{_HOST}(?::(?P<port>[0-9]{{1,5}}))?(?:/[A-Za-z0-9._~/-]*)?")
_BAT_LINE = 76


@dataclass(frozen=True)
class Target:
    """An operating system that installers are built for."""

    template: str  # in templates/; its suffix is the installer's
    how_to_run: str  # told to the person who built it; {file} is the installer's name


# The one list of operating systems (the worker's detection of each is in worker/hardware.py).
OSES = {
    "windows": Target(
        "install.bat", "double-click {file}, or run it in cmd (add --service to start it at logon)"
    ),
    "linux": Target("install.sh", "sh {file}   (add --service to start it with systemd)"),
    "macos": Target("install.sh", "sh {file}   (add --service to start it with launchd)"),
}
ALIASES = {"darwin": "macos"}
OS_CHOICES = f"{', '.join(list(OSES)[:-1])} or {list(OSES)[-1]}"  # for messages


@dataclass(frozen=True)
class Installer:
    os: str
    filename: str
    media_type: str
    content: bytes

    @property
    def sha256(self) -> str:
        return sha256(self.content)


def normalize_os(name: str) -> str:
    """One of OSES (darwin is an alias of macos)."""
    name = ALIASES.get(name.lower(), name.lower())
    if name not in OSES:
        raise InvalidInput(f"unknown operating system {name!r}: use {OS_CHOICES}")
    return name


def this_os() -> str:
    return normalize_os(platform.system())


def validate_server_url(url: str) -> str:
    """A plain http(s) URL: host, optional port, optional path of [A-Za-z0-9._~/-]. No
    credentials, query, fragment, whitespace, quotes, % or shell metacharacters."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"the server URL is longer than {MAX_URL_LENGTH} characters")
    match = _URL.fullmatch(url)
    if match is None or not 0 < int(match.group("port") or 80) < 65536:
        raise InvalidInput(
            "the server URL must be plain: http(s)://host[:port][/path], with a path of "
            "letters, digits and . _ ~ / - only (no credentials, query, spaces or quotes)"
        )
    return url.rstrip("/")


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render(
    os_name: str, server: str, address: str | None = None, update_key: str = ""
) -> Installer:
    """The installer for `os_name` that installs a worker for `server` (and `address`),
    with the coordinator's public update key (hex; without one the worker never updates
    itself)."""
    target = normalize_os(os_name)
    server = validate_server_url(server)
    if address:
        validate_identity(address)
    if update_key and not re.fullmatch(r"[0-9a-f]{64}", update_key):
        raise InvalidInput("an update key is 64 lowercase hex digits (an Ed25519 public key)")
    worker = build_worker_pyz()
    if OSES[target].template.endswith(".bat"):
        return _render_bat(server, address or "", worker, update_key)
    return _render_sh(target, server, address or "", worker, update_key)


def _template(name: str) -> str:
    return resources.files("qubix_cli.installer").joinpath("templates", name).read_text()


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


def _render_sh(target: str, server: str, address: str, worker: bytes, update_key: str) -> Installer:
    filename = f"qubix-installer-{target}.sh"
    payload = base64.encodebytes(worker).decode()
    text = _fill(
        _template("install.sh"),
        {
            "VERSION": __version__,
            "FILENAME": filename,
            "SERVER": _sh_quote(server),
            "ADDRESS": _sh_quote(address),
            "UPDATE_KEY": update_key,
            "SHA256": sha256(worker),
            "PAYLOAD": payload.rstrip("\n"),
        },
    )
    return Installer(target, filename, "text/x-shellscript", text.encode())


def _render_bat(server: str, address: str, worker: bytes, update_key: str) -> Installer:
    filename = "qubix-installer-windows.bat"
    encoded = base64.b64encode(worker).decode()
    payload = "\r\n".join(encoded[i : i + _BAT_LINE] for i in range(0, len(encoded), _BAT_LINE))
    # Inside `set "NAME=value"` the validated values (no quotes, %, !, ^, &, |, <, >) are literal.
    text = _fill(
        _template("install.bat"),
        {
            "VERSION": __version__,
            "FILENAME": filename,
            "SERVER": server,
            "ADDRESS": address,
            "UPDATE_KEY": update_key,
            "SHA256": sha256(worker),
            "PAYLOAD": payload,
        },
    )
    crlf = "\r\n".join(text.replace("\r\n", "\n").split("\n"))
    return Installer("windows", filename, "application/x-bat", crlf.encode())
