"""Incidents, the console's unit: the alerts that share an incident id, rolled up on read.

Nothing is stored twice: the list is a GROUP BY over ``alerts`` (its ``ix_alerts_incident_seq``
index covers it, so it is one index scan), ordered open first, then by last seen, and paged
with a cursor. The records of a page are built from that page's alerts alone. An incident's
acknowledgement is a row of ``incident_acks``; NG112's calls are read from its ``forwards``
table when NG112 forwarding put that table on the store's metadata (the aggregator never
imports NG112: docs/architecture.md, "Import rules").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from s4edge.cloud_sync.aggregator.store import alerts, incident_acks, metadata
from s4edge.cloud_sync.aggregator.views import alert_dict, decode_json_cursor, encode_json_cursor, fallback_title, utc
from s4edge.cloud_sync.messages import SEVERITIES

RANK = {severity: rank for rank, severity in enumerate(SEVERITIES, start=1)}
STATES = ("open", "ended")
MAX_IDS = 200  # incidents asked for by id at once (the page's live refresh)
_RANK_SQL = case(RANK, value=alerts.c.severity, else_=0)
# NG112 call states, most pressing first: the one an incident shows
CALL_ORDER = (
    "awaiting_confirm", "failed", "retrying", "sending", "pending", "unconfirmed", "delivered", "dismissed", "skipped",
    "merged",  # its state went on in a later message of the incident (ng112/pacing.py)
)  # fmt: skip


@dataclass(frozen=True)
class IncidentQuery:
    state: str | None = None  # open | ended
    severity: str | None = None  # at least this, at its peak
    kind: str | None = None
    site: str | None = None
    node: str | None = None
    since: datetime | None = None  # seen at or after (last seen ≥ since)
    until: datetime | None = None  # begun at or before (first seen ≤ until)
    ids: Sequence[str] = field(default_factory=tuple)
    limit: int = 50
    cursor: str | None = None


def encode_cursor(ended: int, last_seen: datetime, incident: str) -> str:
    return encode_json_cursor([ended, utc(last_seen).isoformat(), incident])


def decode_cursor(cursor: str) -> tuple[int, datetime, str]:
    """Raises ValueError on a cursor we did not issue."""
    return decode_json_cursor(cursor, _incident_key)


def _incident_key(values: Any) -> tuple[int, datetime, str]:
    ended, last_seen, incident = values
    if ended not in (0, 1) or not isinstance(incident, str) or len(incident) > 64 or "\x00" in incident:
        raise ValueError("not a cursor's values")  # a number no column holds reached the driver: 500
    return int(ended), utc(datetime.fromisoformat(last_seen)), incident


def ended_flag() -> Any:
    """1 for an incident (a GROUP BY over ``alerts`` by incident) whose last message is an end,
    else 0. A re-trigger within the node's cooldown continues an ended incident with an update
    (edge/alerts.py), which opens it again. Last in the node's own order, its seq: an end
    stamped before the update it follows (a clock stepped back) still ends it, and an end and an
    update of one ts cannot read both ways."""
    return case((func.max(case((alerts.c.state == "end", alerts.c.seq))) == func.max(alerts.c.seq), 1), else_=0)


def list_incidents(engine: Engine, query: IncidentQuery) -> dict[str, Any]:
    """One page: ``incidents``, ``next_cursor``, and on the first page the ``total`` and ``open``
    counts of every incident the filters let through."""
    if query.state is not None and query.state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    if query.severity is not None and query.severity not in RANK:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
    ended = ended_flag()
    grouped = select(
        alerts.c.incident.label("incident"),
        func.min(alerts.c.ts).label("first_seen"),
        func.max(alerts.c.ts).label("last_seen"),
        ended.label("ended"),
    ).group_by(alerts.c.incident)
    for column, value in ((alerts.c.site, query.site), (alerts.c.node_id, query.node), (alerts.c.kind, query.kind)):
        if value is not None:
            grouped = grouped.where(column == value)
    if query.ids:
        grouped = grouped.where(alerts.c.incident.in_(list(query.ids)[:MAX_IDS]))
    if query.state is not None:
        grouped = grouped.having(ended == (1 if query.state == "ended" else 0))
    if query.severity is not None:
        grouped = grouped.having(func.max(_RANK_SQL) >= RANK[query.severity])
    if query.since is not None:
        grouped = grouped.having(func.max(alerts.c.ts) >= utc(query.since))
    if query.until is not None:
        grouped = grouped.having(func.min(alerts.c.ts) <= utc(query.until))
    g = grouped.subquery("g")
    columns = [g.c.incident, g.c.last_seen, g.c.ended]
    first_page = not query.cursor  # "?cursor=" is the first page too
    if first_page:  # counted before the LIMIT: every incident that matches
        columns += [func.count().over().label("total"), func.sum(1 - g.c.ended).over().label("open")]
    page = select(*columns)
    if query.cursor:
        c_ended, c_last, c_incident = decode_cursor(query.cursor)
        page = page.where(
            or_(
                g.c.ended > c_ended,
                and_(
                    g.c.ended == c_ended,
                    or_(g.c.last_seen < c_last, and_(g.c.last_seen == c_last, g.c.incident < c_incident)),
                ),
            )
        )
    page = page.order_by(g.c.ended, g.c.last_seen.desc(), g.c.incident.desc()).limit(query.limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(page).all()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        records = incident_records(conn, [r.incident for r in rows])
    body: dict[str, Any] = {"incidents": records, "next_cursor": None}
    if more:
        last = rows[-1]
        body["next_cursor"] = encode_cursor(int(last.ended), last.last_seen, last.incident)
    if first_page:
        body["total"] = int(rows[0].total) if rows else 0
        body["open"] = int(rows[0].open or 0) if rows else 0
    return body


_LIST_COLUMNS = (
    alerts.c.id, alerts.c.incident, alerts.c.ts, alerts.c.state, alerts.c.severity, alerts.c.kind, alerts.c.site,
    alerts.c.node_id, alerts.c.zone, alerts.c.lat, alerts.c.lon, alerts.c.status, alerts.c.title,
)  # fmt: skip


TIMELINE_MAX = 200  # alerts in one incident's timeline: the first and the latest
ALERT_IDS_MAX = 100  # alert ids in a record: the first and the latest ("alerts" counts them all)


def incident_records(conn: Connection, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The records of these incidents, in this order (unknown ids are left out)."""
    if not ids:
        return []
    stmt = select(*_LIST_COLUMNS).where(alerts.c.incident.in_(ids)).order_by(alerts.c.seq, alerts.c.id)
    by_incident: dict[str, list[Any]] = {}
    for row in conn.execute(stmt):
        by_incident.setdefault(row.incident, []).append(row)
    acks = {
        row.incident: row
        for row in conn.execute(select(incident_acks).where(incident_acks.c.incident.in_(list(by_incident))))
    }
    calls = ng112_calls(conn, list(by_incident))
    return [_record(by_incident[i], acks.get(i), calls.get(i)) for i in ids if i in by_incident]


def _record(rows: list[Any], ack: Any, calls: dict[str, Any] | None) -> dict[str, Any]:
    first, last = rows[0], rows[-1]
    titled = [r.title for r in rows if r.title]
    peak = max((r.severity for r in rows), key=lambda s: RANK.get(s, 0))
    title = titled[-1] if titled else fallback_title(first.kind, last.zone, first.site, first.node_id)
    acked_severity = ack.acked_severity if ack is not None else None
    return {
        "incident": first.incident,
        "site": first.site,
        "node_id": first.node_id,
        "kind": first.kind,
        "zone": last.zone,
        "lat": last.lat,
        "lon": last.lon,
        "status": last.status,  # CAP status: Actual, Exercise, Test
        "state": "ended" if last.state == "end" else "open",
        "first_seen": utc(min(r.ts for r in rows)).isoformat(),  # as the list orders them
        "last_seen": utc(max(r.ts for r in rows)).isoformat(),
        "severity": last.severity,
        "peak_severity": peak,
        "title": title,
        "title_from_node": bool(titled),
        "alerts": len(rows),
        "updates": sum(1 for r in rows if r.state == "update"),
        "alert_ids": _ends([r.id for r in rows], ALERT_IDS_MAX),
        "acked_at": utc(ack.acked_at).isoformat() if ack is not None else None,
        "acked_by": ack.acked_by if ack is not None else None,
        # acknowledged, then it grew worse: the operator has not seen what it is now
        "escalated_since_ack": bool(acked_severity and RANK.get(peak, 0) > RANK.get(acked_severity, 0)),
        "ng112": calls,
    }


def ng112_calls(conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per incident, its NG112 calls by state and the most pressing one; empty without NG112."""
    forwards = metadata.tables.get("forwards")
    ids = list(ids)
    if forwards is None or not ids:
        return {}
    stmt = (
        select(forwards.c.incident, forwards.c.state, func.count().label("n"))
        .where(forwards.c.incident.in_(ids))
        .group_by(forwards.c.incident, forwards.c.state)
    )
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(stmt):
        entry = out.setdefault(row.incident, {"state": None, "calls": {}})
        entry["calls"][row.state] = int(row.n)
    for entry in out.values():
        entry["state"] = min(entry["calls"], key=lambda s: CALL_ORDER.index(s) if s in CALL_ORDER else len(CALL_ORDER))
    return out


def incident(engine: Engine, incident_id: str) -> dict[str, Any] | None:
    """The record with its ``timeline``, oldest first, measurements included: the alert that
    opened it and the latest ``TIMELINE_MAX - 1``; ``timeline_omitted`` counts those between."""
    with engine.connect() as conn:
        records = incident_records(conn, [incident_id])
        if not records:
            return None
        ordered = select(alerts).where(alerts.c.incident == incident_id)
        first = conn.execute(ordered.order_by(alerts.c.seq, alerts.c.id).limit(1)).mappings().all()
        latest = conn.execute(ordered.order_by(alerts.c.seq.desc(), alerts.c.id.desc()).limit(TIMELINE_MAX - 1))
        rows = [*first, *(row for row in reversed(latest.mappings().all()) if row["id"] != first[0]["id"])]
    omitted = records[0]["alerts"] - len(rows)
    return {**records[0], "timeline": [alert_dict(row) for row in rows], "timeline_omitted": omitted}


def _ends(items: list[str], keep: int) -> list[str]:
    """The first of ``items`` and the last ``keep - 1``: an incident a node keeps open for
    days holds thousands of updates, and no answer should grow with them."""
    return items if len(items) <= keep else [items[0], *items[len(items) - keep + 1 :]]


def ack_incident(engine: Engine, incident_id: str, by: str, now: datetime) -> dict[str, Any] | None:
    """Acknowledge the incident, and each of its alerts not acknowledged yet. A second ack keeps
    the first operator and time, unless the incident got worse since: then it acknowledges what
    the incident has become (it stayed "worse since" for good). None for an unknown incident."""
    with engine.begin() as conn:
        severities = conn.execute(select(alerts.c.severity).where(alerts.c.incident == incident_id)).scalars().all()
        if not severities:
            return None
        peak = max(severities, key=lambda s: RANK.get(s, 0))
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(incident_acks)
            .values(incident=incident_id, acked_at=now, acked_by=by, acked_severity=peak)
            .on_conflict_do_nothing(index_elements=["incident"])
        )
        acked = conn.execute(select(incident_acks.c.acked_severity).where(incident_acks.c.incident == incident_id))
        if RANK.get(acked.scalar_one(), 0) < RANK.get(peak, 0):
            conn.execute(
                update(incident_acks)
                .where(incident_acks.c.incident == incident_id)
                .values(acked_at=now, acked_by=by, acked_severity=peak)
            )
        conn.execute(
            update(alerts)
            .where(alerts.c.incident == incident_id, alerts.c.acked_at.is_(None))
            .values(acked_at=now, acked_by=by)
        )
        ack = conn.execute(select(incident_acks).where(incident_acks.c.incident == incident_id)).one()
        in_order = select(alerts.c.id).where(alerts.c.incident == incident_id).order_by(alerts.c.seq, alerts.c.id)
        ids = conn.execute(in_order).scalars().all()
    return {
        "incident": incident_id,
        "acked_at": utc(ack.acked_at).isoformat(),
        "acked_by": ack.acked_by,
        "acked_severity": ack.acked_severity,
        "alert_ids": _ends(list(ids), ALERT_IDS_MAX),
    }


def node_positions(
    engine: Engine, keys: Sequence[tuple[str, str]] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """Where each node (of ``keys``, the (site, node id) of each; else every node) is: the location
    its latest alert carried (the only messages that carry one)."""
    newest = select(alerts.c.site, alerts.c.node_id, func.max(alerts.c.ts).label("ts"))
    if keys is not None:  # a page of nodes: their own alerts, found by ix_alerts_node, not every alert
        newest = newest.where(tuple_(alerts.c.site, alerts.c.node_id).in_(list(keys)))
    latest = newest.group_by(alerts.c.site, alerts.c.node_id).subquery("latest")
    stmt = select(alerts.c.site, alerts.c.node_id, alerts.c.lat, alerts.c.lon, alerts.c.zone).join(
        latest,
        and_(alerts.c.site == latest.c.site, alerts.c.node_id == latest.c.node_id, alerts.c.ts == latest.c.ts),
    )
    with engine.connect() as conn:
        return {
            (row.site, row.node_id): {"lat": row.lat, "lon": row.lon, "zone": row.zone} for row in conn.execute(stmt)
        }
