"""Whether the worker rests now: the provider paused it (`qubix worker pause`, a file in
the state dir: state.py) or its preferences say to take no work (outside its schedule, on
battery, the computer in use, a GPU too hot: guest.py). A pause that the preferences call
for hands the running jobs back, as `pause --hand-back` does.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from qubix_cli.worker import guest, state

log = logging.getLogger("qubix.worker")
PAUSED_REASON = "by the provider"
PREFERENCES_CHECK_S = 10.0


class Pausing:
    """The pause in force (`pause`: its `reason`, `until` and `handBack`), kept up to date
    by `check`, which the worker loop calls whenever it would take a job."""

    def __init__(self, state_dir: str, idle_only: bool) -> None:
        self.home = state_dir
        self.idle_only = idle_only  # as registered
        self.pause: dict[str, Any] | None = None  # the provider's `pause`, while in force
        self.rest_reason: str | None = None  # why the preferences say rest, when they do
        self.rest_checked = 0.0  # when the preferences were last looked at
        self.prefs_problem: str | None = None  # what is wrong with them, said once

    def asked(self) -> bool:
        """Whether a `pause` file is there (cheap: for a wait to look at often)."""
        return os.path.exists(os.path.join(self.home, state.PAUSE_FILE))

    def reason(self) -> str:
        """Why the worker is paused, in the marketplace's words."""
        return (self.pause or {}).get("reason") or PAUSED_REASON

    def heartbeat(self) -> dict[str, Any]:
        """What a heartbeat says of the pause in force (nothing when there is none)."""
        pause = self.pause
        if pause is None:
            return {}
        said = {"status": "paused", "pausedReason": pause["reason"]}
        if pause.get("until"):
            said["pausedUntil"] = pause["until"]
        return said

    def check(self, usage: dict[str, Any] | None) -> bool:
        """Look at the pause file and the preferences (`usage`: what the last heartbeat
        said, for the GPUs' heat); whether a pause began or ended (it is logged)."""
        pause = state.paused(self.home, time.time())
        if pause is not None:
            pause = {**pause, "reason": PAUSED_REASON}
        elif self._preferences_say_rest(usage):
            pause = {"until": None, "handBack": True, "reason": self.rest_reason}
        changed = (pause or {}).get("reason") != (self.pause or {}).get("reason")
        if changed:
            if pause:
                log.info("paused: %s", pause["reason"])
            else:
                log.info("taking jobs again")
        self.pause = pause
        return changed

    def _preferences_say_rest(self, usage: dict[str, Any] | None) -> bool:
        """Whether the provider's preferences (guest.py) say to take no work now. Looked at
        every 10 s at most."""
        now = time.monotonic()
        if now - self.rest_checked < PREFERENCES_CHECK_S:
            return self.rest_reason is not None
        self.rest_checked = now
        try:
            prefs = guest.load_strict(self.home)
        except guest.PreferenceError as exc:  # a hand edit gone wrong: as if there were none
            if str(exc) != self.prefs_problem:
                log.error("preferences ignored until fixed: %s", exc)
            self.prefs_problem, prefs = str(exc), {}
        else:
            self.prefs_problem = None
        if bool(prefs.get("idleMinutes")) != self.idle_only:
            self.idle_only = not self.idle_only
            log.info("idle-only is now %s: registering again to say so", self.idle_only)
        if not prefs:
            self.rest_reason = None
            return False
        battery = guest.on_battery() if prefs.get("notOnBattery") else None
        idle = guest.idle_seconds(time.time()) if prefs.get("idleMinutes") else None
        temp = guest.hottest_c(usage)
        self.rest_reason = guest.reason_to_rest(
            prefs, time.localtime(), battery, temp, self.rest_reason, idle
        )
        return self.rest_reason is not None
