"""The running worker's side of self-updating: the update its coordinator offers (in a
heartbeat's answer, or in a 426 refusal), whether to take it, and the versions it will not
take. Taking one (download, checks, the trial) is update.py, imported only once an update
is offered: an idle worker stays small.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from qubix_cli.worker import AGENT_VERSION
from qubix_cli.worker.client import Client

log = logging.getLogger("qubix.worker")


def offered(answer: Any) -> dict[str, Any] | None:
    """The update a 426 answer offers, if any."""
    details = answer.get("details") if isinstance(answer, dict) else None
    offer = details.get("update") if isinstance(details, dict) else None
    return offer if isinstance(offer, dict) else None


def proven(trial_file: str) -> None:
    """On trial after an update, this version came up: say so to the trial (update.py)."""
    with open(trial_file, "w") as f:
        f.write(AGENT_VERSION)
    log.info("version %s registered and heartbeated: it takes over", AGENT_VERSION)


class Updates:
    def __init__(self) -> None:
        self.offer: dict[str, Any] | None = None  # a signed update the server offers
        self.refused: set[str] = set()  # versions this worker will not take (checked once)

    def wanted(self) -> bool:
        """Whether an update is offered that this worker can and will take."""
        offer = self.offer
        if offer is None or offer.get("version") in self.refused:
            return False
        from qubix_cli.worker import update  # only when one is offered: an idle worker stays small

        if not update.older(AGENT_VERSION, str(offer.get("version"))):
            return False  # only ever forward
        if update.running_zipapp() is None:
            log.info(
                "version %s is offered; this worker runs from the qubix package, which "
                "updates with pip, not by itself",
                offer.get("version"),
            )
            self.refused.add(str(offer.get("version")))
            return False
        return True

    def take(
        self,
        api: Client,
        state_dir: str,
        run_args: list[str],
        interval_s: float,
        stop: Callable[[], None],
    ) -> bool:
        """Check the offered update and restart into it, calling `stop` first (this returns
        only if it was refused, or cannot be taken: the running version carries on)."""
        from qubix_cli.worker import update

        offer = self.offer or {}
        version = str(offer.get("version"))
        pyz = update.running_zipapp()
        if pyz is None:
            return False
        log.info("updating from %s to %s", AGENT_VERSION, version)
        try:
            update.install(api, offer, pyz, state_dir)
        except (update.Refused, OSError, KeyError, TypeError) as exc:
            log.error("the update to %s is refused: %s; %s runs on", version, exc, AGENT_VERSION)
            self.refused.add(version)
            self.offer = None
            return False
        stop()
        update.restart(pyz, run_args, version, interval_s)
        return False  # not reached: the process became the trial
