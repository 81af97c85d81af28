"""The API's views of stored rows: JSON-ready dicts, the stale flag, and paging cursors."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from s4edge.cloud_sync.messages import Alert

T = TypeVar("T")

# What an operator reads when the node sent no title (the edge leaves some empty: a flame
# contact's alert is one). CAP's <headline> is what this stands in for (CAP 1.2 §3.2.2).
KIND_NAMES = {
    "gas": "Flammable gas",
    "co": "Carbon monoxide",
    "smoke": "Smoke detected",
    "flame": "Flame detected",
    "temperature": "Heat alarm",
    "nir_match": "Substance match (NIR)",
    "intrusion": "Intrusion",
    "line_cross": "Line crossed",
    "loitering": "Loitering",
    "crowd": "Crowd",
    "unattended_object": "Unattended object",
    "sensor_fault": "Sensor fault",
    "camera_fault": "Camera fault",
    "escalation": "Escalation",
}


def fallback_title(kind: str, zone: str | None, site: str, node_id: str) -> str:
    name = KIND_NAMES.get(kind) or kind.replace("_", " ").capitalize()
    return f"{name} — {zone}" if zone else f"{name} at {site}/{node_id}"


def headline(row: dict[str, Any]) -> str:
    """The alert's title, or one made from its kind and zone."""
    return row.get("title") or fallback_title(row["kind"], row.get("zone"), row["site"], row["node_id"])


def utc(value: datetime) -> datetime:
    """Aware UTC. SQLite hands back naive datetimes; everything we store is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def encode_cursor(ts: datetime, alert_id: str) -> str:
    return base64.urlsafe_b64encode(f"{utc(ts).isoformat()}|{alert_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on a cursor we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, alert_id = raw.split("|", 1)
        if "\x00" in alert_id:
            raise ValueError("a NUL in the cursor")
        return utc(datetime.fromisoformat(ts)), alert_id
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError(f"bad cursor {cursor[:40]!r}: pass back next_cursor as received") from exc


def encode_json_cursor(values: list[Any]) -> str:
    """A page's last key as an opaque cursor: JSON, base64url without padding."""
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_json_cursor(cursor: str, read: Callable[[Any], T]) -> T:
    """``read`` of the values ``encode_json_cursor`` made; ValueError on a cursor we did not issue
    (``read`` raises ValueError, TypeError or OverflowError on values no column holds)."""
    try:
        return read(json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))))
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as exc:  # "[[[…": JSON's depth
        raise ValueError(f"bad cursor {cursor[:40]!r}: pass back next_cursor as received") from exc


def encode_node_cursor(site: str, node_id: str) -> str:
    return encode_json_cursor([site, node_id])


def decode_node_cursor(cursor: str) -> tuple[str, str]:
    """The (site, node id) a page of nodes ended at. Raises ValueError on a cursor we did not issue."""
    return decode_json_cursor(cursor, _node_key)


def _node_key(key: Any) -> tuple[str, str]:
    # what a name column can hold: a NUL or a lone surrogate would fail in the driver (a 500)
    if not (isinstance(key, list) and len(key) == 2 and all(_name(part) for part in key)):
        raise ValueError("not a node's key")
    return key[0], key[1]


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()


def alert_row(alert: Alert, received_at: datetime) -> dict[str, Any]:
    return {
        "id": alert.id,
        "node_id": alert.node_id,
        "site": alert.site,
        "seq": alert.seq,
        "ts": utc(alert.ts),
        "received_at": received_at,
        "kind": alert.kind,
        "severity": alert.severity,
        "state": alert.state,
        "incident": alert.incident,
        "status": alert.status,
        "lat": alert.location.lat,
        "lon": alert.location.lon,
        "zone": alert.location.zone,
        "title": alert.title,
        "detail": alert.detail,
        "measurements": [m.model_dump(mode="json", exclude_none=True) for m in alert.measurements],
        "detection": alert.detection.model_dump(mode="json", exclude_none=True) if alert.detection else None,
        "model": alert.model.model_dump(mode="json") if alert.model else None,
    }


def alert_record(alert: Alert, received_at: datetime) -> dict[str, Any]:
    """The API's shape of a just-stored alert, without reading it back."""
    return alert_dict({**alert_row(alert, received_at), "acked_at": None, "acked_by": None})


def _iso(value: datetime | None) -> str | None:
    return utc(value).isoformat() if value is not None else None


def alert_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("ts", "received_at", "acked_at"):
        out[key] = _iso(out[key])
    out["headline"] = headline(out)  # what the console shows; ``title`` stays as the node sent it
    return out


def node_dict(row: Any, now: datetime, default_interval_s: float, stale_factor: float) -> dict[str, Any]:
    out = dict(row)
    interval = out["heartbeat_interval_s"] or default_interval_s
    # Stale: online by its retained status, but no heartbeat for > factor × interval since
    # the last sign of life (a heartbeat, or the status that said online).
    signs = [utc(t) for t in (out["heartbeat_at"], out["changed_at"]) if t is not None]
    out["stale"] = bool(
        out["state"] == "online" and signs and (now - max(signs)).total_seconds() > stale_factor * interval
    )
    # a heartbeat is never queued (edge/app.py): sent live, its ts against its arrival is the node's clock error
    beat_ts, beat_at = out["heartbeat_ts"], out["heartbeat_at"]
    out["clock_offset_s"] = (
        None if beat_ts is None or beat_at is None else (utc(beat_ts) - utc(beat_at)).total_seconds()
    )
    for key in ("status_ts", "heartbeat_ts", "heartbeat_at", "changed_at"):
        out[key] = _iso(out[key])
    return out


def command_dict(cmd: dict[str, Any], result: Any) -> dict[str, Any]:
    out = dict(cmd)
    for key in ("issued_at", "expires"):
        out[key] = _iso(out[key])
    out["result"] = None
    if result is not None:
        out["result"] = {
            "id": result["id"],
            "ok": result["ok"],
            "detail": result["detail"],
            "data": result["data"],
            "ts": _iso(result["ts"]),
            "received_at": _iso(result["received_at"]),
        }
    return out
