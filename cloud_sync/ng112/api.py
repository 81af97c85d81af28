"""HTTP surface of NG112 forwarding, mounted by the aggregator app.

``GET /ng112/incidents/{incident}/readings?token=…`` answers the PSAP's data request;
the forwards list and confirm/dismiss serve the operator dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from s4edge.cloud_sync.ng112.desk import ForwardDesk
from s4edge.cloud_sync.ng112.readings import last_readings
from s4edge.cloud_sync.ng112.records import STATES, get_forward, list_forwards, token_matches

PANEL = Path(__file__).with_name("static") / "panel.js"


class Decision(BaseModel):
    by: str = Field(default="operator", min_length=1, max_length=64)


def build_router(forwarder: ForwardDesk) -> APIRouter:
    router = APIRouter(prefix="/ng112", tags=["ng112"])
    engine = forwarder.engine

    @router.get("/incidents/{incident}/readings")
    def readings(incident: str, token: str = Query(..., min_length=1, max_length=128)) -> Any:
        if not token_matches(engine, incident, token):
            # One answer for a wrong token and an unknown incident: nothing to learn from it.
            raise HTTPException(404, detail="no such incident, or the token does not match")
        body = last_readings(engine, incident)
        if body is None:
            raise HTTPException(404, detail="no such incident, or the token does not match")
        return body

    @router.get("/forwards")
    def forwards(limit: int = Query(100, ge=1, le=1000), state: str | None = None) -> Any:
        if state is not None and state not in STATES:
            raise HTTPException(422, detail=f"state must be one of {', '.join(STATES)}")
        return {"forwards": list_forwards(engine, limit, state)}

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

    @router.get("/panel.js", include_in_schema=False)
    def panel() -> FileResponse:
        """The dashboard's NG112 panel (a script that adds its own section)."""
        return FileResponse(PANEL, media_type="text/javascript")

    return router
