"""The node's threads towards systemd: which ones it needs, and the watchdog ping
(sd_notify ``WATCHDOG=1``) that is sent only while each of them is alive and, where the
loop stamps its progress, has made some lately. A dead or stalled thread silences the
ping, and systemd restarts the agent after the unit's ``WatchdogSec``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from s4edge.edge.health import ServiceNotifier

log = logging.getLogger(__name__)

# Half the shipped unit's WatchdogSec=60: a loop that stamps its progress at least once a
# second (the uplink's) and then none for this long is stuck (a hung disk, a wedged TLS
# handshake), and systemd restarts the agent a WatchdogSec later.
STALL_AFTER_S = 30.0

Progress = Callable[[], float | None]
"""When a loop last made progress (``time.monotonic()``); None when its thread has ended."""


def alive(is_alive: Callable[[], bool]) -> Progress:
    """The progress of a loop that stamps none: "now" for as long as its thread runs."""
    return lambda: time.monotonic() if is_alive() else None


class Watchdog:
    """The threads the node needs, by name, and the ping that depends on them."""

    def __init__(self, notifier: ServiceNotifier, stall_after_s: float = STALL_AFTER_S) -> None:
        self.notifier = notifier
        self.stall_after_s = stall_after_s
        self._watched: dict[str, Progress] = {}
        self._lock = threading.Lock()  # sources come and go with a config reload
        self._withheld_for: list[str] = []

    def watch(self, name: str, progress: Progress) -> None:
        with self._lock:
            self._watched[name] = progress

    def forget(self, name: str) -> None:
        with self._lock:
            self._watched.pop(name, None)

    def problems(self) -> list[str]:
        """What keeps the ping back: each thread that has ended or stalled."""
        with self._lock:
            watched = sorted(self._watched.items())
        now = time.monotonic()
        found = []
        for name, progress in watched:
            at = progress()
            if at is None:
                found.append(f"{name}: not running")
            elif now - at > self.stall_after_s:
                found.append(f"{name}: no progress for {now - at:.0f} s")
        return found

    def ping(self) -> bool:
        """``WATCHDOG=1`` if every watched thread is well; True when it was sent."""
        problems = self.problems()
        if [p.split(":")[0] for p in problems] != [p.split(":")[0] for p in self._withheld_for]:
            if problems:  # logged when the set of culprits changes, not on every tick
                log.error("systemd watchdog ping withheld: %s", "; ".join(problems))
            else:
                log.warning("systemd watchdog ping resumed")
        self._withheld_for = problems
        return not problems and self.notifier.watchdog()
