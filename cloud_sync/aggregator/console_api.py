"""The operator's console's API: incidents (listed, opened, acknowledged), nodes at a glance,
sensor trends, and the page's own settings (docs/architecture.md, "The operator's console").

Reading is open; acknowledging is an act and passes the API's operator check like any POST.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import NoMatchFound

from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.incidents import (
    IncidentQuery,
    ack_incident,
    incident,
    list_incidents,
    node_positions,
)
from s4edge.cloud_sync.aggregator.node_health import summarise
from s4edge.cloud_sync.aggregator.store import NodeQuery, Store
from s4edge.cloud_sync.aggregator.trends import DEFAULT_RETENTION_S, DEFAULT_SPAN, THRESHOLDS, node_series
from s4edge.cloud_sync.messages import NAME_PATTERN, utc_representable


@dataclass(frozen=True)
class ConsoleSettings:
    # An XYZ tile URL ({z}/{x}/{y}); None draws the nodes on a plain projected background,
    # so that the page fetches nothing from outside by default (privacy; sites offline).
    tiles_url: str | None = None
    tiles_attribution: str = ""
    telemetry_retention_s: float = DEFAULT_RETENTION_S


class TileUrlError(ValueError):
    """A tile URL the map could not use."""


def check_tile_url(url: str) -> None:
    """'' (no tiles) or an http(s) URL with {z}, {x} and {y} in it (the XYZ scheme Leaflet's
    TileLayer fills); raises TileUrlError saying what is wrong."""
    if not url:
        return
    parts = urlsplit(url)
    # a tile service's key rides in the query or the userinfo: the message shows neither
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="…" if parts.query else "").geturl()
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TileUrlError(
            f"{shown!r}: give an http:// or https:// URL, e.g. https://tiles.example/{{z}}/{{x}}/{{y}}.png"
        )
    missing = [part for part in ("{z}", "{x}", "{y}") if part not in url]
    if missing:
        raise TileUrlError(f"{shown!r} lacks {', '.join(missing)}: the map fills them per tile (XYZ scheme)")


# no C0 or C1 control, nor the line and paragraph separators some log viewers break lines on
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]+$"


class AckRequest(BaseModel):
    """Who acknowledges, as the console shows it: printable text, so neither a NUL (which
    PostgreSQL's text refuses) nor a line break (a forged log line) gets in; 422 instead."""

    model_config = ConfigDict(extra="forbid")
    by: str = Field(default="operator", min_length=1, max_length=64, pattern=PRINTABLE)


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def query_time(name: str, value: datetime | None) -> datetime | None:
    """A time given in a query: with a timezone, and one UTC can hold (the store keeps UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise HTTPException(422, detail=f"{name} needs a timezone, e.g. 2026-01-01T00:00:00Z")
    try:
        return utc_representable(value)
    except ValueError as exc:
        raise HTTPException(422, detail=f"{name} {exc}") from None


def build_console_router(
    store: Store,
    events: EventBus,
    settings: ConsoleSettings,
    *,
    heartbeat_interval_s: float,
    stale_factor: float,
    token_required: bool,
) -> APIRouter:
    router = APIRouter(tags=["console"])

    @router.get("/api/console")
    def console(request: Request) -> Any:
        """What the page needs to know of this aggregator."""
        try:  # NG112 forwarding attached: its router serves the page's panel (cloud_sync/ng112/api.py)
            panel: str | None = request.app.url_path_for("ng112_panel")
        except NoMatchFound:
            panel = None
        tiles = {"url": settings.tiles_url, "attribution": settings.tiles_attribution} if settings.tiles_url else None
        return {
            "tiles": tiles,
            "thresholds": {name: [t.__dict__ for t in levels] for name, levels in THRESHOLDS.items()},
            "telemetry_retention_s": settings.telemetry_retention_s,
            "heartbeat_interval_s": heartbeat_interval_s,
            "token_required": token_required,
            "ng112_panel": panel,
        }

    @router.get("/api/incidents")
    def incidents(
        state: str | None = None,
        severity: str | None = None,
        kind: str | None = None,
        site: str | None = None,
        node: str | None = None,
        since: datetime | None = Query(None, alias="from"),
        until: datetime | None = Query(None, alias="to"),
        incident_ids: list[str] = Query(default_factory=list, alias="incident", max_length=200),
        limit: int = Query(50, ge=1, le=500),
        cursor: str | None = None,
    ) -> Any:
        query = IncidentQuery(
            state=state,
            severity=severity,
            kind=kind,
            site=site,
            node=node,
            since=query_time("from", since),
            until=query_time("to", until),
            ids=tuple(incident_ids),
            limit=limit,
            cursor=cursor,
        )
        try:
            return list_incidents(store.engine, query)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    @router.get("/api/incidents/{incident_id}")
    def one_incident(incident_id: str) -> Any:
        found = incident(store.engine, incident_id)
        if found is None:
            raise HTTPException(404, detail=f"no incident {incident_id!r}")
        return found

    @router.post("/api/incidents/{incident_id}/ack")
    def ack(incident_id: str, request: AckRequest | None = None) -> Any:
        done = ack_incident(store.engine, incident_id, (request or AckRequest()).by, store.clock())
        if done is None:
            raise HTTPException(404, detail=f"no incident {incident_id!r}")
        events.publish("ack", done)
        return done

    @router.get("/api/nodes/{site}/{node_id}")
    def one_node(site: str = PathParam(pattern=NAME_PATTERN), node_id: str = PathParam(pattern=NAME_PATTERN)) -> Any:
        found = store.node(site, node_id, heartbeat_interval_s, stale_factor)
        if found is None:
            raise HTTPException(404, detail=f"no node {site}/{node_id}")
        return summarise(found, node_positions(store.engine, [(site, node_id)]).get((site, node_id)))

    @router.get("/api/nodes/{site}/{node_id}/telemetry")
    def telemetry(
        site: str = PathParam(pattern=NAME_PATTERN),
        node_id: str = PathParam(pattern=NAME_PATTERN),
        quantity: list[str] = Query(default_factory=list, max_length=64),
        since: datetime | None = Query(None, alias="from"),
        until: datetime | None = Query(None, alias="to"),
    ) -> Any:
        now = store.clock()
        end = query_time("to", until) or now
        start = query_time("from", since) or max(end, _EARLIEST + DEFAULT_SPAN) - DEFAULT_SPAN
        if start >= end:
            raise HTTPException(422, detail="from must be before to")
        return node_series(store.engine, site, node_id, start, end, quantity or None)

    return router


def nodes_at_a_glance(
    store: Store, query: NodeQuery, heartbeat_interval_s: float, stale_factor: float
) -> dict[str, Any]:
    """One page of the fleet: ``nodes``, each summarised with its position, and ``next_cursor``.
    Raises ValueError on a condition or cursor the store refuses."""
    page, next_cursor = store.node_page(query, heartbeat_interval_s, stale_factor)
    positions = node_positions(store.engine, [(node["site"], node["node_id"]) for node in page])
    return {
        "nodes": [summarise(node, positions.get((node["site"], node["node_id"]))) for node in page],
        "next_cursor": next_cursor,
    }
