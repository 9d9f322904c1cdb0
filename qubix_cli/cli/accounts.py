"""`qubix accounts`, `qubix keys` and `qubix login`: who may use a coordinator, and how
much it may spend."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from qubix_cli import config
from qubix_cli.cli.display import ApiKeyOpt, JsonOpt, ServerOpt, ago, safe
from qubix_cli.client import Client, connect
from qubix_cli.errors import QubixError, ServerError

accounts = typer.Typer(help="Create and list accounts, set their quotas and credit (operators).")
keys = typer.Typer(help="Create, list and revoke API keys.")
console = Console(highlight=False)

NameArg = Annotated[str, typer.Argument(help="The account's name.")]


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def amount(value: float) -> str:
    """Money as the ledger keeps it: up to six decimals, no exponent ('1,234,567.123456')."""
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def _show_account(account: dict[str, Any]) -> None:
    quota = account["quota"]
    limits = ", ".join(f"{k} {v}" for k, v in quota.items() if v is not None) or "none"
    console.print(safe(f"account {account['name']} ({account['role']})"))
    held = amount(account["held"])
    console.print(safe(f"  balance {amount(account['balance'])}, held for open jobs {held}"))
    console.print(f"  spent on jobs {amount(account.get('spent', 0.0))}")
    console.print(safe(f"  quotas: {limits}"))


def _show_new_key(answer: dict[str, Any]) -> None:
    key = answer["key"]
    console.print(safe(f"key {key['id']} ({key['name']}) of account {key['account']}:"))
    typer.echo(answer["apiKey"])
    console.print("Keep it now: it is shown only once (the server keeps only its hash).")


@accounts.command("create")
def create(
    name: NameArg,
    role: Annotated[str, typer.Option(help="renter (its own jobs only) or operator.")] = "renter",
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an account and its first API key (printed once). Needs an operator's key."""
    with connect(server, api_key) as client:
        answer = client.call("POST", "/api/accounts", json={"name": name, "role": role})
    if as_json:
        _echo_json(answer)
        return
    _show_account(answer["account"])
    _show_new_key(answer)


@accounts.command("list")
def list_accounts(
    server: ServerOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """List the accounts with their role, balance and quotas. Needs an operator's key."""
    with connect(server, api_key) as client:
        found = client.call("GET", "/api/accounts")["accounts"]
    if as_json:
        _echo_json(found)
        return
    table = Table(Column("name", overflow="fold"), "role", "balance", "held", "quotas")
    for account in found:
        quota = ", ".join(f"{k} {v}" for k, v in account["quota"].items() if v is not None)
        table.add_row(
            safe(account["name"]),
            account["role"],
            amount(account["balance"]),
            amount(account["held"]),
            safe(quota) or "-",
        )
    console.print(table)


@accounts.command("show")
def show(
    name: Annotated[
        str | None, typer.Argument(help="The account \\[default: the key's own].")
    ] = None,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an account: role, balance, what its open jobs hold, quotas."""
    with connect(server, api_key) as client:
        path = f"/api/accounts/{name}" if name else "/api/account"
        account = client.call("GET", path)["account"]
    if as_json:
        _echo_json(account)
        return
    _show_account(account)


@accounts.command("quota")
def quota(
    name: NameArg,
    max_queued: Annotated[int | None, typer.Option(min=0, help="Jobs queued at once.")] = None,
    max_per_minute: Annotated[
        int | None, typer.Option(min=0, help="Jobs submitted a minute.")
    ] = None,
    max_running: Annotated[int | None, typer.Option(min=0, help="Jobs running at once.")] = None,
    max_storage_mb: Annotated[
        int | None,
        typer.Option(min=0, help="MiB of uploaded inputs (default: serve --renter-storage-mb)."),
    ] = None,
    no_limit: Annotated[
        list[str] | None,
        typer.Option(
            help="Remove a quota: max-queued, max-per-minute, max-running or max-storage-mb "
            "(that one back to the server's default)."
        ),
    ] = None,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set an account's quotas; those not given stay as they are. Needs an operator's key."""
    names = {
        "max-queued": "maxQueued",
        "max-per-minute": "maxPerMinute",
        "max-running": "maxRunning",
        "max-storage-mb": "maxStorageMb",
    }
    body: dict[str, int | None] = {}
    for field, value in (
        ("maxQueued", max_queued),
        ("maxPerMinute", max_per_minute),
        ("maxRunning", max_running),
        ("maxStorageMb", max_storage_mb),
    ):
        if value is not None:
            body[field] = value
    for option in no_limit or []:
        if option not in names:
            raise typer.BadParameter(f"{option!r} is not a quota: {', '.join(names)}")
        if names[option] in body:
            raise typer.BadParameter(f"--{option} is given a value and --no-limit too: one")
        body[names[option]] = None
    if not body:
        raise typer.BadParameter("give a quota to set, e.g. --max-queued 100")
    with connect(server, api_key) as client:
        account = client.call("POST", f"/api/accounts/{name}/quota", json=body)["account"]
    if as_json:
        _echo_json(account)
        return
    _show_account(account)


@accounts.command("credit")
def credit(
    name: NameArg,
    how_much: Annotated[
        float,
        typer.Argument(
            metavar="AMOUNT",
            help="How much to add; to take back, a negative amount after -- "
            "(qubix accounts credit NAME -- -5).",
        ),
    ],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add to an account's balance; the ledger records it. Needs an operator's key."""
    if not math.isfinite(how_much) or round(how_much, 6) == 0:
        raise typer.BadParameter(f"{how_much!r}: give a finite amount other than 0")
    with connect(server, api_key) as client:
        account = client.call("POST", f"/api/accounts/{name}/credit", json={"amount": how_much})
    if as_json:
        _echo_json(account["account"])
        return
    _show_account(account["account"])


@keys.command("create")
def create_key(
    account: Annotated[
        str | None, typer.Option(help="Whose key \\[default: the account of the key used].")
    ] = None,
    name: Annotated[str, typer.Option(help="A name to tell it apart, e.g. ci.")] = "key",
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key (printed once): a renter for itself, an operator for any account."""
    body = {"name": name, **({"account": account} if account else {})}
    with connect(server, api_key) as client:
        answer = client.call("POST", "/api/keys", json=body)
    if as_json:
        _echo_json(answer)
        return
    _show_new_key(answer)


@keys.command("list")
def list_keys(
    server: ServerOpt = None, api_key: ApiKeyOpt = None, as_json: JsonOpt = False
) -> None:
    """List keys (an operator sees every account's): id, name, created, last used."""
    with connect(server, api_key) as client:
        found = client.call("GET", "/api/keys")["keys"]
    if as_json:
        _echo_json(found)
        return
    table = Table(
        Column("id", no_wrap=True, min_width=12),
        "account",
        "name",
        "created",
        "last used",
        "revoked",
    )
    for key in found:
        table.add_row(
            safe(key["id"]),
            safe(str(key["account"] or "-")),
            safe(str(key["name"] or "-")),
            ago(key["createdAt"]),
            ago(key["lastUsedAt"]) if key["lastUsedAt"] else "never",
            ago(key["revokedAt"]) if key["revokedAt"] else "-",
        )
    console.print(table)


@keys.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Its id (qubix keys list), or the whole key.")],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: the next request with it is refused."""
    with connect(server, api_key) as client:
        key = client.call("DELETE", f"/api/keys/{key_id}")["key"]
    if as_json:
        _echo_json(key)
        return
    console.print(safe(f"key {key['id']} ({key['name']}) of account {key['account']} is revoked"))


def login(
    server: Annotated[
        str | None,
        typer.Option(
            help="The coordinator's URL \\[default: QUBIX_SERVER, else the config file's]."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="The key \\[default: QUBIX_API_KEY, else asked for, hidden].", show_default=False
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a key against a server and store it in the config file (readable by you only),
    so that later commands need neither --server nor --api-key."""
    url = config.server_url(server)
    key = api_key or os.environ.get("QUBIX_API_KEY")
    if not key:
        key = str(typer.prompt(f"API key for {url}", hide_input=True)).strip()
    with Client(url, key) as client:
        try:
            account = client.call("GET", "/api/account")["account"]
        except ServerError as exc:
            if "401" not in str(exc):
                raise
            raise QubixError(
                f"{url} does not know this key (or it was revoked); nothing stored"
            ) from exc
    path = config.login(url, key)
    if as_json:
        _echo_json({"server": url, "account": account, "config": str(path)})
        return
    console.print(safe(f"logged in to {url} as account {account['name']} ({account['role']})"))
    console.print(safe(f"the key is stored in {path}"))


def earnings(
    address: Annotated[str, typer.Argument(help="The Qubic address (60 letters).")],
    since: Annotated[
        str | None, typer.Option(help="Only from this day on (YYYY-MM-DD, UTC).")
    ] = None,
    csv_out: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="Print each ledger line as CSV, what an operator pays from (needs an "
            "operator's key).",
        ),
    ] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a Qubic address earned: today, over 7 and 30 days, and in all (charges for its
    workers' jobs, less refunds)."""
    params: dict[str, float] = {}
    if since:
        try:
            day = datetime.datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
        except ValueError as exc:
            raise typer.BadParameter(f"{since!r} is not a day: write it as 2026-11-01") from exc
        params["since"] = day.timestamp()
    with connect(server, api_key) as client:
        found = client.call("GET", f"/api/earnings/{address}", params=params)
    if csv_out:
        if found.get("lines") is None:
            raise QubixError(
                "the lines of an address are shown to an operator's key or a worker token of "
                "that address only, and the key used is neither: give one with --api-key"
            )
        writer = csv.writer(sys.stdout, lineterminator="\n")
        fields = ["at", "kind", "jobId", "workerId", "account", "pricePerHour", "seconds"]
        writer.writerow([*fields, "amount"])
        for line in found["lines"]:
            at = datetime.datetime.fromtimestamp(line["at"], datetime.UTC)
            sign = -1 if line["kind"] == "refund" else 1
            row = [at.isoformat(timespec="seconds"), *(line.get(f, "") for f in fields[1:])]
            writer.writerow([*row, f"{sign * line['amount']:.6f}"])
        return
    if as_json:
        _echo_json(found)
        return
    console.print(safe(f"earnings of {address}" + (f" since {since}" if since else "")))
    for label, key in (
        ("today", "today"),
        ("7 days", "last7Days"),
        ("30 days", "last30Days"),
        ("in all" if since else "all time", "allTime"),
    ):
        console.print(f"  {label:<9} {amount(found[key])}")
    console.print(f"  from {found['jobs']} job(s)")
