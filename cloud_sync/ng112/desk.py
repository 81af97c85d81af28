"""The operator's side of NG112 forwarding: confirm, dismiss, announce, wait.

A ``ForwardDesk`` works on the store alone, so the HTTP API and the dashboard use one
whether the forwarder runs in the aggregator's process (``forwarder.Forwarder``) or in a
child process (``process.ForwarderProcess``). What it cannot do itself is send: ``wake``
tells the forwarder there is work, and each kind of forwarder says how.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from s4edge.cloud_sync.ng112.records import claim, forward_dict, forwards

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
OnChange = Callable[[dict[str, Any]], None]


class ForwardDesk:
    def __init__(
        self, engine: Engine, *, clock: Clock = lambda: datetime.now(UTC), on_change: OnChange | None = None
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.on_change = on_change
        self._changed = threading.Condition()  # notified whenever a forward changed

    def wake(self) -> None:
        """There may be work now: the forwarder looks at once instead of at its next poll."""
        raise NotImplementedError

    # -- operator decisions -------------------------------------------------------------
    def confirm(self, forward_id: str, by: str) -> bool:
        done = claim(self.engine, forward_id, ("awaiting_confirm",), "pending", decided_by=by, due_at=self.clock())
        if done:
            self.announce([forward_id])
            self.wake()
        return done

    def dismiss(self, forward_id: str, by: str) -> bool:
        done = claim(
            self.engine, forward_id, ("awaiting_confirm",), "dismissed", decided_by=by, reason="dismissed by operator"
        )
        if done:
            self.announce([forward_id])
        return done

    # -- what changed ---------------------------------------------------------------------
    def announce(self, forward_ids: list[str]) -> None:
        """Wake the waiters, and hand each forward's row as it is now to ``on_change``."""
        with self._changed:
            self._changed.notify_all()
        if self.on_change is None:
            return
        # The dashboard's view only: a failure here must not touch a forward's state, or a
        # delivered call would be taken for a failed one and sent to the PSAP again.
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(forwards).where(forwards.c.id.in_(forward_ids))).all()
            for row in rows:
                self.on_change(forward_dict(row))
        except Exception:
            log.exception("ng112: could not announce the change of forwards %s", ", ".join(forward_ids))

    def wait_for(
        self, states: tuple[str, ...], timeout: float, *, forward_id: str | None = None, alert_id: str | None = None
    ) -> dict[str, Any] | None:
        """Block until the forward (by its id or its alert's id) is in one of ``states``, or the
        timeout passes; returns its row as it then is (None if there is no such forward)."""
        which = forwards.c.id == forward_id if forward_id is not None else forwards.c.alert_id == alert_id
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            with self._changed:
                while True:
                    with self.engine.connect() as conn:
                        row = conn.execute(select(forwards).where(which)).first()
                    if (row is not None and row.state in states) or deadline.is_set():
                        return forward_dict(row) if row is not None else None
                    self._changed.wait(0.05)
        finally:
            timer.cancel()
