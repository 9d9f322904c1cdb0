"""Running the coordinator as a process: what `qubix serve` does around `create_app`.

uvicorn serves the app with `DeadlineProtocol` (a request must arrive in full within a
deadline), the collector is tuned for tens of thousands of open connections, and the
open-file limit is raised to what the system allows, since each connection is a descriptor.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import logging
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from qubix_cli.server.protocol import DeadlineProtocol

if TYPE_CHECKING:
    from qubix_cli.server.app import Coordinator

log = logging.getLogger("qubix.server")


def serve(app: Coordinator, host: str, port: int) -> None:
    """Serve `app` until stopped (Ctrl+C or SIGTERM: long-polls are answered at once, and
    other requests have five seconds to finish)."""
    import uvicorn  # imported here: importing the app's modules stays light

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.stop()  # answered as the connections close, after this
            await super().shutdown(sockets)

    raise_descriptor_limit()
    tune_garbage_collector()
    # Per-request access lines would be mostly heartbeats; the server logs events instead.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn's lines go through the handler `configure_logging` set
        access_log=False,
        http=DeadlineProtocol,
        timeout_graceful_shutdown=5,
    )
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: an interrupt is a stop
        server.run()
    if not server.started:  # the port was taken, say: uvicorn said why
        sys.exit(uvicorn.config.STARTUP_FAILURE)


# Fields a record may carry (`extra=`) that a JSON line shows: ids and states, never secrets.
LOG_FIELDS = ("event", "workerId", "jobId", "status", "attempt", "url", "dataDir")


class JsonLines(logging.Formatter):
    """One JSON object a line, for log shippers: `at`, `level`, `logger`, `message`, and
    the record's `LOG_FIELDS`."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line = {
            "at": at.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: getattr(record, k) for k in LOG_FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(log_format: str) -> None:
    """Log lines to stderr, as text or (`json`) as JSON lines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def raise_descriptor_limit() -> None:
    """Lift the soft open-file limit to the hard one (often 1,024 -> much more): 10,000
    workers each hold a connection."""
    try:
        import resource
    except ImportError:  # Windows has no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


def tune_garbage_collector() -> None:
    """Keep collector pauses short with 10,000 connections open.

    Each open long-poll holds about 140 tracked objects (coroutines, futures, the protocol),
    so 10,000 workers mean 1.4 million objects that live for seconds. CPython's collector
    rescans survivors in its older generations, and its young collections are triggered by
    allocation counts that connections ending elsewhere keep resetting: passes over hundreds
    of thousands of objects held the event loop for up to a second. Measured under uvloop,
    requests leave no cyclic garbage (heartbeats, long-polls answered or abandoned,
    submissions: 0 objects). So the automatic collector is off; a thread collects the young
    generation ten times a second and moves what survived out of the collector's view
    (`gc.freeze()`): it is still freed by reference counting as usual, and each pause covers
    only the objects made in the last 100 ms. The loaded registry is frozen at start.
    """
    gc.freeze()
    gc.disable()

    def collect_young() -> None:
        while True:
            time.sleep(0.1)
            gc.collect(0)
            gc.freeze()

    threading.Thread(target=collect_young, name="young-gc", daemon=True).start()
