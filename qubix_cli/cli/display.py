"""How providers look in the terminal (Rich): one panel, or a fleet table."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Column, Table

ServerOpt = Annotated[
    str | None,
    typer.Option(
        help="The coordinator's URL \\[default: QUBIX_SERVER, the config file, "
        "else http://127.0.0.1:8000].",
        show_default=False,
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        help="An API key \\[default: QUBIX_API_KEY, else the key `qubix login` stored].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

STATUS_COLOURS = {
    "online": "green",
    "busy": "yellow",
    "paused": "blue",
    "offline": "red",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}


# C0 and C1 controls, DEL, and the bidirectional overrides and isolates.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plural(count: int, noun: str) -> str:
    """'1 provider', '2 providers'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def duration(seconds: float) -> str:
    """'45 seconds', '1 minute', '2.5 minutes'."""
    if seconds < 120:
        return f"{seconds:g} second" + ("" if seconds == 1 else "s")
    return f"{seconds / 60:g} minutes"


def safe(text: str) -> str:
    """Text from elsewhere (a server, a worker's result), ready for Rich: control
    characters are shown as escapes (\\x1b, \\u202e), never obeyed by the terminal, and
    brackets are never read as markup."""
    return escape(_CONTROLS.sub(lambda m: ascii(m.group())[1:-1], text))


def status(value: str) -> str:
    colour = STATUS_COLOURS.get(value, "cyan")
    return f"[{colour}]{safe(value)}[/{colour}]"


def gpus(provider: dict[str, Any]) -> str:
    items = [
        f"{g['model']} ({g['vramMb'] / 1024:.0f} GB{' shared' if g.get('sharedMemory') else ''})"
        for g in provider.get("gpus", [])
    ]
    return safe(", ".join(items) or "no GPU")


def user_code(provider: dict[str, Any]) -> str:
    """Whether it runs renters' own code, and how (the marketplace page says the same)."""
    if "command" not in provider.get("capabilities", []):
        return "no"
    return "sandboxed" if provider.get("sandbox") == "bubblewrap" else "[red]unsandboxed[/red]"


def trust_text(trust: dict[str, Any]) -> str:
    """The claim, the reputation and its parts (docs/trust.md), on one line."""
    if not trust:
        return "-"
    state = "[red]quarantined[/red], " if trust.get("quarantined") else ""
    t = {key: trust.get(key, 0) for key in ("canariesPassed", "canariesFailed", "completed")}
    t.update(failed=trust.get("failed", 0), lost=trust.get("lost", 0))
    return (
        f"{state}claim {safe(str(trust.get('claim', '?')))}, "
        f"reputation {float(trust.get('reputation', 0)):.2f} "
        f"(checks passed {t['canariesPassed']}, failed {t['canariesFailed']}; "
        f"jobs completed {t['completed']}, failed {t['failed']}, lost {t['lost']})"
    )


def ago(at: float | None) -> str:
    if at is None:
        return "never"
    seconds = max(0, int(datetime.datetime.now().timestamp() - at))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def _agent(provider: dict[str, Any]) -> str:
    version = str(provider.get("agentVersion") or "?")
    failed = provider.get("failedUpdates") or []
    text = (
        f"{version} (outdated: the server ships a newer one)"
        if provider.get("outdated")
        else version
    )
    return text + (f"; rolled back from {', '.join(failed)}" if failed else "")


def provider_panel(provider: dict[str, Any], title: str) -> Panel:
    table = Table.grid(padding=(0, 2))
    cpu = provider.get("cpu", {})
    price = provider.get("pricePerHour")
    rows = [
        ("worker id", safe(provider["workerId"])),
        ("name", safe(provider.get("name") or "-")),
        ("status", status(provider["status"])),
        ("GPUs", gpus(provider)),
        ("CPU", safe(f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} cores")),
        ("RAM", f"{provider.get('ramMb', 0) / 1024:.0f} GB"),
        ("location", safe(provider.get("location") or "-")),
        ("price", "-" if price is None else f"{price:g} per hour"),
        ("address", safe(provider["qubicAddress"])),
        ("last seen", ago(provider.get("lastSeenAt"))),
        ("trust", trust_text(provider.get("trust") or {})),
        ("agent", safe(_agent(provider))),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    return Panel(table, title=title, border_style="green")


def fleet_table(providers: list[dict[str, Any]]) -> Table:
    table = Table(
        Column("worker id", overflow="fold"),
        "status",
        "GPUs",
        "renters' code",
        "CPU cores",
        "RAM",
        "location",
        "price",
        "last seen",
        Column("current jobs", overflow="fold"),
        "agent",
    )
    for p in providers:
        price = p.get("pricePerHour")
        table.add_row(
            safe(p["workerId"]),
            status(p["status"]),
            gpus(p),
            user_code(p),
            str(p.get("cpu", {}).get("cores", "?")),
            f"{p.get('ramMb', 0) / 1024:.0f} GB",
            safe(p.get("location") or "-"),
            "-" if price is None else f"{price:g}",
            ago(p.get("lastSeenAt")),
            safe(", ".join(p.get("currentJobIds") or []) or "-"),
            safe(str(p.get("agentVersion") or "?"))
            + (" [yellow]outdated[/yellow]" if p.get("outdated") else ""),
        )
    return table
