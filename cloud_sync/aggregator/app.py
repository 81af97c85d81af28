"""The aggregator's composition root: store + ingest + HTTP API, each in its thread.

Embeddable: ``Aggregator(...).start()`` returns once the broker session is up and
the HTTP server listens (on a free port when ``http_port`` is 0); ``url`` tells
where. ``stop()`` undoes it.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from s4edge.cloud_sync.aggregator.api import build_api, mount_dashboard
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.broker_log import BrokerLogWatch
from s4edge.cloud_sync.aggregator.commands import CommandDesk, CommandSigner
from s4edge.cloud_sync.aggregator.console_api import ConsoleSettings
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.ingest import Ingest
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.retention import Retention
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.trends import DEFAULT_RETENTION_S
from s4edge.cloud_sync.aggregator.workers import IngestWorkers, WorkersError, WorkerSpec, default_group
from s4edge.cloud_sync.aggregator.writer import StoreSpec, WriterRules, relax_gc

log = logging.getLogger("s4edge.aggregator")
TABLES_RETRY_S = 5.0  # the tables of a store on a full disk are tried again after this, then twice as long
TABLES_RETRY_MAX_S = 60.0


class ListenError(OSError):
    """The HTTP address (``http_host``:``http_port``) cannot be bound: taken, or not this machine's."""


@dataclass(frozen=True)
class AggregatorConfig:
    broker: BrokerConfig
    db_url: str = "sqlite:///s4edge-aggregator.db"
    db_schema: str | None = None
    sqlite_sync: str = "FULL"
    writer: str = "thread"  # or "process": validation and commits in a child process (cloud_sync/aggregator/writer.py)
    http_host: str = "127.0.0.1"
    http_port: int = 0
    group: str | None = None  # a $share group name when several replicas share the fleet
    client_id: str | None = None
    issuer: str = "aggregator"
    session_expiry_s: int = 86400
    protocol: str = "auto"
    heartbeat_interval_s: float = 30.0
    stale_factor: float = 3.0
    batch_max: int = 500
    sse_ping_s: float = 15.0
    command_key: str | Path | None = None  # Ed25519 private key (PEM): every command published is signed
    broker_log: str | Path | None = None  # mosquitto's log file: refused connections become a metric
    operator_token: str | None = None  # when set, the API's POSTs need Authorization: Bearer <token>
    max_clock_skew_s: float = 300.0  # a message dated further ahead of our clock is refused and counted
    tiles_url: str | None = None  # the console map's XYZ tiles; None: a plain background, nothing fetched
    tiles_attribution: str = ""  # the tile server's credit line, shown on the map
    telemetry_retention_s: float = DEFAULT_RETENTION_S  # how long the trends' buckets are kept
    incident_retention_s: float | None = None  # how long ended incidents are kept; None: for good
    workers: int = 1  # > 1: that many ingest processes in one $share group (workers.py); the API stays here

    @property
    def session_id(self) -> str:
        # The persistent session is found again by client id, so it must be stable per replica.
        return self.client_id or f"{self.group or 's4edge'}-{socket.gethostname()}"[:64]


class Aggregator:
    def __init__(self, config: AggregatorConfig, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        signer = CommandSigner.load(config.command_key) if config.command_key is not None else None
        self.store = Store(make_engine(config.db_url, config.db_schema, config.sqlite_sync), clock=clock)
        self.events = EventBus()
        self.metrics = IngestMetrics(nodes_online=self.store.count_online)
        self.ingest = self._ingest(config, clock)
        self.commands = CommandDesk(self.store, self.ingest.publish, config.issuer, signer)
        self.api = build_api(
            self.store,
            self.events,
            self.metrics,
            self.commands,
            heartbeat_interval_s=config.heartbeat_interval_s,
            stale_factor=config.stale_factor,
            sse_ping_s=config.sse_ping_s,
            connected=lambda: self.ingest.connected,
            store_failure=lambda: self.ingest.store_failure,
            operator_token=config.operator_token,
            console=ConsoleSettings(config.tiles_url, config.tiles_attribution, config.telemetry_retention_s),
        )
        self.retention = Retention(
            self.store.engine, config.telemetry_retention_s, clock, incidents_s=config.incident_retention_s
        )
        self.broker_log = (
            BrokerLogWatch(config.broker_log, lambda reason: self.metrics.auth_failures.labels(reason).inc())
            if config.broker_log is not None
            else None
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._tables: threading.Thread | None = None  # making the tables once a full disk has room
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None

    def _ingest(self, config: AggregatorConfig, clock: Callable[[], datetime]) -> Ingest | IngestWorkers:
        store = StoreSpec(config.db_url, config.db_schema, config.sqlite_sync)
        rules = WriterRules(max_skew_s=config.max_clock_skew_s)
        if config.workers > 1:
            if config.protocol == "3.1.1":
                raise WorkersError("workers share the fleet through MQTT 5 shared subscriptions: not with MQTT 3.1.1")
            # without --group, drawn at start (_share_group), once the store has been opened
            group = config.group or default_group(config.session_id)
            spec = WorkerSpec(
                config.broker, store, config.session_id, group, config.writer == "process",
                config.session_expiry_s, config.batch_max, rules,
            )  # fmt: skip
            return IngestWorkers(spec, config.workers, self.metrics, self.events)
        return Ingest(
            config.broker,
            self.store,
            self.metrics,
            client_id=config.session_id,
            group=config.group,
            session_expiry_s=config.session_expiry_s,
            batch_max=config.batch_max,
            protocol=config.protocol,
            events=self.events,
            clock=clock,
            writer_process=store if config.writer == "process" else None,
            rules=rules,
        )

    def _share_group(self) -> None:
        """The ``$share`` group of the workers and of replicas (``--group NAME``): drawn once and
        kept in the store, so every replica of a store shares it and no node can guess it (a node
        in the group takes its turn of the fleet's messages, which its ACL forbids it to read,
        and mosquitto's acl_file checks no subscription filter); NAME is its prefix. Sessions
        resumed from before may hold the group named NAME, or after the client id: they leave it.
        A store that cannot take the draw yet (read-only for now: ingest waits for it) keeps the
        named group until it can."""
        given = self.config.group
        if not given and not isinstance(self.ingest, IngestWorkers):
            return  # one aggregator: a plain subscription
        named = given or default_group(self.config.session_id)
        try:
            drawn = self.store.share_group()
        except SQLAlchemyError as exc:
            log.warning("store: no shared-subscription group drawn (%s); sharing %s", type(exc).__name__, named)
            group, retired = named, None
        else:
            group, retired = (f"{given}-{drawn.removeprefix('s4edge-')}" if given else drawn), named
        if isinstance(self.ingest, IngestWorkers):
            self.ingest.spec = dataclasses.replace(self.ingest.spec, group=group, retired_group=retired)
        else:
            self.ingest.group, self.ingest.retired_group = group, retired

    def forward_jobs(self, kinds: frozenset[str], on_jobs: Callable[[], object] | None = None) -> None:
        """Store a forward job with each new alert of these kinds, in the commit that stores it,
        for a forwarder (NG112) to drain from the store; ``on_jobs`` is called after each commit
        that wrote jobs (the forwarder's wake-up) and must return at once. Call before ``start()``."""
        if self._server is not None:
            raise RuntimeError("turn forward jobs on before start()")
        self.ingest.forward_jobs(kinds, on_jobs)

    def include_router(self, router: APIRouter) -> None:
        """Add another module's HTTP routes (NG112 forwards, …); call before ``start()``."""
        if self._server is not None:
            raise RuntimeError("include routers before start()")
        self.api.include_router(router)

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the aggregator is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 15.0) -> Aggregator:
        self._stopping.clear()
        if not self.store.create_all():  # a full disk: ingest waits for room, and so do the tables
            self._tables = threading.Thread(target=self._create_tables_later, name="aggregator-tables", daemon=True)
            self._tables.start()
        self._share_group()
        if self.broker_log is not None:
            self.broker_log.start()  # before connecting: our own refusal, if any, is counted too
        try:
            self._listen()  # before the broker: a taken address must not cost a running aggregator its session
            self.ingest.start(timeout)
            self._serve(timeout)
            self.retention.start()
            relax_gc()
        except BaseException:
            self.stop()
            raise
        log.info("aggregator listening on %s", self.url)
        return self

    def _create_tables_later(self) -> None:
        """The store's tables, made (an upgrade's columns and indexes added) once its disk has
        room: a new store needs them before ingest can commit its first batch."""
        delay = TABLES_RETRY_S
        while not self._stopping.wait(delay):
            try:
                if self.store.create_all():
                    log.info("store: tables checked, there is room on its disk again")
                    return
            except SQLAlchemyError as exc:  # another outage meanwhile: the next turn tries again
                log.warning("store: tables not checked now (%s)", type(exc).__name__)
            delay = min(2 * delay, TABLES_RETRY_MAX_S)

    def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.config.http_host else socket.AF_INET
        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it a kept-alive connection (a browser's) waits out the client's delayed ACK
        # (40 ms on Linux) before each response's body (RFC 1122 §4.2.3.2, RFC 896).
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((self.config.http_host, self.config.http_port))
        except OSError as exc:
            raise ListenError(exc.errno, exc.strerror) from None

    def _serve(self, timeout: float) -> None:
        if not any(getattr(route, "name", "") == "dashboard" for route in self.api.routes):
            mount_dashboard(self.api)
        server = uvicorn.Server(
            uvicorn.Config(self.api, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2)
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="aggregator-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"the HTTP server did not start on {self.config.http_host}:{self.config.http_port}")

    def stop(self) -> None:
        self._stopping.set()
        if self._tables is not None:
            self._tables.join(10)
            self._tables = None
        self.events.close()  # ends open SSE streams, so that the server can shut down
        self.retention.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.ingest.stop()
        if self.broker_log is not None:
            self.broker_log.stop()
        if self._socket is not None:
            self._socket.close()
        self.store.engine.dispose()
        self._server, self._thread, self._socket = None, None, None

    def __enter__(self) -> Aggregator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
