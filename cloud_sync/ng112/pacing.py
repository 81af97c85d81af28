"""When the later messages of an incident on its way to the PSAP are due: its Updates' pace.

A node updates an incident every 5 s while its readings change (edge/alerts.py). Sent as
they came, those were 12 CAP Updates a minute on a call-taker's screen, each one like the
last but for a number. So each later message of an incident (``Pacing.place``):

- that changes what the call-taker sees (``cap.gist``: status, event, severity, the
  headline's wording, the area) is due at once, and so is the end, the CAP Cancel;
- that brings new readings only waits until ``update_interval_s`` after the incident's last
  message. A newer alert supersedes it while it waits: the waiting row ends ``merged``, its
  reason naming that alert, whose message carries the latest state on. A newer reading
  takes the wait's due time over; a change or the end goes at once, the readings with it.

Nothing of this is held in memory: a waiting Update is a stored ``pending`` row due after it
was recorded (``WAITING``), so it survives a restart and goes at its time, and an end taken
after a restart merges it as any other does. Every alert keeps its own row (one per alert
id), so the record shows each alert and what became of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, not_, select, update

from s4edge.cloud_sync.aggregator.views import utc
from s4edge.cloud_sync.messages import Alert
from s4edge.cloud_sync.ng112.cap import gist
from s4edge.cloud_sync.ng112.records import OPEN_STATES, forwards

# Only an Update placed here is pending and due after it was recorded without anyone's
# decision: an operator's confirm or a confirmation's timeout makes a row due later too.
WAITING = and_(
    forwards.c.state == "pending",
    forwards.c.decided_by.is_(None),
    forwards.c.due_at > forwards.c.created_at,
)


def is_waiting(row: Any) -> bool:
    """``WAITING``, for a forward row read before its claim."""
    return bool(row.state == "pending" and row.decided_by is None and row.due_at > row.created_at)


@dataclass
class _Incident:
    gist: tuple[str, ...] | None  # of its latest message not merged (None: not readable)
    last_sent: datetime | None  # when its last message was sent, the last attempt's time
    on_its_way: bool  # a message is due, or being sent or retried (one that waits aside)
    waiting: dict[str, Any] | str | None = None  # its waiting Update: a row of this batch, or a stored row's id


class Pacing:
    """The pace of the messages that one transaction records (``Forwarder._record_once``):
    what it reads of the ``named`` incidents costs three queries, whatever the batch's size."""

    def __init__(self, conn: Connection, named: Collection[str], now: datetime, interval_s: float) -> None:
        self.conn = conn
        self.now = now
        self.interval = timedelta(seconds=interval_s)
        self._incidents = self._load(named)

    def _load(self, named: Collection[str]) -> dict[str, _Incident]:
        mine = forwards.c.incident.in_(named)
        on_its_way = case((and_(forwards.c.state.in_(OPEN_STATES), not_(WAITING)), 1), else_=0)
        stats = select(forwards.c.incident, func.max(forwards.c.sent_at), func.sum(on_its_way)).where(mine)
        last = (
            select(forwards.c.incident, func.max(forwards.c.ordinal).label("ordinal"))
            .where(mine, forwards.c.state != "merged")
            .group_by(forwards.c.incident)
            .subquery()
        )
        latest = select(forwards.c.incident, forwards.c.alert).join(
            last, and_(forwards.c.incident == last.c.incident, forwards.c.ordinal == last.c.ordinal)
        )
        found = {
            incident: _Incident(None, None if sent is None else utc(sent), bool(going))
            for incident, sent, going in self.conn.execute(stats.group_by(forwards.c.incident))
        }
        for incident, alert in self.conn.execute(latest):
            # one recorded unreadable (forwarder._record_unreadable) has no gist: whatever comes differs
            with contextlib.suppress(ValueError):
                found[incident].gist = gist(Alert.model_validate(alert))
        for incident, forward_id in self.conn.execute(select(forwards.c.incident, forwards.c.id).where(mine, WAITING)):
            found[incident].waiting = forward_id
        return found

    def place(self, alert: Alert, row: dict[str, Any]) -> None:
        """Set ``row["due_at"]`` for the message ``alert`` comes to; an Update waiting before it
        is merged into it (in ``row``'s batch, or by a conditional UPDATE of the stored row)."""
        seen = gist(alert)
        known = self._incidents.get(alert.incident)
        if known is None:  # the incident's first message: it goes as recorded
            self._incidents[alert.incident] = _Incident(seen, None, on_its_way=True)
            return
        readings_only = alert.state != "end" and seen == known.gist and self.interval > timedelta(0)
        due = self._merge_waiting(known, alert.id)  # when the wait it takes over ends
        if not readings_only:
            due = self.now
        elif due is None:
            if known.on_its_way:  # it goes about now (or later: ``held_back`` looks again)
                due = self.now + self.interval
            elif known.last_sent is not None:
                due = known.last_sent + self.interval
            else:  # nothing reached the PSAP, and nothing will: it goes its way at once
                due = self.now
        row["due_at"] = max(due, self.now)
        known.gist = seen
        if row["due_at"] > self.now:
            row["reason"] = f"new readings only: at most one Update per {self.interval.total_seconds():g} s"
            known.waiting = row
        else:
            known.on_its_way = True

    def _merge_waiting(self, known: _Incident, alert_id: str) -> datetime | None:
        """Merge the incident's waiting Update into the message of ``alert_id``: when it was due,
        or None if none waits (or a claim took it meanwhile: it is on its way)."""
        waiting, known.waiting = known.waiting, None
        reason = f"merged: a later message carries its state on, that of alert {alert_id}"
        if isinstance(waiting, dict):
            waiting.update(state="merged", reason=reason)
            due: datetime = waiting["due_at"]
            return due
        if waiting is None:
            return None
        merged = self.conn.execute(
            update(forwards)
            .where(forwards.c.id == waiting, WAITING)
            .values(state="merged", reason=reason)
            .returning(forwards.c.due_at)
        ).scalar()
        if merged is None:
            known.on_its_way = True
            return None
        return utc(merged)


def held_back(engine: Engine, row: Any, now: datetime, interval_s: float) -> datetime | None:
    """When a waiting Update about to go may go, if not now: ``interval_s`` after its
    incident's last message, which went later than foreseen (an Alert that waited for an
    operator's confirmation, or retried)."""
    if not is_waiting(row):
        return None
    with engine.connect() as conn:
        last = conn.execute(select(func.max(forwards.c.sent_at)).where(forwards.c.incident == row.incident)).scalar()
    if last is None or utc(last) + timedelta(seconds=interval_s) <= now:
        return None
    return utc(last) + timedelta(seconds=interval_s)
