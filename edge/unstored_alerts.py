"""Alerts the outbox could not store (docs/architecture.md, "A full disk"): kept in memory,
oldest first, and stored again in that order until they are.

A source's alert that fails to commit must neither be lost nor blame the source. Raised back
into it, as it once was, the camera's tracking thread logged a traceback and its health read
``cam0 — fault: OperationalError: database or disk is full``, and an alert whose condition
had passed by the next report (a line crossed once) was never sent. So the node takes the
alert as it is, stamped with its id and time, keeps it while the disk is full, and gives
it its ``seq`` when it is stored: the stream stays in order, and only the gaps in ``seq``
tell. What is kept in memory is lost if the agent stops first (it says which).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.messages import Alert
from s4edge.cloud_sync.outbox import OutboxClosed, is_disk_full
from s4edge.edge.alerts import AlertDraft, AlertNotStored

log = logging.getLogger(__name__)

# About 3-5 KB of memory each: up to 25 MB. Past it a source's alert is refused
# (AlertNotStored) and its book raises it again at the next report.
KEPT_MAX: Final = 5000
# What the outbox raises when it cannot store now: SQLite's errors (SQLITE_FULL), the
# disk's (ENOSPC, EIO), or a closed outbox. A message the wire contract refuses is no
# such error: it would never be stored, and is not kept.
NOT_STORED: Final = (sqlite3.Error, OSError, OutboxClosed)

Store = Callable[[AlertDraft, Alert], Alert]


class UnstoredAlerts:
    """Alerts waiting in memory for the outbox. Thread-safe: every source emits through it."""

    def __init__(self, store: Store, where: str, limit: int = KEPT_MAX) -> None:
        """``store`` puts one alert in the outbox and returns it as stored (with its ``seq``),
        raising what the outbox raises; ``where`` (the outbox's path) names the disk in the log."""
        self._store = store
        self.limit = limit
        self._kept: deque[tuple[AlertDraft, Alert]] = deque()
        self._lock = threading.Lock()  # one store at a time, in order
        self._failures = FailureLog(log, f"storing alerts in {where} (kept in memory meanwhile)", expected=is_disk_full)

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, draft: AlertDraft, alert: Alert) -> None:
        """Store ``alert`` after those kept before it, or keep it when the outbox cannot store
        it now. Raises AlertNotStored when ``limit`` alerts are kept already, and what the
        outbox raises for a message it would never store (MessageError)."""
        with self._lock:
            self._retry()
            if not self._kept:
                try:
                    self._store(draft, alert)
                except NOT_STORED as exc:
                    self._failures.failed(exc)
                else:
                    return
            elif len(self._kept) >= self.limit:
                raise AlertNotStored(
                    f"{draft.kind} alert ({draft.state}) of incident {draft.incident} not stored: memory holds "
                    f"the most alerts it keeps ({len(self._kept)}) until the outbox can store them"
                )
            self._kept.append((draft, alert))

    def store(self, draft: AlertDraft, alert: Alert) -> Alert:
        """Store ``alert`` now, after those kept before it, and return it as stored; never kept:
        AlertNotStored when it cannot be stored now."""
        with self._lock:
            self._retry()
            if self._kept:
                raise AlertNotStored(
                    f"{draft.kind} alert ({draft.state}) of incident {draft.incident} not stored: "
                    f"alerts before it wait in memory for the outbox to store them ({len(self._kept)})"
                )
            try:
                return self._store(draft, alert)
            except NOT_STORED as exc:
                raise AlertNotStored(
                    f"{draft.kind} alert ({draft.state}) of incident {draft.incident} not stored: {exc}"
                ) from exc

    def retry(self) -> None:
        """Store what is kept, oldest first, up to the first that still fails."""
        with self._lock:
            self._retry()

    def _retry(self) -> None:
        if not self._kept:
            return
        stored = 0
        while self._kept:
            try:
                self._store(*self._kept[0])
            except NOT_STORED as exc:
                self._failures.failed(exc)
                return
            self._kept.popleft()
            stored += 1
        self._failures.ok()
        log.info("%d alerts kept in memory while the outbox could not store them are stored now", stored)

    def lost(self) -> list[AlertDraft]:
        """What is still kept, taken out (the node stops: nothing will store them)."""
        with self._lock:
            drafts = [draft for draft, _ in self._kept]
            self._kept.clear()
        return drafts
