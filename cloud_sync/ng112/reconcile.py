"""Read alerts back from the aggregator's store: the ones that never reached the forwarder,
and a site's recent ones for correlation across replicas.

The forwarder hears of an alert through the aggregator's after-commit hook, so an alert
stored just before a crash, or one whose ``submit`` hit a database error, has no forward
row; its redelivered copy is a duplicate and is not announced again. On start the
forwarder looks back over a horizon for such alerts and submits them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from s4edge.cloud_sync.aggregator.store import alerts
from s4edge.cloud_sync.aggregator.views import utc
from s4edge.cloud_sync.messages import Alert
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.records import forwards, incidents


def alert_from_row(row: Any) -> Alert:
    return Alert.model_validate(
        {
            "id": row.id,
            "node_id": row.node_id,
            "site": row.site,
            "seq": row.seq,
            "ts": utc(row.ts),
            "kind": row.kind,
            "severity": row.severity,
            "state": row.state,
            "incident": row.incident,
            "status": row.status,
            "location": {"lat": row.lat, "lon": row.lon, "zone": row.zone},
            "title": row.title,
            "detail": row.detail,
            "measurements": row.measurements or [],
            "detection": row.detection,
            "model": row.model,
        }
    )


def site_alerts(engine: Engine, site: str, since: datetime, until: datetime) -> list[Alert]:
    """The site's stored alerts with ``ts`` in [since, until]: what other replicas took in too."""
    query = select(alerts).where(alerts.c.site == site, alerts.c.ts >= since, alerts.c.ts <= until)
    with engine.connect() as conn:
        return [alert_from_row(row) for row in conn.execute(query.order_by(alerts.c.ts, alerts.c.id))]


def unforwarded(engine: Engine, config: Ng112Config, since: datetime) -> list[Alert]:
    """Alerts received since ``since``, oldest first, with no forward row, that policy would
    forward: one that opens a call, or any alert of an incident already forwarded."""
    query = (
        select(alerts, incidents.c.incident.label("known"))
        .outerjoin(forwards, forwards.c.alert_id == alerts.c.id)
        .outerjoin(incidents, incidents.c.incident == alerts.c.incident)
        .where(forwards.c.id.is_(None), alerts.c.received_at >= since)
        .order_by(alerts.c.received_at, alerts.c.ts, alerts.c.seq)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    missed = []
    for row in rows:
        alert = alert_from_row(row)
        if row.known is not None or (alert.state != "end" and config.wants(alert)[0]):
            missed.append(alert)
    return missed
