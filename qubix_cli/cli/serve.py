"""`qubix serve`: run the coordinator."""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from qubix_cli.installer.render import validate_server_url
from qubix_cli.server.settings import (
    API_KEY_FILE,
    Settings,
    default_data_dir,
    load_or_create_api_key,
    parse_duration,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)  # paths stay whole


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="QUBIX_DATA_DIR",
            help="Where the database, journal and API key live "
            "\\[default: the platform's user data dir, ~/.local/share/qubix on Linux].",
            show_default=False,
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            envvar="QUBIX_DATABASE_URL",
            help="A PostgreSQL database (postgresql://user:password@host/name) to keep the "
            "fleet in, shared by every server started on it; without it, the embedded "
            "store in the data dir. Needs pip install 'qubix\\[postgres]'.",
            show_default=False,
        ),
    ] = None,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            min=0.2, max=3600, help="Seconds between worker heartbeats; offline after 3 missed."
        ),
    ] = 30.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="QUBIX_API_KEY",
            help="API key for job endpoints \\[default: created in the data dir on first start].",
            show_default=False,
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="The URL workers and browsers reach this server at (behind a proxy: the "
            "proxy's). Installers default to it and refuse any other backend "
            "\\[default: none; installers follow the request's Host header].",
            show_default=False,
        ),
    ] = None,
    allow_backend: Annotated[
        list[str] | None,
        typer.Option(
            help="Another coordinator URL that installers may be built for (with "
            "--public-url; repeat for more).",
            show_default=False,
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            help="A reverse proxy's address whose X-Forwarded-For is believed for the "
            "client's IP (repeat for more) \\[default: none; the client is the socket's peer].",
            show_default=False,
        ),
    ] = None,
    max_registrations_per_minute: Annotated[
        int,
        typer.Option(min=0, help="New workers a client IP may register a minute (0: no limit)."),
    ] = 30,
    max_providers_per_ip: Annotated[
        int,
        typer.Option(
            min=0,
            help="Registered providers per client IP; raise it for a farm behind one NAT "
            "(0: no limit).",
        ),
    ] = 64,
    forget_offline_after: Annotated[
        str,
        typer.Option(
            help="Remove providers offline this long (30d, 12h, 4s; browser providers after "
            "a day at most).",
        ),
    ] = "30d",
    retention: Annotated[
        str,
        typer.Option(
            help="Keep finished jobs, their logs and output files this long (30d, 12h, 4s)."
        ),
    ] = "30d",
    max_input_mb: Annotated[
        int, typer.Option(min=1, help="The largest input file a renter may upload, in MiB.")
    ] = 1024,
    max_output_mb: Annotated[
        int, typer.Option(min=1, help="The largest output file of a job, in MiB.")
    ] = 1024,
    max_job_outputs_mb: Annotated[
        int, typer.Option(min=1, help="All output files of one job together, in MiB.")
    ] = 4096,
    renter_storage_mb: Annotated[
        int,
        typer.Option(
            min=0,
            help="The MiB of inputs a renter account may keep uploaded, unless its quota "
            "says otherwise (qubix accounts quota NAME --max-storage-mb N); 0: no limit.",
        ),
    ] = 10240,
    min_free_mb: Annotated[
        int,
        typer.Option(
            min=0,
            help="Refuse uploads (507) while the data dir's disk has less than this free, "
            "so that jobs, registrations and reports still fit; 0: off.",
        ),
    ] = 1024,
    allow_input_network: Annotated[
        list[str] | None,
        typer.Option(
            help="A network (CIDR, e.g. 10.1.0.0/16) that URL inputs may come from besides "
            "public addresses: a mirror of your own (repeat for more).",
            show_default=False,
        ),
    ] = None,
    secrets_min_reputation: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Jobs that carry secrets (env) go only to workers with at least this "
            "reputation, unless the renter sets requirements.minReputation itself.",
        ),
    ] = 0.5,
    replication_floor: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="verify: replicate jobs of a trusted worker are run again elsewhere at least "
            "this often (a worker without a record: always).",
        ),
    ] = 0.05,
    replica_prefix: Annotated[
        str,
        typer.Option(
            help="Replicas of one job come from different networks of this size: IPv4 and "
            "IPv6 prefix lengths (32,128 for a lab on one LAN: only different addresses).",
        ),
    ] = "24,48",
    preempt_share: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="A worker's hand-backs (its preferences stopped a job) past this share of "
            "the jobs it was given count as failures in its record.",
        ),
    ] = 0.2,
    max_price: Annotated[
        float,
        typer.Option(
            min=0,
            max=1_000_000,
            help="The most a provider may ask an hour; a job without maxPricePerHour holds "
            "this price for its whole timeout from its renter's balance.",
        ),
    ] = 1000.0,
    update_rollout: Annotated[
        int,
        typer.Option(
            min=0,
            max=100,
            help="Offer the worker update this server ships to this share of the older workers "
            "(percent; the same workers each time), to stage it.",
        ),
    ] = 100,
    min_agent_version: Annotated[
        str | None,
        typer.Option(
            help="Turn away workers older than this version (426, with the update offered).",
            show_default=False,
        ),
    ] = None,
    metrics_public: Annotated[
        bool,
        typer.Option(
            "--metrics-public",
            help="Serve GET /metrics to anyone (by default: to an operator's key only).",
        ),
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(help="Log lines as text, or as one JSON object a line (for log shippers)."),
    ] = LogFormat.text,
    canaries: Annotated[
        bool,
        typer.Option(
            help="Check workers with canaries, verifiable jobs whose answer the server knows "
            "(off only for a fleet of your own machines)."
        ),
    ] = True,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Another page's origin (https://host) that may open the events stream "
            "(repeat for more; this server's own pages always may).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the coordinator: provider registry, job queue and events over HTTP."""
    from qubix_cli.server.app import create_app  # the server stack, only for this command
    from qubix_cli.server.runtime import configure_logging
    from qubix_cli.server.runtime import serve as run_server

    configure_logging(log_format.value)
    # With JSON logs every line is JSON: what is said at start goes to the log as well.
    say = console.print if log_format == LogFormat.text else _log_line
    database_url = _database(database, say) if database else None  # before anything is made
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    if api_key is None:
        api_key, created = load_or_create_api_key(data_dir)
        # The key itself only to a terminal, never into a log that journald or CI keeps.
        if created and console.is_terminal and log_format == LogFormat.text:
            console.print(f"Created the API key (shown once): [bold]{api_key}[/bold]")
        elif created:
            say("Created the API key; read it from its file (mode 0600).")
        say(escape(f"API key file: {data_dir / API_KEY_FILE}"))
    settings = Settings(
        data_dir=data_dir,
        heartbeat_interval_s=heartbeat_interval,
        api_key=api_key,
        public_url=validate_server_url(public_url) if public_url else None,
        allow_backends=tuple(validate_server_url(url) for url in allow_backend or ()),
        allow_origins=tuple(validate_server_url(url) for url in allow_origin or ()),
        trusted_proxies=tuple(trusted_proxy or ()),
        max_registrations_per_minute=max_registrations_per_minute,
        max_providers_per_ip=max_providers_per_ip,
        forget_offline_after_s=parse_duration(forget_offline_after),
        retention_s=parse_duration(retention),
        max_input_bytes=max_input_mb * 2**20,
        max_output_bytes=max_output_mb * 2**20,
        max_job_outputs_bytes=max_job_outputs_mb * 2**20,
        renter_storage_mb=renter_storage_mb,
        min_free_mb=min_free_mb,
        input_networks=tuple(_network(text) for text in allow_input_network or ()),
        canaries=canaries,
        secrets_min_reputation=secrets_min_reputation,
        replication_floor=replication_floor,
        replica_prefix=_replica_prefix(replica_prefix),
        preempt_share=preempt_share,
        max_price_per_hour=max_price,
        metrics_public=metrics_public,
        update_rollout=update_rollout,
        min_agent_version=_version(min_agent_version) if min_agent_version else None,
        log_format=log_format.value,
        database_url=database_url,
    )
    app = create_app(settings)
    say(escape(f"Data directory: {data_dir}"))
    logging.getLogger("qubix.server").info(
        "Qubix coordinator on http://%s:%d (Ctrl+C to stop)",
        host,
        port,
        extra={"event": "START", "url": f"http://{host}:{port}", "dataDir": str(data_dir)},
    )
    if public_url is None:
        say(
            "Installers point workers at the address each request came to (its Host "
            "header); set --public-url to fix it."
        )
    run_server(app, host, port)


def _database(url: str, say: Callable[[str], None]) -> str:
    """A PostgreSQL URL, reachable, its schema migrated; said on the console."""
    from qubix_cli.server.pgstore import is_postgres_url, prepare, redacted

    if not is_postgres_url(url):
        raise typer.BadParameter(
            f"--database {redacted(url)!r}: give a postgresql://user:password@host:port/name URL "
            "(without --database the embedded store in the data dir is used)"
        )
    applied, version = prepare(url)
    now = f", migrated to version {version}" if applied else f" (schema version {version})"
    say(escape(f"Database: {redacted(url)}{now}"))
    return url


def _version(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+){0,3}", text):
        raise typer.BadParameter(f"--min-agent-version {text!r}: write a version such as 0.2.0")
    return text


def _replica_prefix(text: str) -> tuple[int, int]:
    v4, _, v6 = text.partition(",")
    if not (v4.isdigit() and v6.isdigit() and int(v4) <= 32 and int(v6) <= 128):
        raise typer.BadParameter(
            f"--replica-prefix {text!r}: write IPv4 and IPv6 prefix lengths, such as 24,48"
        )
    return int(v4), int(v6)


def _log_line(message: str) -> None:
    logging.getLogger("qubix.server").info(message)


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as exc:
        raise typer.BadParameter(f"--allow-input-network {text!r}: {exc}") from exc
