"""Who uploaded which input, and the storage quota that their sizes count against.

An upload is a record `{account}/{sha256}` in the `uploads` table, with its size. It counts
against its account's quota `maxStorageMb` (when that is null: `--renter-storage-mb` for a
renter, no limit for an operator) while one of the account's jobs names the input, and
for `UPLOAD_GRACE_S` after the upload otherwise; then the record goes, and the blob with
it when nobody else holds it (`JobFiles.forget_old`).
"""

from __future__ import annotations

from qubix_cli.errors import TooLarge
from qubix_cli.server.accounts import RENTER, Caller
from qubix_cli.server.providers import Clock
from qubix_cli.server.settings import Settings
from qubix_cli.server.store import Reader, Store

UPLOAD_GRACE_S = 3600.0  # an uploaded input waits this long for the job that names it
MB = 2**20


class Uploads:
    def __init__(self, store: Store, settings: Settings, clock: Clock) -> None:
        self.store, self.settings, self.clock = store, settings, clock

    async def allowance(self, caller: Caller) -> int | None:
        """How many bytes an upload of the caller's account may bring (None: no limit):
        what its quota leaves, and as much as its largest upload, which the same bytes
        uploaded again replace (`check` says which it was, once they are hashed)."""
        limit, used, largest = await self._usage(self.store, caller.account, None)
        return None if limit is None else limit - used + largest

    async def check(self, caller: Caller, sha256: str, size: int) -> None:
        """413 `quota_exceeded` unless `size` bytes named `sha256` fit in the quota."""
        limit, used, _ = await self._usage(self.store, caller.account, sha256)
        if limit is not None and used + size > limit:
            raise _over(caller.account, limit, used)

    async def refusal(self, caller: Caller) -> TooLarge:
        """The error for an input larger than what the account's quota leaves."""
        limit, used, _ = await self._usage(self.store, caller.account, None)
        return _over(caller.account, limit or 0, used)

    async def record(self, caller: Caller, sha256: str, size: int) -> None:
        """The account uploaded `sha256`: it counts from now (checked again, for uploads
        that ran side by side; past the quota nothing is recorded)."""
        async with self.store.transaction() as tx:
            limit, used, _ = await self._usage(tx, caller.account, sha256)
            if limit is not None and used + size > limit:
                raise _over(caller.account, limit, used)
            doc = {"account": caller.account, "sha256": sha256, "size": size}
            tx.put("uploads", {"id": f"{caller.account}/{sha256}", **doc, "at": self.clock()})

    async def _usage(
        self, reader: Reader, name: str, besides: str | None
    ) -> tuple[int | None, int, int]:
        """The account's limit in bytes (None: none), what its uploads but `besides` take,
        and the largest of them."""
        account = await reader.get("accounts", name) or {"role": RENTER, "quota": {}}
        mb = account["quota"].get("maxStorageMb")
        if mb is None and account["role"] == RENTER and self.settings.renter_storage_mb:
            mb = self.settings.renter_storage_mb
        sizes = [
            u["size"]
            for u in await reader.scan("uploads", where={"account": name})
            if u["sha256"] != besides
        ]
        return (None if mb is None else mb * MB), sum(sizes), max(sizes, default=0)

    async def collect(self, named: dict[str, set[str]]) -> set[str]:
        """Forget the uploads that no job of their account names (`named`: account ->
        the inputs its jobs name) and that are older than the grace; the inputs whose
        uploads stay."""
        cutoff = self.clock() - UPLOAD_GRACE_S
        held: set[str] = set()
        gone: list[str] = []
        for upload in await self.store.scan("uploads"):
            if upload["sha256"] in named.get(upload["account"], ()) or upload["at"] >= cutoff:
                held.add(upload["sha256"])
            else:
                gone.append(upload["id"])
        if gone:
            async with self.store.transaction() as tx:
                for key in gone:
                    tx.delete("uploads", key)
        return held


def _over(account: str, limit: int, used: int) -> TooLarge:
    return TooLarge(
        f"the account {account!r} has {used / MB:.1f} MiB of inputs stored and this one "
        f"does not fit in its quota maxStorageMb, {limit // MB}: inputs count while a job "
        "of the account names them (until the job is forgotten) or for an hour after their "
        "upload. Upload less, or ask an operator (qubix accounts quota NAME --max-storage-mb N)",
        code="quota_exceeded",
        details={"quota": "maxStorageMb", "limit": limit // MB, "usedBytes": used},
    )
