"""Telemetry into fixed time buckets (count, sum, min, max per quantity and sensor), so that the
console's trend charts read a bounded table rather than every message (``trends.py``).

Pure: no store, no clock. The writer hands a batch's telemetry to ``buckets`` and upserts the
rows it returns into ``telemetry_series`` in the same commit (``Store.record_telemetry_series``),
adding counts and sums and keeping the extremes, so a bucket filled by many batches (or
replicas) ends up as if it had been filled at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from s4edge.cloud_sync.messages import Telemetry

BUCKET_S = 60  # one minute: 1440 points a day per quantity, enough for a chart of any span


def bucket_start(ts: datetime, bucket_s: int = BUCKET_S) -> int:
    """The start of the bucket ``ts`` falls in, in seconds since the epoch (UTC)."""
    return int(ts.timestamp()) // bucket_s * bucket_s


def buckets(readings: Iterable[tuple[Telemetry, datetime]], bucket_s: int = BUCKET_S) -> list[dict[str, Any]]:
    """One row per (site, node, quantity, sensor, bucket) in ``readings``, by the node's ``ts``
    (when it was measured: a backlog sent after an outage lands where it belongs)."""
    acc: dict[tuple[str, str, str, str, int], list[Any]] = {}
    for message, _received_at in readings:
        start = bucket_start(message.ts, bucket_s)
        for reading in message.readings:
            key = (message.site, message.node_id, reading.quantity, reading.sensor or "", start)
            value = reading.value
            slot = acc.get(key)
            if slot is None:
                acc[key] = [reading.unit, 1, value, value, value]
            else:
                slot[0] = reading.unit
                slot[1] += 1
                slot[2] += value
                slot[3] = min(slot[3], value)
                slot[4] = max(slot[4], value)
    return [
        {
            "site": site,
            "node_id": node_id,
            "quantity": quantity,
            "sensor": sensor,
            "bucket": start,
            "unit": unit,
            "n": n,
            "total": total,
            "low": low,
            "high": high,
        }
        for (site, node_id, quantity, sensor, start), (unit, n, total, low, high) in acc.items()
    ]
