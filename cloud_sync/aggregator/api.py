"""The operators' HTTP API, the live SSE stream, metrics, and the dashboard's files."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from s4edge.cloud_sync.aggregator.commands import CommandDesk, CommandError
from s4edge.cloud_sync.aggregator.console_api import (
    AckRequest,
    ConsoleSettings,
    build_console_router,
    nodes_at_a_glance,
    query_time,
)
from s4edge.cloud_sync.aggregator.events import EventBus, sse_frame
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.redaction import first_line
from s4edge.cloud_sync.aggregator.store import AlertQuery, NodeQuery, Store
from s4edge.cloud_sync.aggregator.store_url import full_disk
from s4edge.cloud_sync.messages import NAME_PATTERN, SEVERITIES, AlertState, CommandName, Scalar

STATIC = Path(__file__).with_name("static")
# Reading is open; anything that acts (ack, commands, NG112 decisions) needs the operator token,
# and so does command history: its arguments and results describe a node's configuration.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COMMAND_HISTORY = re.compile(r"/api/nodes/[^/]+/[^/]+/commands/?")


def same_origin(request: Request) -> bool:
    """False for a request another site's page made a browser send. A browser names the page in
    ``Origin`` on every POST (RFC 6454 §7.3, Fetch §3.1) or at least in ``Referer``; a client that
    sends neither (curl, a script) is no browser to be tricked, and a form cannot add a bearer token."""
    source = request.headers.get("origin") or request.headers.get("referer")
    return source is None or urlsplit(source).netloc == request.headers.get("host")


def rebindable(host: str | None) -> bool:
    """A ``Host`` that DNS could point anywhere: any name but localhost. A page that rebinds its
    own name to this server sends that name as both ``Host`` and ``Origin``, and so passes the
    same-origin check; an IP literal cannot be rebound."""
    name = urlsplit(f"//{host or ''}").hostname or ""
    if name == "localhost":
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def bearer_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` (RFC 6750 §2.1), compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: CommandName
    args: dict[str, Scalar] = Field(default_factory=dict)
    ttl_s: int = Field(default=300, ge=1, le=86400)

    @field_validator("args")
    @classmethod
    def _finite(cls, args: dict[str, Scalar]) -> dict[str, Scalar]:
        # JSON has no NaN or infinity (RFC 8259 §6): the node would have got null
        for key, value in args.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"args.{key} is {value}: give a finite number")
        return args


def build_api(
    store: Store,
    events: EventBus,
    metrics: IngestMetrics,
    commands: CommandDesk | None,
    *,
    heartbeat_interval_s: float = 30.0,
    stale_factor: float = 3.0,
    sse_ping_s: float = 15.0,
    connected: Callable[[], bool] = lambda: True,
    store_failure: Callable[[], str | None] = lambda: None,
    operator_token: str | None = None,
    console: ConsoleSettings = ConsoleSettings(),
) -> FastAPI:
    app = FastAPI(title="s4edge aggregator", version="1")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8: a lone surrogate ("\ud800") was a 500
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True, default=str)
        return Response(body, status_code=422, media_type="application/json")

    def outage(exc: SQLAlchemyError) -> str:
        """The driver's words, without the statement; the disk, when an SQLite store's is full."""
        cause = getattr(exc, "orig", None) or exc
        said = f"{type(cause).__name__}: {first_line(cause)}"
        return f"{full}; {said}" if (full := full_disk(store.engine.url)) is not None else said

    @app.exception_handler(SQLAlchemyError)
    async def store_unavailable(request: Request, exc: SQLAlchemyError) -> Response:
        # a read-only file, a full disk, a database restarting: the request may be tried again
        detail = f"the store cannot take this now ({outage(exc)}); try again shortly"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

    # A middleware, not a dependency: it also guards routers included later (NG112).
    @app.middleware("http")
    async def operators_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        acts = request.method not in SAFE_METHODS
        if acts and not same_origin(request):  # a cross-site form: no token to stop it when none is set
            return JSONResponse({"detail": "cross-site request refused (Origin is not this host)"}, status_code=403)
        if acts and not operator_token and rebindable(request.headers.get("host")):
            return JSONResponse(
                {
                    "detail": "with no operator token, act through the server's IP address, not a host name "
                    "(a name can be rebound by another site); or start it with --operator-token-file"
                },
                status_code=403,
            )
        private = acts or COMMAND_HISTORY.fullmatch(request.url.path) is not None
        if private and operator_token and not bearer_matches(request.headers.get("authorization"), operator_token):
            return JSONResponse(
                {"detail": "this request needs the operator token: Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="s4edge"'},
            )
        return await call_next(request)

    @app.middleware("http")
    async def no_nul(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # No id, name or filter holds a NUL, and PostgreSQL refuses one in a query (a 500)
        query = request.query_params.multi_items()
        if "\x00" in request.url.path or any("\x00" in key or "\x00" in value for key, value in query):
            return JSONResponse({"detail": "a NUL character in the path or query"}, status_code=422)
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> Any:
        # Unhealthy while ingest cannot commit, though the store may still answer reads
        # (a read-only file, a full disk): it recovers without a restart, and says so here.
        try:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            failure = store_failure()
            db = "ok" if failure is None else f"cannot commit: {failure}"
        except SQLAlchemyError as exc:
            db = f"error: {outage(exc)}"
        broker = "ok" if connected() else "disconnected"
        body = {"ok": db == "ok" and broker == "ok", "store": db, "broker": broker}
        if not body["ok"]:
            raise HTTPException(503, detail=body)
        return body

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/nodes")
    def list_nodes(
        site: str | None = None,
        condition: str | None = Query(None, description="online, stale, offline or unknown: the nodes in it now"),
        limit: int = Query(100, ge=1, le=1000),
        cursor: str | None = None,
    ) -> Any:
        query = NodeQuery(site=site, condition=condition, limit=limit, cursor=cursor)
        try:
            return nodes_at_a_glance(store, query, heartbeat_interval_s, stale_factor)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    @app.get("/api/alerts")
    def list_alerts(
        node: str | None = None,
        site: str | None = None,
        kind: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        incident: str | None = None,
        since: datetime | None = None,
        received_since: datetime | None = Query(
            None,
            description="Alerts that reached the aggregator at or after this time, whatever their node's ts: "
            "poll with your previous poll's start (an alert a node kept while offline arrives late)",
        ),
        acked: bool | None = None,
        limit: int = Query(100, ge=1, le=1000),
        cursor: str | None = None,
    ) -> Any:
        if severity is not None and severity not in SEVERITIES:
            raise HTTPException(422, detail=f"severity must be one of {', '.join(SEVERITIES)}")
        if state is not None and state not in get_args(AlertState):
            raise HTTPException(422, detail=f"state must be one of {', '.join(get_args(AlertState))}")
        since = query_time("since", since)
        received_since = query_time("received_since", received_since)
        query = AlertQuery(
            site=site,
            node=node,
            kind=kind,
            severity=severity,
            state=state,
            incident=incident,
            since=since,
            received_since=received_since,
            acked=acked,
            limit=limit,
            cursor=cursor,
        )
        try:
            page, next_cursor = store.alerts(query)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        return {"alerts": page, "next_cursor": next_cursor}

    @app.get("/api/alerts/{alert_id}")
    def get_alert(alert_id: str) -> Any:
        found = store.alert(alert_id)
        if found is None:
            raise HTTPException(404, detail=f"no alert {alert_id!r}")
        return found

    @app.post("/api/alerts/{alert_id}/ack")
    def ack_alert(alert_id: str, request: AckRequest | None = None) -> Any:
        by = (request or AckRequest()).by
        acked = store.ack_alert(alert_id, by)
        if acked is None:
            raise HTTPException(404, detail=f"no alert {alert_id!r}")
        events.publish("ack", {"id": alert_id, "acked_at": acked["acked_at"], "acked_by": acked["acked_by"]})
        return acked

    @app.post("/api/nodes/{site}/{node_id}/commands", status_code=202)
    def send_command(
        request: CommandRequest,
        site: str = PathParam(pattern=NAME_PATTERN),
        node_id: str = PathParam(pattern=NAME_PATTERN),
    ) -> Any:
        if commands is None:
            raise HTTPException(503, detail="this aggregator has no broker link for commands")
        if not store.knows_node(site, node_id):
            # A node that never reported has no session at the broker that would keep the command:
            # "published" would be true and nothing would ever run it.
            raise HTTPException(
                404, detail=f"no node {site}/{node_id} has reported to this aggregator: check the name (GET /api/nodes)"
            )
        try:
            return commands.issue(site, node_id, request.name, request.args, request.ttl_s)
        except CommandError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    @app.get("/api/nodes/{site}/{node_id}/commands")
    def node_commands(site: str, node_id: str, limit: int = Query(50, ge=1, le=500)) -> Any:
        return {"commands": store.commands_for(site, node_id, limit)}

    app.include_router(
        build_console_router(
            store,
            events,
            console,
            heartbeat_interval_s=heartbeat_interval_s,
            stale_factor=stale_factor,
            token_required=bool(operator_token),
        )
    )

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        sub = events.subscribe()

        async def frames() -> AsyncIterator[str]:
            try:
                # Tells EventSource how long to wait before reconnecting (WHATWG HTML §9.2).
                yield "retry: 2000\n\n"
                while not await request.is_disconnected():
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), timeout=sse_ping_s)
                    except TimeoutError:
                        yield ": ping\n\n"  # a comment line keeps proxies from closing an idle stream
                        continue
                    if item is None:
                        return  # fell too far behind; the browser reconnects and reloads
                    yield sse_frame(*item)
            finally:
                events.unsubscribe(sub)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)

    return app


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/``. Mount it last: a mount at ``/`` answers every path after it."""
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
