"""Pack `qubix_cli.worker` into `qubix_worker.pyz`, a zipapp (the `python -m zipapp` layout:
the package plus a `__main__.py` at the root). The archive is reproducible: fixed
timestamps and order, so the same code always gives the same bytes and SHA-256."""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from pathlib import Path

import qubix_cli

PACKAGE_ROOT = Path(qubix_cli.__file__).parent
_MAIN = b"import sys\nfrom qubix_cli.worker.__main__ import main\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def worker_files() -> list[tuple[str, bytes]]:
    """The archive's members: the worker package and the empty `qubix_cli` around it."""
    files = [("__main__.py", _MAIN), ("qubix_cli/__init__.py", b"")]
    for path in sorted((PACKAGE_ROOT / "worker").glob("*.py")):
        files.append((f"qubix_cli/worker/{path.name}", path.read_bytes()))
    return files


@functools.cache
def build_worker_pyz() -> bytes:
    """The zipapp's bytes, starting with a `#!/usr/bin/env python3` line."""
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in worker_files():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
