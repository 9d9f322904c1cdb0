"""Accounts, their API keys and quotas, balances and holds, and the ledger.

An account is an `operator` (does everything) or a `renter` (its own jobs only). A key is
`qbx_` and 43 random characters (256 bits), shown once; the store keeps its SHA-256 hash
and its id, its first 12 characters. A revoked key keeps its record (so the key the server
was started with cannot come back at the next start) and is refused at once.

Money: a renter's balance is what operators credited less what its jobs were charged
(plus refunds). A job holds its worst case (the most it may cost) while it is open; a
submission whose worst case exceeds the balance less what is held is refused. The ledger
is append-only: credits, charges and refunds, each with its account, and a charge with
the worker and Qubic address that earned it; the balances kept on accounts are its sums.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from qubix_cli.errors import Conflict, InvalidInput, NotFound, PaymentRequired, QuotaExceeded
from qubix_cli.server.http import token_hash
from qubix_cli.server.providers import Clock
from qubix_cli.server.store import Doc, Store, Transaction

log = logging.getLogger("qubix.accounts")

OPERATOR, RENTER = "operator", "renter"
ROLES = (OPERATOR, RENTER)
FIRST_OPERATOR = "operator"  # the account of the key the server was started with
KEY_PREFIX = "qbx_"
KEY_ID_LENGTH = 12
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
QUOTAS = ("maxQueued", "maxPerMinute", "maxRunning", "maxStorageMb")
MINUTE_S = 60.0
KEY_USE = "keyUse"  # volatile: key id -> {"at": last use}
SUBMISSIONS = "submissions"  # volatile: account -> {"at": [its submissions in the last minute]}


@dataclass(frozen=True)
class Caller:
    """Who a request's key belongs to."""

    account: str
    role: str
    key_id: str

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR

    def may_see(self, job: Doc) -> bool:
        """An operator sees every job; a renter only its own."""
        return self.is_operator or job.get("account") == self.account


def money(amount: float) -> float:
    """Amounts are kept to six decimal places."""
    return round(amount, 6)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_doc(key: str, account: str, name: str, now: float, key_id: str | None = None) -> Doc:
    """A key's record: its id is its first characters unless another id is given."""
    return {
        "id": key_id or key[:KEY_ID_LENGTH],
        "hash": token_hash(key),
        "account": account,
        "name": name,
        "createdAt": now,
        "revokedAt": None,
    }


def public_key(doc: Doc, last_used: Doc | None) -> Doc:
    """A key as listings show it: never its hash."""
    shown = {k: doc.get(k) for k in ("id", "account", "name", "createdAt", "revokedAt")}
    return {**shown, "lastUsedAt": last_used["at"] if last_used else None}


def new_account(name: str, role: str, now: float) -> Doc:
    return {
        "name": name,
        "role": role,
        "createdAt": now,
        "quota": {q: None for q in QUOTAS},
        "balance": 0.0,
        "held": 0.0,
        "spent": 0.0,
    }


def check_name(name: str) -> str:
    if not ACCOUNT_NAME.fullmatch(name):
        raise InvalidInput(
            f"{name!r} is not an account name: 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit",
            code="invalid_account_name",
        )
    return name


class Accounts:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock

    # -- keys --------------------------------------------------------------------------

    async def caller(self, key: str | None) -> Caller | None:
        """The account a presented key belongs to, or None (unknown or revoked). The hash
        is looked up, so the comparison takes the same time whatever the key."""
        if not key:
            return None
        found = await self.store.scan("keys", where={"hash": token_hash(key)})
        if not found or found[0].get("revokedAt") is not None:
            return None
        account = await self.store.get("accounts", found[0].get("account") or "")
        if account is None:
            return None
        self.store.remember(KEY_USE, found[0]["id"], {"at": self.clock()})
        return Caller(account["name"], account["role"], found[0]["id"])

    async def install_start_key(self, key: str) -> bool:
        """Make the key the server was started with (`--api-key`, `QUBIX_API_KEY` or the
        data dir's key file) a key of the first operator account; a key a previous start
        used stops working, unless it was made an account's key some other way, or other
        servers use the same database now (replicas: theirs stays, with a warning). False
        if this key was revoked: it stays refused, and changes nothing."""
        now, digest = self.clock(), token_hash(key)
        others = await self.store.others()
        async with self.store.transaction() as tx:
            if await tx.get("accounts", FIRST_OPERATOR) is None:
                tx.put("accounts", new_account(FIRST_OPERATOR, OPERATOR, now))
            found = await tx.scan("keys", where={"hash": digest})
            if found and found[0].get("revokedAt") is not None:
                return False
            for old in await tx.scan("keys"):
                if old.get("account") is None:  # a key from before accounts
                    old = {**old, "account": FIRST_OPERATOR, "name": "start"}
                    tx.put("keys", old)
                is_start = old.get("startKey") and old["hash"] != digest
                if not is_start or old.get("revokedAt") is not None:
                    continue
                if others:
                    log.warning(
                        "another server on this database was started with another API key "
                        "(%s): both work. Start every replica with the same key "
                        "(docs/scaling.md)",
                        old["id"],
                    )
                    continue
                log.warning(
                    "the key %s of an earlier start is revoked: this server now runs with "
                    "another key (from --api-key, QUBIX_API_KEY or the api-key file)",
                    old["id"],
                )
                tx.put("keys", {**old, "revokedAt": now})
            if found:
                if found[0].get("account") is None:  # a key from before accounts
                    tx.put("keys", {**found[0], "account": FIRST_OPERATOR, "name": "start"})
                return True
            key_id = key[:KEY_ID_LENGTH]
            if await tx.get("keys", key_id) is not None:  # a chosen key like another's
                key_id = "key_" + secrets.token_hex(4)
            doc = key_doc(key, FIRST_OPERATOR, "start", now, key_id)
            tx.put("keys", {**doc, "startKey": True})
        return True

    async def create_key(self, account: str, name: str) -> tuple[Doc, str]:
        """A new key for an account: its listing, and the key itself (shown only now)."""
        async with self.store.transaction() as tx:
            await self._account(tx, account)
            doc, key = await self._new_key(tx, account, name)
        return public_key(doc, None), key

    async def _new_key(self, tx: Transaction, account: str, name: str) -> tuple[Doc, str]:
        while True:
            key = new_key()
            if await tx.get("keys", key[:KEY_ID_LENGTH]) is None:  # ids are 48 random bits
                break
        doc = key_doc(key, account, name, self.clock())
        tx.put("keys", doc)
        return doc, key

    async def keys(self, caller: Caller) -> list[Doc]:
        """The keys an operator sees (all) or a renter sees (its own), oldest first."""
        where = None if caller.is_operator else {"account": caller.account}
        docs = await self.store.scan("keys", where, "createdAt")
        return [public_key(d, await self.store.recall(KEY_USE, d["id"])) for d in docs]

    async def revoke(self, caller: Caller, given: str) -> Doc:
        """Revoke a key, given by its id, or whole (then found by its hash, never echoed:
        two keys an operator chose may begin alike). The last key of the operators cannot
        be revoked: nobody could administer then."""
        async with self.store.transaction() as tx:
            if len(given) > KEY_ID_LENGTH:
                found = await tx.scan("keys", where={"hash": token_hash(given)})
                doc, named = (found[0] if found else None), "that key"
            else:
                doc, named = await tx.get("keys", given), f"key {given!r}"
            if doc is None or not (caller.is_operator or doc.get("account") == caller.account):
                raise NotFound(f"no {named}", code="key_not_found")
            key_id = doc["id"]
            if doc.get("revokedAt") is None and await self._last_operator_key(tx, doc):
                raise Conflict(
                    f"{key_id} is the last operator key: make another one first "
                    "(qubix keys create), then revoke this one",
                    code="last_operator_key",
                )
            if doc.get("revokedAt") is None:
                doc = {**doc, "revokedAt": self.clock()}
                tx.put("keys", doc)
        return public_key(doc, await self.store.recall(KEY_USE, key_id))

    @staticmethod
    async def _last_operator_key(tx: Transaction, doc: Doc) -> bool:
        operators = {a["name"] for a in await tx.scan("accounts", {"role": OPERATOR})}
        if doc.get("account") not in operators:
            return False
        live = [
            k
            for k in await tx.scan("keys")
            if k.get("account") in operators and k.get("revokedAt") is None
        ]
        return len(live) <= 1

    # -- accounts ----------------------------------------------------------------------

    async def create(self, name: str, role: str, key_name: str) -> tuple[Doc, Doc, str]:
        """A new account and its first key: the account, the key's listing, the key."""
        check_name(name)
        if role not in ROLES:
            raise InvalidInput(f"{role!r} is not a role: operator or renter", code="invalid_role")
        async with self.store.transaction() as tx:
            if await tx.get("accounts", name) is not None:
                raise Conflict(f"the account {name!r} exists already", code="account_exists")
            account = new_account(name, role, self.clock())
            tx.put("accounts", account)
            doc, key = await self._new_key(tx, name, key_name)
        return account, public_key(doc, None), key

    async def all(self) -> list[Doc]:
        return await self.store.scan("accounts", None, "createdAt")

    async def get(self, name: str) -> Doc:
        return await self._account(self.store, name)

    @staticmethod
    async def _account(reader: Store | Transaction, name: str) -> Doc:
        account = await reader.get("accounts", name)
        if account is None:
            raise NotFound(f"no account {name!r}", code="account_not_found")
        return account

    async def set_quota(self, name: str, quota: dict[str, int | None]) -> Doc:
        """Change the quotas given (None: no limit); the others stay as they are."""
        async with self.store.transaction() as tx:
            account = await self._account(tx, name)
            account = {**account, "quota": {**account["quota"], **quota}}
            tx.put("accounts", account)
        return account

    async def credit(self, name: str, amount: float, by: Caller) -> Doc:
        """Add to an account's balance (a negative amount takes back), in the ledger."""
        if money(amount) == 0:
            raise InvalidInput("a credit of 0 changes nothing: give an amount", code="zero_credit")
        async with self.store.transaction() as tx:
            account = await self._account(tx, name)
            entry = {"kind": "credit", "account": name, "amount": money(amount), "by": by.account}
            self._record(tx, entry)
            account = {**account, "balance": money(account["balance"] + amount)}
            tx.put("accounts", account)
        return account

    def _record(self, tx: Transaction, entry: Doc) -> None:
        now = self.clock()
        ledger_id = f"led_{int(now * 1000):011x}{secrets.token_hex(4)}"
        tx.put("ledger", {"id": ledger_id, "at": now, **entry})

    # -- jobs --------------------------------------------------------------------------

    async def admit(self, tx: Transaction, caller: Caller, job: Doc, hold: float) -> None:
        """Check a submission against the account's quotas and balance, in the transaction
        that stores the job, and hold its worst case. Raises (nothing stored) past one."""
        account = await self._account(tx, caller.account)
        quota = account["quota"]
        most = quota.get("maxQueued")
        if most is not None:
            queued = await tx.count("jobs", {"account": caller.account, "status": "queued"})
            if queued >= most:
                raise QuotaExceeded(
                    f"the account {caller.account!r} has {queued} queued jobs, its quota "
                    f"maxQueued is {most}: wait for some to start, or cancel some",
                    details={"quota": "maxQueued", "limit": most},
                )
        now = self.clock()
        told = await self.store.recall(SUBMISSIONS, caller.account) or {"at": []}
        recent = [at for at in told["at"] if at > now - MINUTE_S]
        per_minute = quota.get("maxPerMinute")
        if per_minute is not None and len(recent) >= per_minute:
            details: Doc = {"quota": "maxPerMinute", "limit": per_minute}
            if per_minute == 0:  # waiting does not help
                message = "it may submit no jobs (ask an operator)"
            else:
                details["retryAfterS"] = max(1, int(recent[0] + MINUTE_S - now + 1))
                message = f"try again in {details['retryAfterS']} s"
            raise QuotaExceeded(
                f"the account {caller.account!r} submitted {len(recent)} jobs in the last "
                f"minute, its quota maxPerMinute is {per_minute}: {message}",
                details=details,
            )
        available = money(account["balance"] - account["held"])
        if not caller.is_operator and hold > available:
            raise PaymentRequired(
                f"this job may cost up to {hold:g} (its price limit x its timeout), and the "
                f"account {caller.account!r} has {available:g} available (balance "
                f"{account['balance']:g}, held for open jobs {account['held']:g}): lower "
                "requirements.maxPricePerHour (--max-price) or timeoutS (--timeout), or ask "
                "an operator for credit",
                details={"worstCase": hold, "available": available},
            )
        self.store.remember(SUBMISSIONS, caller.account, {"at": [*recent, now]})
        job.update(account=caller.account, hold=hold)
        tx.put("accounts", {**account, "held": money(account["held"] + hold)})

    async def settle(self, tx: Transaction, job: Doc, runs: list[Doc]) -> float:
        """A job of an account ended: its hold is released, and each accepted run in
        `runs` ({workerId, qubicAddress, pricePerHour, seconds}) is charged. What it was
        charged."""
        account = await tx.get("accounts", job.get("account") or "")
        if account is None:
            return 0.0
        charged = 0.0
        for run in runs:
            amount = money(run["pricePerHour"] * run["seconds"] / 3600.0)
            entry = {"kind": "charge", "account": account["name"], "jobId": job["id"], **run}
            self._record(tx, {**entry, "seconds": round(run["seconds"], 3), "amount": amount})
            charged += amount
        balance = money(account["balance"] - charged)
        held = money(max(0.0, account["held"] - job.get("hold", 0.0)))
        spent = money(account.get("spent", 0.0) + charged)
        tx.put("accounts", {**account, "balance": balance, "held": held, "spent": spent})
        return money(charged)

    async def refund(self, tx: Transaction, job: Doc, worker_id: str) -> float:
        """Give back what a job's account paid for a worker's run of it (its worker was
        caught cheating after it): the work cost nothing. What was given back."""
        account = await tx.get("accounts", job.get("account") or "")
        if account is None:
            return 0.0
        back = 0.0
        for entry in await tx.scan("ledger", {"jobId": job["id"], "workerId": worker_id}):
            if entry["kind"] == "charge":
                fields = {k: entry[k] for k in ("jobId", "workerId", "qubicAddress", "amount")}
                self._record(tx, {"kind": "refund", "account": account["name"], **fields})
                back += entry["amount"]
        if back:
            balance, spent = account["balance"] + back, account.get("spent", 0.0) - back
            tx.put("accounts", {**account, "balance": money(balance), "spent": money(spent)})
        return money(back)

    async def ledger(self, where: dict[str, Any] | None = None) -> list[Doc]:
        return await self.store.scan("ledger", where, "at")

    async def earnings(
        self, address: str, since: float | None, worker_id: str | None, lines: bool
    ) -> Doc:
        """What a Qubic address (or one worker of it) earned, charges less refunds: today,
        over 7 and 30 days and in all (since `since`, if given); with `lines` each line."""
        now = self.clock()
        found = [
            e
            for e in await self.ledger({"qubicAddress": address})
            if (since is None or e["at"] >= since)
            and (worker_id is None or e["workerId"] == worker_id)
        ]
        day = now - now % 86_400  # UTC midnight

        def total(after: float) -> float:
            signs = {"charge": 1.0, "refund": -1.0}
            return money(sum(signs[e["kind"]] * e["amount"] for e in found if e["at"] >= after))

        answer: Doc = {
            "qubicAddress": address,
            "today": total(day),
            "last7Days": total(now - 7 * 86_400),
            "last30Days": total(now - 30 * 86_400),
            "allTime": total(float("-inf")),
            "jobs": len({e["jobId"] for e in found if e["kind"] == "charge"}),
        }
        if lines:
            answer["lines"] = found
        return answer


def earned(entries: list[Doc]) -> float:
    """What ledger lines of a worker's runs come to: charges less refunds."""
    signs = {"charge": 1.0, "refund": -1.0}
    return money(sum(signs.get(e["kind"], 0.0) * e["amount"] for e in entries))


def totals(entries: list[Doc]) -> tuple[dict[str, float], dict[str, float]]:
    """Balances by account and earnings by Qubic address, summed over ledger entries."""
    balances: dict[str, float] = {}
    earned: dict[str, float] = {}
    sign = {"credit": 1.0, "refund": 1.0, "charge": -1.0}
    for entry in entries:
        change = sign[entry["kind"]] * entry["amount"]  # to the renter's balance
        balances[entry["account"]] = money(balances.get(entry["account"], 0.0) + change)
        if "qubicAddress" in entry:
            address = entry["qubicAddress"]
            earned[address] = money(earned.get(address, 0.0) - change)
    return balances, earned
