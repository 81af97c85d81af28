"""Sensor trends for the console: the downsampled telemetry (``telemetry_series``), read back
as columns for a chart, with reference alarm thresholds, and pruned after a retention period.

A node's own thresholds live in its config, which the centre never sees; the lines drawn
are the standards' (and the node's defaults), named as such on the chart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select

from s4edge.cloud_sync.aggregator.downsample import BUCKET_S
from s4edge.cloud_sync.aggregator.store import telemetry_series

DEFAULT_RETENTION_S = 7 * 86400.0
MAX_POINTS = 720  # per series: finer buckets are merged, so a week draws as fast as an hour
DEFAULT_SPAN = timedelta(hours=6)


@dataclass(frozen=True)
class Threshold:
    value: float
    severity: str
    label: str


# Reference alarm levels by family; the quantity names differ by source (a real MQ-2 reports
# flammable_gas, a simulated one methane), the unit and name tell the family.
THRESHOLDS: dict[str, tuple[Threshold, ...]] = {
    # EN 60079-29-1 two-stage alarm on % LEL, the node's defaults (edge/sensing/alarms.py)
    "gas": (Threshold(10.0, "Moderate", "warning 10 %LEL"), Threshold(40.0, "Severe", "alarm 40 %LEL")),
    # EN 50291-1 §5.3: must alarm at 50 ppm within 60-90 min, 100 ppm within 10-40 min, 300 ppm within 3 min
    "co": (
        Threshold(50.0, "Minor", "EN 50291-1 50 ppm (60-90 min)"),
        Threshold(100.0, "Severe", "100 ppm (10-40 min)"),
        Threshold(300.0, "Extreme", "300 ppm (< 3 min)"),
    ),
    # EN 16798-1 indoor air (category II, about 1000 ppm); Directive 2006/15/EC 8-h limit 5000 ppm
    "co2": (
        Threshold(1000.0, "Minor", "indoor air 1000 ppm"),
        Threshold(5000.0, "Severe", "8-h limit 5000 ppm"),
    ),
    # EN 54-5 class A1: a static response between 54 and 65 °C; the node's default is 58 °C
    "temperature": (Threshold(58.0, "Severe", "EN 54-5 A1 58 °C"),),
}
FAMILY_ORDER = ("gas", "co", "co2", "temperature")
_CO = {"co", "carbon_monoxide"}
_CO2 = {"co2", "co2eq", "carbon_dioxide"}


def family(quantity: str, unit: str) -> str | None:
    """Which chart a quantity belongs on, or None (drawn without thresholds)."""
    name, unit = quantity.lower(), unit.replace(" ", "").lower()
    if unit == "%lel":
        return "gas"
    if name in _CO and unit == "ppm":
        return "co"
    if name in _CO2:
        return "co2"
    if name in ("temperature", "temp", "air_temperature") and unit in ("cel", "°c", "c"):
        return "temperature"
    return None


def step_for(span_s: float, max_points: int = MAX_POINTS) -> int:
    """Bucket width for a chart of ``span_s``: the stored minute, or whole minutes above it."""
    return max(BUCKET_S, math.ceil(span_s / max_points / BUCKET_S) * BUCKET_S)


def node_series(
    engine: Engine,
    site: str,
    node_id: str,
    since: datetime,
    until: datetime,
    quantities: list[str] | None = None,
) -> dict[str, Any]:
    """Each quantity (and sensor) of the node between ``since`` and ``until``, as columns:
    ``t`` (bucket start, s since the epoch), ``min``, ``mean``, ``max``."""
    step = step_for((until - since).total_seconds())
    ts = telemetry_series.c
    slot = (ts.bucket // step) * step
    stmt = (
        select(
            ts.quantity,
            ts.sensor,
            func.max(ts.unit).label("unit"),
            slot.label("start"),
            func.sum(ts.n).label("n"),
            func.sum(ts.total).label("total"),
            func.min(ts.low).label("low"),
            func.max(ts.high).label("high"),
        )
        .where(
            ts.site == site,
            ts.node_id == node_id,
            ts.bucket >= int(since.timestamp()) // BUCKET_S * BUCKET_S,
            ts.bucket <= int(until.timestamp()),
        )
        .group_by(ts.quantity, ts.sensor, slot)
        .order_by(ts.quantity, ts.sensor, slot)
    )
    if quantities:
        stmt = stmt.where(ts.quantity.in_(quantities))
    series: dict[tuple[str, str], dict[str, Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            entry = series.get((row.quantity, row.sensor))
            if entry is None:
                entry = series[(row.quantity, row.sensor)] = {
                    "quantity": row.quantity,
                    "sensor": row.sensor or None,
                    "unit": row.unit,
                    "t": [],
                    "min": [],
                    "mean": [],
                    "max": [],
                }
            entry["t"].append(int(row.start))
            entry["min"].append(row.low)
            entry["mean"].append(round(row.total / row.n, 4) if row.n else None)
            entry["max"].append(row.high)
    out = []
    for entry in series.values():
        kind = family(entry["quantity"], entry["unit"])
        entry["family"] = kind
        entry["thresholds"] = [t.__dict__ for t in THRESHOLDS.get(kind or "", ())]
        out.append(entry)
    rank = {name: i for i, name in enumerate(FAMILY_ORDER)}
    out.sort(key=lambda e: (rank.get(e["family"], len(rank)), e["quantity"], e["sensor"] or ""))
    return {
        "site": site,
        "node_id": node_id,
        "from": since.isoformat(),
        "to": until.isoformat(),
        "step_s": step,
        "series": out,
    }


def prune(engine: Engine, before: datetime) -> int:
    """Delete buckets that start before ``before``; the number deleted."""
    with engine.begin() as conn:
        done = conn.execute(delete(telemetry_series).where(telemetry_series.c.bucket < int(before.timestamp())))
    return int(done.rowcount or 0)
