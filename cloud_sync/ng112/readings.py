"""The PSAP data request: the node's last sensor readings for a forwarded incident.

The CAP ``resource`` of every call links here (``readings_link``). The link holds when it
stops answering and a signature over that and the incident, keyed with the incident's
random ``link_key``, which never leaves the aggregator (not its ``token``, which releases
before signed links sent in the CAP): its holder can neither extend it nor make
one for another incident. The readings come from what the aggregator stored (the node's last
telemetry and the measurements of its alerts), newest first.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine, select

from s4edge.cloud_sync.aggregator.store import alerts, telemetry
from s4edge.cloud_sync.ng112.records import incidents, new_token

LAST_READINGS: Final = 15


def link_signature(key: str, incident: str, expires: int) -> str:
    """HMAC-SHA256 (RFC 2104) of the incident and the link's end (Unix seconds)."""
    return hmac.new(key.encode(), f"{incident}\n{expires}".encode(), hashlib.sha256).hexdigest()


def readings_link(base_url: str, incident: str, key: str, expires: datetime) -> str:
    """The link a CAP message gives the PSAP (CAP 1.2 §3.2.3 <uri>); it answers until ``expires``."""
    until = math.ceil(expires.timestamp())
    signature = link_signature(key, incident, until)
    return f"{base_url.rstrip('/')}/ng112/incidents/{incident}/readings?expires={until}&sig={signature}"


def link_signed(engine: Engine, incident: str, expires: int, signature: str) -> bool:
    """Whether ``signature`` is the one ``readings_link`` gave the incident's link ending at ``expires``."""
    with engine.connect() as conn:
        key = conn.execute(select(incidents.c.link_key).where(incidents.c.incident == incident)).scalar()
    # An unknown incident, or one no link was signed for, still costs one signature and
    # comparison, so timing tells nothing.
    expected = link_signature(key or new_token(), incident, expires)
    return hmac.compare_digest(expected.encode(), signature.encode())


def _iso(value: datetime) -> str:
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat()


def last_readings(engine: Engine, incident: str, limit: int = LAST_READINGS) -> dict[str, Any] | None:
    """Up to ``limit`` readings of the incident's node, newest first; None for an unknown incident."""
    with engine.connect() as conn:
        owner = conn.execute(
            select(incidents.c.site, incidents.c.node_id).where(incidents.c.incident == incident)
        ).first()
        if owner is None:
            return None
        site, node_id = owner
        found: list[dict[str, Any]] = []
        latest = conn.execute(
            select(telemetry.c.ts, telemetry.c.readings).where(telemetry.c.site == site, telemetry.c.node_id == node_id)
        ).first()
        if latest is not None:
            found += [{"ts": _iso(latest.ts), "source": "telemetry", **reading} for reading in latest.readings or []]
        rows = conn.execute(
            select(alerts.c.ts, alerts.c.kind, alerts.c.incident, alerts.c.measurements)
            .where(alerts.c.site == site, alerts.c.node_id == node_id)
            .order_by(alerts.c.ts.desc())
            .limit(limit)
        )
        for row in rows:
            found += [
                {"ts": _iso(row.ts), "source": f"alert:{row.kind}", "incident": row.incident, **measurement}
                for measurement in row.measurements or []
            ]
    found.sort(key=lambda reading: reading["ts"], reverse=True)
    return {"incident": incident, "site": site, "node_id": node_id, "readings": found[:limit]}
