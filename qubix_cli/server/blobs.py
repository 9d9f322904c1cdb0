"""Files that jobs bring in and take out (inputs, outputs), content-addressed.

A blob is named by its SHA-256 and written once: to a temporary file while it is hashed,
fsynced, then renamed into `blobs/ab/abcdef...`. Two uploads of the same bytes are one
file. Which job refers to which blob is in the store (the job's `inputs` and
`artifacts`); this is only the bytes. An object store (S3, GCS) would replace this one
class: `write` is a PUT under the hash, `open` a GET, `delete` a DELETE and `names` a
LIST, which is what replicas behind a load balancer need, since a local directory is one
host's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from qubix_cli.errors import InvalidInput, TooLarge

SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK_BYTES = 1024 * 1024


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # renters' inputs and outputs: the server's own

    def path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise InvalidInput(f"{sha256!r} is not a SHA-256 (64 hex digits)")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def write(self, chunks: AsyncIterator[bytes], limit: int, what: str) -> tuple[str, int]:
        """Store the bytes of `chunks` (at most `limit`; TooLarge naming `what` past it, and
        nothing is kept): their SHA-256 and size."""
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(
                            f"{what} is over {limit // 2**20} MiB, the most this server takes",
                            code="upload_too_large",
                        )
                    digest.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(_sync, f.fileno())
            sha256 = digest.hexdigest()
            target = self.path(sha256)
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256, size

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def names(self) -> list[tuple[str, float]]:
        """Every stored blob with the time it was written."""
        return [(p.name, p.stat().st_mtime) for p in self.root.glob("??/*") if SHA256.match(p.name)]


def _sync(fd: int) -> None:
    os.fsync(fd)
