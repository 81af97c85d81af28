"""The aggregator's store: SQLAlchemy Core, one code path for SQLite and PostgreSQL.

Other centre modules (NG112 forwarding, correlation) add their own tables to
``metadata`` before ``Store.create_all()`` runs, and share the engine from
``make_engine``.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, ExceptionContext
from sqlalchemy.exc import IntegrityError, OperationalError

from s4edge.cloud_sync.aggregator.downsample import buckets
from s4edge.cloud_sync.aggregator.node_health import CONDITIONS, condition
from s4edge.cloud_sync.aggregator.redaction import first_line, redact
from s4edge.cloud_sync.aggregator.store_url import full_disk, store_url
from s4edge.cloud_sync.aggregator.unnest import table_name, takes_arrays, unnest_select
from s4edge.cloud_sync.aggregator.views import (
    alert_dict,
    alert_row,
    command_dict,
    decode_cursor,
    decode_node_cursor,
    encode_cursor,
    encode_node_cursor,
    node_dict,
    utc,
)
from s4edge.cloud_sync.messages import Alert, CommandResult, Heartbeat, Status, Telemetry

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

metadata = MetaData()
# An index or a column added to a table that older stores already have is marked
# ``info={LATER: True}``: create_all makes a missing table with its indexes and columns, but
# never adds one to a table that exists, so Store.create_all adds these itself (such a column is
# nullable: the rows from before it hold none). (A store made before the console's roll-up
# index has ix_alerts_incident on incident alone as well: harmless.)
LATER: Final = "later"
OWNER_CACHE_MAX = 100_000  # incidents whose owner a writer remembers (some 20 MB at most)
# Indexes a later one replaced, dropped at start once it is made (writes pay for every index)
SUPERSEDED: Final = ("ix_alerts_incident_rollup",)

PG_CONNECT_TIMEOUT_S = 10
DDL_LOCK_KEY = 0x53344544  # "S4ED": the advisory lock that serialises schema creation

nodes = Table(
    "nodes",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("state", String(16)),  # online/offline from the retained status; NULL until one arrives
    Column("status_ts", DateTime(timezone=True)),
    Column("boot_id", String(128)),
    Column("version", String(128)),
    Column("config_digest", String(64)),
    Column("degraded", JSON),
    Column("heartbeat_ts", DateTime(timezone=True)),  # the node's clock
    Column("heartbeat_at", DateTime(timezone=True)),  # our clock: staleness is judged on it
    Column("heartbeat_interval_s", Float),
    Column("health", JSON),
    Column("changed_at", DateTime(timezone=True)),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(64), primary_key=True),  # the de-dup key (docs/architecture.md, "Delivery guarantees")
    Column("node_id", String(64), nullable=False),
    Column("site", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(8), nullable=False),
    Column("incident", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("zone", String(128)),
    Column("title", String(128)),
    Column("detail", Text),
    Column("measurements", JSON(none_as_null=True)),
    Column("detection", JSON(none_as_null=True)),
    Column("model", JSON(none_as_null=True)),
    Column("acked_at", DateTime(timezone=True)),
    Column("acked_by", String(64)),
    Index("ix_alerts_ts", "ts", "id"),
    Index("ix_alerts_node", "site", "node_id", "ts"),
    # incident first: an incident's alerts, in its node's order (seq: a clock stepped back
    # leaves it be); the rest covers the console's roll-up (incidents.py)
    Index("ix_alerts_incident_seq", "incident", "seq", "ts", "state", "severity", info={LATER: True}),
)

# One row per node: the last telemetry message, so the table stays bounded by the fleet size.
telemetry = Table(
    "telemetry",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("readings", JSON, nullable=False),
)

commands = Table(
    "commands",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("name", String(32), nullable=False),
    Column("args", JSON, nullable=False),
    Column("issuer", String(64), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Index("ix_commands_node", "site", "node_id", "issued_at"),
)

cmd_results = Table(
    "cmd_results",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("cmd_id", String(64), nullable=False, index=True),
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("detail", Text),
    Column("data", JSON),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


# Alerts stored for forwarding (NG112) that the forwarder has not taken yet. Ingest writes a
# job in the commit that stores its alert; the forwarder deletes it in the commit that records
# what the alert means for the PSAP. So no crash between the two loses or repeats a forward.
forward_jobs = Table(
    "forward_jobs",
    metadata,
    Column("alert_id", String(64), primary_key=True),
)


# The operator's console (docs/architecture.md, "The operator's console"). An incident is the
# alerts that share its id; acknowledging one is the operator's act on the whole incident,
# kept here rather than on each alert so that an alert arriving later finds it.
incident_acks = Table(
    "incident_acks",
    metadata,
    Column("incident", String(64), primary_key=True),
    Column("acked_at", DateTime(timezone=True), nullable=False),
    Column("acked_by", String(64), nullable=False),
    Column("acked_severity", String(16)),  # its peak when acknowledged: a later escalation shows as such
)

# The node each incident belongs to: the sender of its first stored alert. An incident id is a
# node's own (edge/alerts.py draws it at random); another node's alert under it is refused
# (writer.py, ``incident_conflict``), or it could end, rewrite or join that node's incident,
# its acknowledgement and its NG112 call, all of which go by the incident id alone.
incident_owners = Table(
    "incident_owners",
    metadata,
    Column("incident", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
)

# What an aggregator keeps for itself, shared by its replicas and workers through the store.
aggregator_settings = Table(
    "aggregator_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

# Telemetry for the trend charts, downsampled into buckets (downsample.py) and pruned after the
# retention period (trends.py); ``telemetry`` above keeps only the last message per node.
telemetry_series = Table(
    "telemetry_series",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("quantity", String(128), primary_key=True),
    Column("sensor", String(128), primary_key=True),  # '' when the reading names none
    Column("bucket", BigInteger, primary_key=True),  # its start, seconds since the epoch (UTC)
    Column("unit", String(128), nullable=False),
    Column("n", Integer, nullable=False),
    Column("total", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Index("ix_telemetry_series_bucket", "bucket"),  # the retention's DELETE
)


def _later_indexes() -> list[Index]:
    """Every index of ``metadata`` marked ``LATER``: this module's, and those of the modules
    that add their tables to it (ng112/records.py)."""
    return [index for table in metadata.sorted_tables for index in table.indexes if index.info.get(LATER)]


def _later_columns() -> list[Column[Any]]:
    """Every column of ``metadata`` marked ``LATER``, as ``_later_indexes``."""
    return [column for table in metadata.sorted_tables for column in table.columns if column.info.get(LATER)]


# SQLite opens a file it may not write read-only, and that connection stays read-only after
# the file becomes writable; an I/O error or a file it cannot open is no better. Each is taken
# for a lost connection, so that the pool opens new ones (SQLite result codes, sqlite.org/rescode.html).
_SQLITE_REOPEN = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")


WAL_LIMIT_BYTES: Final = 8 * 1024 * 1024


def make_engine(url: str | URL, schema: str | None = None, sqlite_sync: str = "FULL") -> Engine:
    """An engine for ``sqlite:///path`` or PostgreSQL (``postgres://``, ``postgresql://`` or
    ``postgresql+psycopg://``, all opened with psycopg 3: ``store_url``).

    ``schema`` (PostgreSQL only) places every table of ``metadata`` in that schema,
    which isolates test runs and lets several deployments share one database.
    ``sqlite_sync``: FULL makes every commit survive a power cut before the broker
    gets its ack; NORMAL (WAL) survives a crash of the process but not of the OS,
    and ingests faster (see ``s4edge bench ingest``).
    """
    url = store_url(url) if isinstance(url, str) else url
    if url.get_backend_name() == "sqlite":
        if schema:
            raise ValueError("schema= is for PostgreSQL; give SQLite its own file instead")
        if sqlite_sync.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"sqlite_sync {sqlite_sync!r}: FULL or NORMAL")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        # The WAL keeps the size it grew to while readers held back its checkpoints (a console
        # polling under steady ingest: 64 MB beside a 42 MB file), unless limited: cut back to
        # WAL_LIMIT_BYTES at each checkpoint that empties it (Retention makes one now and then).
        pragmas = (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={sqlite_sync.upper()}",
            f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}",
        )
        event.listen(engine, "connect", lambda dbapi_conn, _record: _run(dbapi_conn, pragmas))
        event.listen(engine, "handle_error", _reopen_sqlite)
        return engine
    # libpq waits for an unanswered connect as long as the OS does (minutes); the URL may set its own.
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    engine = create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=connect_args)
    if schema:
        with engine.begin() as conn:
            _serialise_ddl(conn)
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        engine = engine.execution_options(schema_translate_map={None: schema})
    return engine


def _run(dbapi_conn: Any, statements: Sequence[str]) -> None:
    # WAL lets the HTTP API read while ingest writes.
    cursor = dbapi_conn.cursor()
    for statement in statements:
        cursor.execute(statement)
    cursor.close()


def _reopen_sqlite(context: ExceptionContext) -> None:
    name = getattr(context.original_exception, "sqlite_errorname", "")
    if name.startswith(_SQLITE_REOPEN):
        context.is_disconnect = True  # the pool is emptied, and the error is retried as an outage


def _serialise_ddl(conn: Connection) -> None:
    # Replicas that start together would race on CREATE TABLE (PostgreSQL does not make
    # IF NOT EXISTS atomic); a transaction-scoped advisory lock queues them.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK_KEY})


_NOT_HEALTH = {"schema_", "id", "node_id", "site", "ts", "seq", "type"}  # a heartbeat's envelope
_BEAT_COLUMNS = ("site", "node_id", "heartbeat_ts", "heartbeat_at", "heartbeat_interval_s", "health")


@functools.lru_cache(maxsize=16)
def _heartbeat_upsert(table: str, dialect: Dialect) -> str:
    """PostgreSQL: a batch's heartbeats, one row a node, as one upsert of arrays into ``table``
    (the nodes table as a connection names it); made once, not once a batch."""
    changed = ", ".join(f"{c} = EXCLUDED.{c}" for c in _BEAT_COLUMNS[2:])
    return (
        f"INSERT INTO {table} ({', '.join(_BEAT_COLUMNS)}) "
        f"{unnest_select(dialect, nodes, _BEAT_COLUMNS, ('health',))} "
        f"ON CONFLICT (site, node_id) DO UPDATE SET {changed}"
    )


def _insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which offers ON CONFLICT on both SQLite and PostgreSQL."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@dataclass(frozen=True)
class AlertQuery:
    site: str | None = None
    node: str | None = None
    kind: str | None = None
    severity: str | None = None
    state: str | None = None
    incident: str | None = None
    since: datetime | None = None
    received_since: datetime | None = None  # by our clock: an alert its node kept for an hour arrives now
    acked: bool | None = None
    limit: int = 100
    cursor: str | None = None


@dataclass(frozen=True)
class NodeQuery:
    site: str | None = None
    condition: str | None = None  # one of node_health.CONDITIONS
    limit: int = 100
    cursor: str | None = None


# The retained state a node in each condition has (node_health.condition); whether an online
# one is stale is judged on our clock against its own learnt interval (views.node_dict).
_STATE_IN = {
    "online": nodes.c.state == "online",
    "stale": nodes.c.state == "online",
    "offline": nodes.c.state == "offline",
    "unknown": or_(nodes.c.state.is_(None), nodes.c.state.not_in(("online", "offline"))),
}


def learnt_interval(before: float | None, gap: float) -> float:
    """A node's heartbeat interval, learnt from the ``gap`` between two arrivals: the gap itself
    the first time; then half way towards it, the gap taken as 0.5 to 2 times what was learnt,
    so that one gap moves it by a quarter down or a half up at most, and a wrong value (a
    restart's two quick heartbeats, a reconfigured node) comes right within a few heartbeats.
    Taken whole, two heartbeats 0.5 s apart at a restart made the node stale 1.5 s later, and
    one stall of 40 s hid its death for 2 minutes."""
    if before is None:
        return gap
    return 0.5 * before + 0.5 * min(max(gap, before / 2), 2 * before)


class Store:
    def __init__(self, engine: Engine, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.clock = clock
        self._alert_insert: dict[str, Any] = {}
        self._owner_cache: dict[str, tuple[str, str]] = {}  # incident → (site, node): one read per incident

    def create_all(self) -> bool:
        """Create missing tables, and the columns and indexes of ``LATER``; safe when several
        replicas start at once. False, with a warning, when an SQLite store's disk is too full
        for it (``full_disk``; SQLite cannot even read a WAL store whose -shm it cannot make): an
        outage, which ingest waits out as well; call again once there is room."""
        try:
            self._create_tables()
            complete = all([self._add_column(column) for column in _later_columns()])  # before indexes on them
            for index in _later_indexes():
                try:
                    with self.engine.begin() as conn:
                        _serialise_ddl(conn)
                        index.create(conn, checkfirst=True)
                except OperationalError as exc:  # SQLite: another process made it meanwhile; else a timeout
                    log.warning("store: index %s not made now: %s", index.name, str(exc.orig).strip()[:200])
                    complete = False
                except IntegrityError as exc:  # a unique index over rows made before it, which it refuses
                    log.warning("store: index %s not made, rows already break it: %s", index.name, str(exc.orig)[:200])
            self._drop_superseded()
        except OperationalError as exc:
            if (full := full_disk(self.engine.url)) is None:
                raise
            log.warning("store: tables not checked now, %s (%s)", full, first_line(exc.orig))
            return False
        # what a timeout left undone waits for the next start; what a full disk did, for room
        return complete or full_disk(self.engine.url) is None

    def _create_tables(self) -> None:
        try:
            with self.engine.begin() as conn:
                _serialise_ddl(conn)
                metadata.create_all(conn)
        except OperationalError:
            # SQLite: another process created a table between our check and our CREATE.
            metadata.create_all(self.engine)

    def _add_column(self, column: Column[Any]) -> bool:
        """``column`` on its table, where a store made before it lacks it (both SQLite and
        PostgreSQL add a nullable column in place, whatever the table's size); False when it
        could not be added now."""
        table = column.table
        try:
            with self.engine.begin() as conn:
                _serialise_ddl(conn)
                schema = conn.schema_for_object(table)  # make_engine's schema, on PostgreSQL
                if any(found["name"] == column.name for found in inspect(conn).get_columns(table.name, schema=schema)):
                    return True
                quote = conn.dialect.identifier_preparer
                prefix = f"{quote.quote_schema(schema)}." if schema else ""
                conn.exec_driver_sql(
                    f"ALTER TABLE {prefix}{quote.quote(table.name)} ADD COLUMN {quote.quote(column.name)} "
                    f"{column.type.compile(dialect=conn.dialect)}"
                )
        except OperationalError as exc:  # SQLite: another process added it meanwhile; else a timeout
            log.warning("store: column %s.%s not added now: %s", table.name, column.name, str(exc.orig).strip()[:200])
            return False
        return True

    def _drop_superseded(self) -> None:
        """Drop the indexes later ones replaced, once the later ones are there: a store that could
        not build its new index (a statement timeout) keeps the old one."""
        with self.engine.begin() as conn:
            _serialise_ddl(conn)
            schema = conn.schema_for_object(alerts)  # make_engine's schema, on PostgreSQL
            names = {index["name"] for index in inspect(conn).get_indexes(alerts.name, schema=schema)}
            if not all(index.name in names for index in _later_indexes() if index.table is alerts):
                return
            quote = conn.dialect.identifier_preparer
            prefix = f"{quote.quote_schema(schema)}." if schema else ""
            for name in SUPERSEDED:
                if name in names:
                    conn.exec_driver_sql(f"DROP INDEX {prefix}{quote.quote(name)}")

    def share_group(self) -> str:
        """The ``$share`` group of this aggregator's workers and replicas, all that share this
        store: drawn at random once and kept here. A group a node can guess, it can join with its
        own credentials; the broker then gives it its turn of the fleet's messages, which its ACL
        forbids it to read, and drops them (mosquitto's acl_file checks no subscription filter)."""
        kept = select(aggregator_settings.c.value).where(aggregator_settings.c.name == "share_group")
        try:
            with self.engine.connect() as conn:  # drawn before: a read, which a read-only store allows
                found = conn.execute(kept).scalar_one_or_none()
        except OperationalError:
            # SQLite on a full disk cannot even read without room for its shared-memory file; the
            # group drawn before is read from the file as it is, or the fallback would be guessable
            found = self._sqlite_setting("share_group")
            if found is None:
                raise
        if found is not None:
            return str(found)
        with self.engine.begin() as conn:
            drawn = {"name": "share_group", "value": f"s4edge-{secrets.token_hex(16)}"}
            conn.execute(_insert(conn, aggregator_settings).on_conflict_do_nothing(index_elements=["name"]), drawn)
            return str(conn.execute(kept).scalar_one())

    def _sqlite_setting(self, name: str) -> str | None:
        """A setting read from an SQLite store's file with no -shm or -wal made (``immutable=1``:
        what a full disk allows); None on PostgreSQL, or where it cannot be read so."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        try:
            with closing(sqlite3.connect(f"file:{urllib.parse.quote(database)}?mode=ro&immutable=1", uri=True)) as conn:
                row = conn.execute("SELECT value FROM aggregator_settings WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    # -- ingest (all inside one caller-owned transaction per batch) ---------------------------

    def insert_alerts(self, conn: Connection, batch: Sequence[tuple[Alert, datetime]]) -> set[str]:
        """Insert alerts; return the ids that were new. Safe against concurrent replicas."""
        if not batch:
            return set()
        rows = [alert_row(alert, received_at) for alert, received_at in batch]
        stmt = self._alert_insert.get(conn.dialect.name)
        if stmt is None:  # built once per dialect: the batch path runs for every commit
            stmt = _insert(conn, alerts).on_conflict_do_nothing(index_elements=["id"]).returning(alerts.c.id)
            self._alert_insert[conn.dialect.name] = stmt
        return {row[0] for row in conn.execute(stmt, rows)}

    def foreign_alert_ids(self, conn: Connection, alerts_: Sequence[Alert]) -> set[str]:
        """Of alerts whose id the store held already, those it holds for another node: a
        receipt for them would make their sender forget an alert nobody stored."""
        senders = {a.id: (a.site, a.node_id) for a in alerts_}
        held = conn.execute(select(alerts.c.id, alerts.c.site, alerts.c.node_id).where(alerts.c.id.in_(list(senders))))
        return {alert_id for alert_id, site, node in held if senders[alert_id] != (site, node)}

    def foreign_incidents(self, conn: Connection, alerts_: Sequence[Alert]) -> set[str]:
        """Ids of these alerts whose incident another node holds. An incident without an owner
        yet goes to the sender of its earliest stored alert (one stored before owners were kept,
        or by a replica of the version before), else to its first sender in this batch."""
        senders: dict[str, tuple[str, str]] = {}
        for alert in alerts_:
            senders.setdefault(alert.incident, (alert.site, alert.node_id))
        if not senders:
            return set()
        cached = self._owner_cache
        owner = {i: cached[i] for i in senders if i in cached}
        if len(owner) < len(senders):
            held = self._owners(conn, [i for i in senders if i not in owner])
            owner |= held
            if len(cached) + len(held) > OWNER_CACHE_MAX:
                cached.clear()
            cached |= held  # committed before this transaction: an owner never changes
        unowned = [incident for incident in senders if incident not in owner]
        if unowned:
            earliest: dict[str, tuple[str, str]] = {}
            stored = select(alerts.c.incident, alerts.c.site, alerts.c.node_id).where(alerts.c.incident.in_(unowned))
            for incident, site, node in conn.execute(stored.order_by(alerts.c.received_at, alerts.c.id)):
                earliest.setdefault(incident, (site, node))
            claims = [
                {"incident": i, "site": site, "node_id": node}
                for i in unowned
                for site, node in [earliest.get(i, senders[i])]
            ]
            conn.execute(_insert(conn, incident_owners).on_conflict_do_nothing(index_elements=["incident"]), claims)
            owner |= self._owners(conn, unowned)  # a replica's claim meanwhile is the one kept
        return {a.id for a in alerts_ if owner.get(a.incident) != (a.site, a.node_id)}

    @staticmethod
    def _owners(conn: Connection, incidents: list[str]) -> dict[str, tuple[str, str]]:
        held = select(incident_owners.c.incident, incident_owners.c.site, incident_owners.c.node_id).where(
            incident_owners.c.incident.in_(incidents)
        )
        return {incident: (site, node) for incident, site, node in conn.execute(held)}

    def add_forward_jobs(self, conn: Connection, alert_ids: Iterable[str]) -> None:
        rows = [{"alert_id": alert_id} for alert_id in alert_ids]
        if rows:
            conn.execute(forward_jobs.insert(), rows)

    def ensure_nodes(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> None:
        rows = [{"site": site, "node_id": node} for site, node in sorted(set(keys))]
        if rows:
            conn.execute(_insert(conn, nodes).on_conflict_do_nothing(index_elements=["site", "node_id"]), rows)

    def record_status(self, conn: Connection, status: Status, received_at: datetime) -> None:
        values = {
            "state": status.state,
            "status_ts": utc(status.ts),
            "boot_id": status.boot_id,
            "version": status.version,
            "config_digest": status.config_digest,
            "degraded": list(status.degraded),
            "changed_at": received_at,
        }
        stmt = _insert(conn, nodes).values(site=status.site, node_id=status.node_id, **values)
        # Arrival order, never the node's clock (a status dated 9999 would freeze the record); the
        # guard keeps a replica that commits late from rolling back what another received later.
        stmt = stmt.on_conflict_do_update(
            index_elements=["site", "node_id"],
            set_=values,
            where=or_(nodes.c.changed_at.is_(None), nodes.c.changed_at <= stmt.excluded.changed_at),
        )
        conn.execute(stmt)

    def record_heartbeats(self, conn: Connection, beats: Sequence[tuple[Heartbeat, datetime]]) -> None:
        """The latest heartbeat to arrive per node (one per node in ``beats``), in two statements
        for the batch. Arrival order, on our clock: a heartbeat dated 9999 must not freeze the record."""
        if not beats:
            return
        keys = [(beat.site, beat.node_id) for beat, _ in beats]
        columns = select(nodes.c.site, nodes.c.node_id, nodes.c.heartbeat_at, nodes.c.heartbeat_interval_s)
        previous = {
            (row.site, row.node_id): row
            for row in conn.execute(columns.where(tuple_(nodes.c.site, nodes.c.node_id).in_(keys)))
        }
        arrays = takes_arrays(conn.dialect)
        rows = []
        for beat, received_at in beats:
            before = previous.get((beat.site, beat.node_id))
            interval = before.heartbeat_interval_s if before else None
            if before is not None and before.heartbeat_at is not None:
                gap = (received_at - utc(before.heartbeat_at)).total_seconds()
                if gap < 0:
                    continue  # another replica stored one that arrived later: keep it
                if 0 < gap <= 3600:
                    interval = learnt_interval(interval, gap)
            health: Any = (  # as JSON text for the arrays, which go to the driver as they are
                beat.model_dump_json(exclude_none=True, exclude=_NOT_HEALTH)
                if arrays
                else beat.model_dump(mode="json", exclude_none=True, exclude=_NOT_HEALTH)
            )
            rows.append((beat.site, beat.node_id, utc(beat.ts), received_at, interval, health))
        if rows and arrays:
            # one statement for the batch (unnest.py), not one a node
            arrays_of = tuple(list(column) for column in zip(*rows, strict=True))
            conn.exec_driver_sql(_heartbeat_upsert(table_name(conn, nodes), conn.dialect), arrays_of)
        elif rows:
            stmt = _insert(conn, nodes)
            stmt = stmt.on_conflict_do_update(
                index_elements=["site", "node_id"], set_={c: stmt.excluded[c] for c in _BEAT_COLUMNS[2:]}
            )
            conn.execute(stmt, [dict(zip(_BEAT_COLUMNS, row, strict=True)) for row in rows])

    def record_heartbeat(self, conn: Connection, beat: Heartbeat, received_at: datetime) -> None:
        self.record_heartbeats(conn, [(beat, received_at)])

    def record_telemetry(self, conn: Connection, reading: Telemetry, received_at: datetime) -> None:
        self.record_telemetry_batch(conn, [(reading, received_at)])

    def record_telemetry_batch(self, conn: Connection, readings: Sequence[tuple[Telemetry, datetime]]) -> None:
        """The latest telemetry to arrive per node (one per node in ``readings``)."""
        if not readings:
            return
        rows = [
            {
                "site": reading.site,
                "node_id": reading.node_id,
                "ts": utc(reading.ts),
                "received_at": received_at,
                "readings": [r.model_dump(mode="json", exclude_none=True) for r in reading.readings],
            }
            for reading, received_at in readings
        ]
        stmt = _insert(conn, telemetry)
        stmt = stmt.on_conflict_do_update(
            index_elements=["site", "node_id"],
            set_={c: stmt.excluded[c] for c in ("ts", "received_at", "readings")},
            where=telemetry.c.received_at <= stmt.excluded.received_at,
        )
        conn.execute(stmt, rows)

    def record_telemetry_series(self, conn: Connection, readings: Sequence[tuple[Telemetry, datetime]]) -> None:
        """Every telemetry message of the batch into its bucket (downsample.py): counts and sums
        added, extremes kept, so buckets filled by several batches or replicas add up."""
        rows = buckets(readings)
        if not rows:
            return
        stmt = _insert(conn, telemetry_series)
        old, new = telemetry_series.c, stmt.excluded
        # two-argument min/max are SQLite's scalar functions; PostgreSQL calls them least/greatest
        least, greatest = (func.min, func.max) if conn.dialect.name == "sqlite" else (func.least, func.greatest)
        stmt = stmt.on_conflict_do_update(
            index_elements=["site", "node_id", "quantity", "sensor", "bucket"],
            set_={
                "unit": new.unit,
                "n": old.n + new.n,
                "total": old.total + new.total,
                "low": least(old.low, new.low),
                "high": greatest(old.high, new.high),
            },
        )
        conn.execute(stmt, rows)

    def record_cmd_result(self, conn: Connection, result: CommandResult, received_at: datetime) -> None:
        row = {
            "id": result.id,
            "cmd_id": result.cmd_id,
            "site": result.site,
            "node_id": result.node_id,
            "name": result.name,
            "ok": result.ok,
            "detail": redact(result.detail),  # a refused config may quote an inline password
            "data": redact(dict(result.data)),
            "ts": utc(result.ts),
            "received_at": received_at,
        }
        conn.execute(_insert(conn, cmd_results).values(**row).on_conflict_do_nothing(index_elements=["id"]))

    # -- operator side -------------------------------------------------------------------------

    def ack_alert(self, alert_id: str, by: str) -> dict[str, Any] | None:
        """Acknowledge once; a second ack keeps the first operator and time."""
        with self.engine.begin() as conn:
            conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.acked_at.is_(None))
                .values(acked_at=self.clock(), acked_by=by)
            )
            row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        return alert_dict(row) if row else None

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        return alert_dict(row) if row else None

    def alerts(self, query: AlertQuery) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first (by the node's ts, then id); returns (page, next_cursor)."""
        stmt = select(alerts)
        for column, value in (
            (alerts.c.site, query.site),
            (alerts.c.node_id, query.node),
            (alerts.c.kind, query.kind),
            (alerts.c.severity, query.severity),
            (alerts.c.state, query.state),
            (alerts.c.incident, query.incident),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if query.since is not None:
            stmt = stmt.where(alerts.c.ts >= utc(query.since))
        if query.received_since is not None:
            stmt = stmt.where(alerts.c.received_at >= utc(query.received_since))
        if query.acked is not None:
            stmt = stmt.where(alerts.c.acked_at.isnot(None) if query.acked else alerts.c.acked_at.is_(None))
        if query.cursor:
            ts, alert_id = decode_cursor(query.cursor)
            stmt = stmt.where(or_(alerts.c.ts < ts, and_(alerts.c.ts == ts, alerts.c.id < alert_id)))
        stmt = stmt.order_by(alerts.c.ts.desc(), alerts.c.id.desc()).limit(query.limit + 1)
        with self.engine.connect() as conn:
            rows = [alert_dict(r) for r in conn.execute(stmt).mappings()]
        page = rows[: query.limit]
        more = len(rows) > query.limit
        next_cursor = encode_cursor(datetime.fromisoformat(page[-1]["ts"]), page[-1]["id"]) if more else None
        return page, next_cursor

    def count_alerts(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(alerts)).scalar_one())

    def nodes(self, default_interval_s: float, stale_factor: float) -> list[dict[str, Any]]:
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(select(nodes).order_by(nodes.c.site, nodes.c.node_id)).mappings().all()
        return [node_dict(r, now, default_interval_s, stale_factor) for r in rows]

    def node_page(
        self, query: NodeQuery, default_interval_s: float, stale_factor: float
    ) -> tuple[list[dict[str, Any]], str | None]:
        """By site, then node id: a key no heartbeat changes, so that a walk by next_cursor meets
        every node once, whatever changes meanwhile; returns (page, next_cursor)."""
        if query.condition is not None and query.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}")
        stmt = select(nodes).order_by(nodes.c.site, nodes.c.node_id)
        if query.site is not None:
            stmt = stmt.where(nodes.c.site == query.site)
        if query.condition is not None:
            stmt = stmt.where(_STATE_IN[query.condition])
        if query.cursor:
            stmt = stmt.where(tuple_(nodes.c.site, nodes.c.node_id) > tuple_(*decode_node_cursor(query.cursor)))
        now = self.clock()
        page: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            # streamed a page at a time, not LIMITed: online and stale nodes differ by our clock
            # alone, so a page of either may read past nodes of the other
            for row in conn.execute(stmt.execution_options(yield_per=query.limit + 1)).mappings():
                node = node_dict(row, now, default_interval_s, stale_factor)
                if query.condition is None or condition(node) == query.condition:
                    page.append(node)
                    if len(page) > query.limit:
                        break
        more = len(page) > query.limit
        page = page[: query.limit]
        return page, encode_node_cursor(page[-1]["site"], page[-1]["node_id"]) if more else None

    def node(self, site: str, node_id: str, default_interval_s: float, stale_factor: float) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(nodes).where(nodes.c.site == site, nodes.c.node_id == node_id)).mappings().first()
        return node_dict(row, self.clock(), default_interval_s, stale_factor) if row else None

    def knows_node(self, site: str, node_id: str) -> bool:
        with self.engine.connect() as conn:
            where = (nodes.c.site == site) & (nodes.c.node_id == node_id)
            return conn.execute(select(nodes.c.node_id).where(where)).first() is not None

    def count_online(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(nodes).where(nodes.c.state == "online")).scalar_one()
            )

    def record_command(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(commands.insert().values(**row))

    def commands_for(self, site: str, node_id: str, limit: int = 50) -> list[dict[str, Any]]:
        stmt = (
            select(commands)
            .where(commands.c.site == site, commands.c.node_id == node_id)
            .order_by(commands.c.issued_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            cmds = [dict(r) for r in conn.execute(stmt).mappings()]
            ids = [c["id"] for c in cmds]
            # Only the addressee's answer counts: a result's site and node are those of the topic
            # it came on (ingest refuses a mismatch), so another node cannot answer for this one.
            results = (
                conn.execute(
                    select(cmd_results).where(
                        cmd_results.c.cmd_id.in_(ids), cmd_results.c.site == site, cmd_results.c.node_id == node_id
                    )
                )
                .mappings()
                .all()
                if ids
                else []
            )
        by_cmd = {r["cmd_id"]: r for r in sorted(results, key=lambda r: utc(r["received_at"]))}
        return [command_dict(c, by_cmd.get(c["id"])) for c in cmds]
