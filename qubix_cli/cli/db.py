"""`qubix db`: the PostgreSQL database of a coordinator that grows past one process
(docs/scaling.md): create or migrate its schema, and copy an embedded coordinator's data
into it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from qubix_cli.errors import InvalidInput

app = typer.Typer(help="The PostgreSQL database: migrate its schema, copy a data dir into it.")
console = Console(soft_wrap=True)

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database",
        envvar="QUBIX_DATABASE_URL",
        help="postgresql://user:password@host:port/name",
        show_default=False,
    ),
]


@app.command()
def migrate(database: DatabaseUrl) -> None:
    """Create or migrate the schema, as `qubix serve --database` does (safe while they run)."""
    from qubix_cli.server.pgstore import prepare, redacted

    _check_url(database)
    applied, version = prepare(database)
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    console.print(escape(f"{redacted(database)}: schema version {version} ({done})"))


@app.command()
def copy(
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="The data dir of the embedded coordinator (stop it first).",
            exists=True,
            file_okay=False,
        ),
    ],
    to: Annotated[
        str,
        typer.Option("--to", help="postgresql://... : an empty Qubix database, or a new one."),
    ],
) -> None:
    """Copy an embedded coordinator's fleet, jobs, accounts, keys and ledger into PostgreSQL."""
    from qubix_cli.server.pgstore import PostgresStore, prepare, redacted
    from qubix_cli.server.store import SNAPSHOT_NAME, TABLES, JournalStore

    _check_url(to)
    if not (source / SNAPSHOT_NAME).exists() and not list(source.glob("journal-*.jsonl")):
        raise InvalidInput(f"{source} holds no Qubix data (no {SNAPSHOT_NAME} nor journal)")
    prepare(to)

    async def run() -> dict[str, int]:
        embedded = JournalStore(source)
        target = PostgresStore(to, name="qubix db copy", listen=False)
        try:
            held = {t: await target.count(t) for t in TABLES}
            if any(held.values()):
                found = ", ".join(f"{n} {t}" for t, n in held.items() if n)
                raise InvalidInput(
                    f"{redacted(to)} already holds {found}: copy into an empty database"
                )
            copied: dict[str, int] = {}
            async with target.transaction() as tx:  # all of it, or (an error) nothing
                for table in TABLES:
                    docs = await embedded.scan(table)
                    for doc in docs:
                        tx.put(table, doc)
                    copied[table] = len(docs)
            for kind in ("liveness", "leases", "cancels"):  # leases stay renewable
                for key, value in (await embedded.recall_all(kind)).items():
                    target.remember(kind, key, value)
            await target.save_volatile()
            return copied
        finally:
            await embedded.close()
            await target.close()

    copied = asyncio.run(run())
    summary = ", ".join(f"{n} {table}" for table, n in copied.items())
    console.print(escape(f"copied {summary} from {source} to {redacted(to)}"))


def _check_url(url: str) -> None:
    from qubix_cli.server.pgstore import is_postgres_url, redacted

    if not is_postgres_url(url):
        raise InvalidInput(
            f"{redacted(url)!r} is not a postgresql://user:password@host:port/name URL"
        )
