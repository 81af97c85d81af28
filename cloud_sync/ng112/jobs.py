"""Read alerts back from the aggregator's store: those with a forward job waiting, and a
site's recent ones for correlation across replicas.

Ingest writes a forward job in the commit that stores an alert of a kind NG112 forwards
(``store.forward_jobs``); the forwarder takes the jobs oldest first and deletes each in the
transaction that records what its alert means for the PSAP. A crash between the two leaves
the job, and the next look takes it again; the forward row is unique per alert id, so
taking it twice records it once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from s4edge.cloud_sync.aggregator.store import alerts, forward_jobs
from s4edge.cloud_sync.aggregator.views import utc
from s4edge.cloud_sync.messages import Alert


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


def queued(engine: Engine, limit: int) -> list[Any]:
    """The stored rows of up to ``limit`` alerts with a forward job, in the order they arrived."""
    query = (
        select(alerts)
        .join(forward_jobs, forward_jobs.c.alert_id == alerts.c.id)
        .order_by(alerts.c.received_at, alerts.c.ts, alerts.c.seq)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def site_alerts(engine: Engine, site: str, since: datetime, until: datetime) -> list[Alert]:
    """The site's stored alerts with ``ts`` in [since, until]: what other replicas took in too."""
    query = select(alerts).where(alerts.c.site == site, alerts.c.ts >= since, alerts.c.ts <= until)
    with engine.connect() as conn:
        return [alert_from_row(row) for row in conn.execute(query.order_by(alerts.c.ts, alerts.c.id))]
