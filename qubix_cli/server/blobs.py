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
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from qubix_cli.errors import InsufficientStorage, InvalidInput, TooLarge
from qubix_cli.server.store import disk_error

SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK_BYTES = 1024 * 1024
Admit = Callable[[str, int], Awaitable[None]]  # told (SHA-256, size) before a blob is kept


class Blobs:
    """The blobs under `root`; a write that would leave less than `keep_free` bytes free
    on its disk is refused (507), so that what the store must save still fits."""

    def __init__(self, root: Path, keep_free: int = 0) -> None:
        self.root, self.keep_free = root, keep_free
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # renters' inputs and outputs: the server's own

    def path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise InvalidInput(f"{sha256!r} is not a SHA-256 (64 hex digits)")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def write(
        self,
        chunks: AsyncIterator[bytes],
        limit: int,
        what: str,
        expected: int = 0,
        admit: Admit | None = None,
    ) -> tuple[str, int]:
        """Store the bytes of `chunks` (at most `limit`; TooLarge naming `what` past it, and
        nothing is kept): their SHA-256 and size. `expected` is the size announced, if any;
        `admit`, once they are hashed, may refuse them (nothing is kept then either). A full
        disk (or one at the reserve) is a StorageError (InsufficientStorage)."""
        self._check_room(expected)
        try:
            return await self._write(chunks, limit, what, admit)
        except OSError as exc:  # ENOSPC, EIO: the storage's failure, not the request's
            raise disk_error(exc) from exc

    async def _write(
        self, chunks: AsyncIterator[bytes], limit: int, what: str, admit: Admit | None
    ) -> tuple[str, int]:
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
                    self._check_room(len(chunk))
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(_sync, f.fileno())
            sha256 = digest.hexdigest()
            if admit is not None:
                await admit(sha256, size)
            target = self.path(sha256)
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256, size

    def _check_room(self, more: int) -> None:
        if self.keep_free and shutil.disk_usage(self.root).free - more < self.keep_free:
            raise InsufficientStorage(
                f"the server's disk is down to the {self.keep_free // 2**20} MiB it keeps free "
                "for jobs, registrations and reports: uploads are refused until an operator "
                "frees space. Try again later.",
                details={"minFreeMb": self.keep_free // 2**20},
            )

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def names(self) -> list[tuple[str, float]]:
        """Every stored blob with the time it was written."""
        return [(p.name, p.stat().st_mtime) for p in self.root.glob("??/*") if SHA256.match(p.name)]


def _sync(fd: int) -> None:
    os.fsync(fd)
