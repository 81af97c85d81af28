"""The record of every forward, on the aggregator store's SQLAlchemy ``metadata``.

``ng112_incidents`` holds one row per forwarded incident (the key of its data-request links
and the CAP reference of its first message); ``forwards`` holds one row per alert to be sent,
with its outcome. A row is never deleted: a failure ends as ``failed``, for an operator.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import JSON, Column, DateTime, Engine, Float, Index, Integer, String, Table, Text, select, update

from s4edge.cloud_sync.aggregator.store import LATER, metadata

# pending → sending → delivered | retrying → … | failed; awaiting_confirm → pending | dismissed | unconfirmed.
# While a row is "sending", its due_at is the end of the claim: a claim that outlives it (the
# process died mid-send) is taken back by the next claim step, as a failed attempt. An Update
# that brought new readings only waits, pending, and a later message of its incident that
# came before it went supersedes it: pending → merged, never sent (pacing.py).
STATES: Final = (
    "awaiting_confirm",
    "pending",
    "sending",
    "retrying",
    "delivered",
    "failed",
    "dismissed",
    "unconfirmed",
    "skipped",
    "merged",
)
OPEN_STATES: Final = ("awaiting_confirm", "pending", "sending", "retrying")

incidents = Table(
    "ng112_incidents",
    metadata,
    Column("incident", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    # Releases before the signed links sent this in every CAP (readings?token=…): never a key now.
    Column("token", String(64), nullable=False),
    # Signs the PSAP data-request links (readings.py) and never leaves the aggregator; an
    # incident from before it gets one at its next message (forwarder.link_key_of).
    Column("link_key", String(64), info={LATER: True}),
    Column("mode", String(16), nullable=False),
    Column("first_sender", String(255)),
    Column("first_identifier", String(128)),
    Column("first_sent", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

forwards = Table(
    "forwards",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("incident", String(64), nullable=False),
    Column("alert_id", String(64), nullable=False, unique=True),  # one forward per alert: de-dup
    Column("ordinal", Integer, nullable=False),  # order within the incident: Alert, then Updates, then Cancel
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("alert_state", String(8), nullable=False),
    Column("status", String(16), nullable=False),  # CAP status: Actual / Exercise / Test
    Column("alert", JSON, nullable=False),  # the alert itself, so a retry survives a restart
    Column("state", String(20), nullable=False),
    Column("msg_type", String(8)),
    Column("cap_identifier", String(128)),
    # With cap_identifier, the CAP 1.2 §3.2.1 reference (sender,identifier,sent) of the message as
    # it went out, which a later message of the incident references: never made again from the
    # config, whose sender may have changed since.
    Column("cap_sender", String(255), info={LATER: True}),
    Column("cap_sent", String(32), info={LATER: True}),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("confirm_by", DateTime(timezone=True)),
    Column("decided_by", String(64)),
    Column("sent_at", DateTime(timezone=True)),
    Column("answered_at", DateTime(timezone=True)),
    Column("code", Integer),
    Column("reason", Text),
    Column("alertmsg_error", Text),
    Column("latency_ms", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("transport", String(8)),
    Index("ix_forwards_incident", "incident", "created_at"),
    Index("ix_forwards_due", "state", "due_at"),
    # one message per place in an incident: two replicas recording an incident's next alert
    # at once both counted the same ordinal, and its Update and Cancel went out of order
    Index("ux_forwards_incident_ordinal", "incident", "ordinal", unique=True, info={LATER: True}),
)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def forward_dict(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data.pop("alert", None)
    for key in ("created_at", "due_at", "confirm_by", "sent_at", "answered_at"):
        moment = _aware(data.get(key))
        data[key] = moment.isoformat() if moment else None
    return data


def new_token() -> str:
    return secrets.token_urlsafe(24)


def list_forwards(engine: Engine, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
    query = select(forwards).order_by(forwards.c.created_at.desc(), forwards.c.id).limit(limit)
    if state is not None:
        query = query.where(forwards.c.state == state)
    with engine.connect() as conn:
        return [forward_dict(row) for row in conn.execute(query)]


def get_forward(engine: Engine, forward_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(forwards).where(forwards.c.id == forward_id)).first()
    return forward_dict(row) if row else None


def claim(
    engine: Engine,
    forward_id: str,
    expected: tuple[str, ...],
    new_state: str,
    *,
    due_by: datetime | None = None,
    **values: Any,
) -> bool:
    """Move a forward from one of ``expected`` to ``new_state``; False if another worker won.

    With ``due_by``, only a row whose ``due_at`` is not later than it moves (a lapsed claim)."""
    condition = [forwards.c.id == forward_id, forwards.c.state.in_(expected)]
    if due_by is not None:
        condition.append(forwards.c.due_at <= due_by)
    with engine.begin() as conn:
        done = conn.execute(update(forwards).where(*condition).values(state=new_state, **values))
    return bool(done.rowcount)


def take_back_lapsed(engine: Engine, now: datetime, max_attempts: int) -> list[tuple[str, str]]:
    """Rows still "sending" after their claim ended were lost mid-send (the process died, or
    recording the outcome failed): each counts as a failed attempt and goes again, or ends
    ``failed`` on its last attempt. Returns (id, new state) for each row taken back."""
    with engine.connect() as conn:
        lapsed = conn.execute(
            select(forwards.c.id, forwards.c.attempts).where(forwards.c.state == "sending", forwards.c.due_at <= now)
        ).all()
    taken = []
    for forward_id, attempts in lapsed:
        state = "failed" if attempts + 1 >= max_attempts else "retrying"
        reason = "the sender stopped before recording an outcome (claim lapsed)"
        if claim(engine, forward_id, ("sending",), state, due_by=now, attempts=attempts + 1, due_at=now, reason=reason):
            taken.append((forward_id, state))
    return taken
