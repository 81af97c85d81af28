"""HTTP surface of NG112 forwarding, mounted by the aggregator app.

``GET /ng112/incidents/{incident}/readings?expires=…&sig=…`` answers the PSAP's data request;
the forwards list, the summary (counts by state and the calls that need an operator) and
confirm/dismiss serve the operator dashboard.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from s4edge.cloud_sync.aggregator.views import fallback_title
from s4edge.cloud_sync.ng112.desk import ForwardDesk
from s4edge.cloud_sync.ng112.readings import last_readings, link_signed
from s4edge.cloud_sync.ng112.records import (
    OPEN_STATES,
    STATES,
    forward_dict,
    get_forward,
    list_forwards,
)
from s4edge.cloud_sync.ng112.records import forwards as forward_rows

PANEL = Path(__file__).with_name("static") / "panel.js"
PANEL_ROUTE = "ng112_panel"  # the console loads the panel when a route of this name exists
SUMMARY_ROWS = 50  # calls listed per group in the summary: those in flight, and the latest failed
LAST_EXPIRY = 253402300799  # 9999-12-31T23:59:59Z: beyond it no datetime holds the time
FRESH_LINK = "each CAP message of the incident carries a fresh link: use the latest one's <resource><uri>"


class Decision(BaseModel):
    by: str = Field(default="operator", min_length=1, max_length=64)


def build_router(forwarder: ForwardDesk) -> APIRouter:
    router = APIRouter(prefix="/ng112", tags=["ng112"])
    engine = forwarder.engine

    @router.get("/incidents/{incident}/readings")
    def readings(
        incident: str,
        expires: int | None = Query(None, ge=0, le=LAST_EXPIRY),
        sig: str | None = Query(None, min_length=1, max_length=128),
        token: str | None = Query(None, max_length=128),
    ) -> Any:
        if expires is None or sig is None:
            if token is not None:  # a link made before links expired: it would answer for ever
                raise HTTPException(410, detail=f"a readings link without an expiry no longer answers; {FRESH_LINK}")
            raise HTTPException(422, detail="a readings link has expires and sig, as the CAP <resource><uri> gives it")
        if not link_signed(engine, incident, expires, sig):
            # One answer for a wrong signature (an expiry moved on) and an unknown incident: nothing to learn.
            raise HTTPException(404, detail="no such incident, or the link's signature does not match")
        if forwarder.clock().timestamp() > expires:
            ended = datetime.fromtimestamp(expires, UTC).isoformat()
            raise HTTPException(410, detail=f"this readings link expired at {ended}; {FRESH_LINK}")
        body = last_readings(engine, incident)
        if body is None:
            raise HTTPException(404, detail="no such incident, or the link's signature does not match")
        return body

    @router.get("/forwards")
    def forwards(limit: int = Query(100, ge=1, le=1000), state: str | None = None) -> Any:
        if state is not None and state not in STATES:
            raise HTTPException(422, detail=f"state must be one of {', '.join(STATES)}")
        return {"forwards": list_forwards(engine, limit, state)}

    @router.get("/summary")
    def summary() -> Any:
        """Counts by state, and the calls an operator watches: awaiting confirmation or in
        flight (oldest first), and the latest that failed."""
        with engine.connect() as conn:
            counts = {row.state: int(row.n) for row in conn.execute(
                select(forward_rows.c.state, func.count().label("n")).group_by(forward_rows.c.state)
            )}  # fmt: skip
            live = conn.execute(
                select(forward_rows)
                .where(forward_rows.c.state.in_(OPEN_STATES))
                .order_by(forward_rows.c.created_at, forward_rows.c.id)
                .limit(SUMMARY_ROWS)
            ).all()
            failed = conn.execute(
                select(forward_rows)
                .where(forward_rows.c.state == "failed")
                .order_by(forward_rows.c.created_at.desc(), forward_rows.c.id)
                .limit(SUMMARY_ROWS)
            ).all()
        return {
            "counts": {state: counts.get(state, 0) for state in STATES},
            "in_flight": sum(counts.get(s, 0) for s in ("pending", "sending", "retrying")),
            "awaiting_confirm": counts.get("awaiting_confirm", 0),
            "delivered": counts.get("delivered", 0),
            "failed": counts.get("failed", 0),
            "live": [_with_headline(row) for row in live],
            "recent_failed": [_with_headline(row) for row in failed],
        }

    def _decide(forward_id: str, ok: bool) -> Any:
        if ok:
            return get_forward(engine, forward_id)
        found = get_forward(engine, forward_id)
        if found is None:
            raise HTTPException(404, detail=f"no forward {forward_id}")
        raise HTTPException(409, detail=f"forward {forward_id} is {found['state']}, not awaiting_confirm")

    @router.post("/forwards/{forward_id}/confirm")
    def confirm(forward_id: str, decision: Decision | None = None) -> Any:
        return _decide(forward_id, forwarder.confirm(forward_id, (decision or Decision()).by))

    @router.post("/forwards/{forward_id}/dismiss")
    def dismiss(forward_id: str, decision: Decision | None = None) -> Any:
        return _decide(forward_id, forwarder.dismiss(forward_id, (decision or Decision()).by))

    @router.get("/panel.js", include_in_schema=False, name=PANEL_ROUTE)
    def panel() -> FileResponse:
        """The dashboard's NG112 panel (a script that adds its own section)."""
        return FileResponse(PANEL, media_type="text/javascript")

    return router


def _with_headline(row: Any) -> dict[str, Any]:
    """A forward as the list gives it, with what its alert said (or a title made from its kind)."""
    alert = row._mapping["alert"] or {}
    location = alert.get("location") or {}
    zone = location.get("zone") if isinstance(location, dict) else None
    title = alert.get("title") or fallback_title(row.kind, zone, row.site, row.node_id)
    return {**forward_dict(row), "headline": title, "zone": zone}
