"""A store made by an older release (the schema of commit 304a366, 2026-11-26: no forward jobs,
acknowledgements, owners, settings or trends; forwards without cap_sender/cap_sent, alerts with
the old incident index) is taken over by this one, on SQLite and PostgreSQL alike: its tables
are completed at start, its rows are kept and read as incidents with their NG112 calls, and new
alerts go in beside them through the real ingest path."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
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
    inspect,
)

from s4edge.cloud_sync.aggregator.incidents import IncidentQuery, list_incidents
from s4edge.cloud_sync.aggregator.retention import Retention
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.writer import BatchWriter
from s4edge.cloud_sync.messages import Alert, Location, encode, topic_for
from s4edge.cloud_sync.ng112 import records  # noqa: F401  (its tables join the store's, as `aggregator run --ng112`)

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)

# The tables as 304a366 made them (cloud_sync/aggregator/store.py and cloud_sync/ng112/records.py).
OLD = MetaData()
Table(
    "nodes",
    OLD,
    Column("site", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("state", String(16)),
    Column("status_ts", DateTime(timezone=True)),
    Column("boot_id", String(128)),
    Column("version", String(128)),
    Column("config_digest", String(64)),
    Column("degraded", JSON),
    Column("heartbeat_ts", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("heartbeat_interval_s", Float),
    Column("health", JSON),
    Column("changed_at", DateTime(timezone=True)),
)
OLD_ALERTS = Table(
    "alerts",
    OLD,
    Column("id", String(64), primary_key=True),
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
    Index("ix_alerts_incident", "incident"),
)
Table(
    "telemetry",
    OLD,
    Column("site", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("readings", JSON, nullable=False),
)
Table(
    "commands",
    OLD,
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
Table(
    "cmd_results",
    OLD,
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
OLD_NG112_INCIDENTS = Table(
    "ng112_incidents",
    OLD,
    Column("incident", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("token", String(64), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("first_sender", String(255)),
    Column("first_identifier", String(128)),
    Column("first_sent", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
OLD_FORWARDS = Table(
    "forwards",
    OLD,
    Column("id", String(64), primary_key=True),
    Column("incident", String(64), nullable=False),
    Column("alert_id", String(64), nullable=False, unique=True),
    Column("ordinal", Integer, nullable=False),
    Column("site", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("alert_state", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("alert", JSON, nullable=False),
    Column("state", String(20), nullable=False),
    Column("msg_type", String(8)),
    Column("cap_identifier", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("confirm_by", DateTime(timezone=True)),
    Column("decided_by", String(64)),
    Column("sent_at", DateTime(timezone=True)),
    Column("answered_at", DateTime(timezone=True)),
    Column("code", Integer),
    Column("reason", Text),
    Column("alertmsg_error", Text),
    Column("latency_ms", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("transport", String(8)),
    Index("ix_forwards_incident", "incident", "created_at"),
    Index("ix_forwards_due", "state", "due_at"),
)


def alert(seq: int, state: str, incident: str = "inc-old-1", node: str = "n1", at: datetime = T0) -> Alert:
    return Alert(
        id=f"alert-{node}-{seq:04d}", node_id=node, site="s1", seq=seq, ts=at + timedelta(seconds=seq),
        kind="gas", severity="Severe", state=state, incident=incident, location=Location(lat=48.1, lon=11.5),
    )  # fmt: skip


def old_row(a: Alert, acked_by: str | None = None) -> dict[str, object]:
    return {
        "id": a.id, "node_id": a.node_id, "site": a.site, "seq": a.seq, "ts": a.ts, "received_at": a.ts,
        "kind": a.kind, "severity": a.severity, "state": a.state, "incident": a.incident, "status": a.status,
        "lat": a.location.lat, "lon": a.location.lon, "acked_at": a.ts if acked_by else None, "acked_by": acked_by,
    }  # fmt: skip


def forward(a: Alert, ordinal: int, msg_type: str, state: str) -> dict[str, object]:
    return {
        "id": f"fwd-{a.id}", "incident": a.incident, "alert_id": a.id, "ordinal": ordinal, "site": a.site,
        "node_id": a.node_id, "kind": a.kind, "severity": a.severity, "alert_state": a.state, "status": a.status,
        "alert": a.model_dump(mode="json", by_alias=True), "state": state, "msg_type": msg_type,
        "cap_identifier": f"cap-{a.id}", "created_at": a.ts, "due_at": a.ts, "attempts": 1,
    }  # fmt: skip


@pytest.fixture
def old_store(store_db: tuple[str, str | None]) -> Iterator[Engine]:
    """A store the older release made and filled: an ended incident whose Alert and Cancel went
    to the PSAP, one alert acknowledged, and an open incident whose Alert is being retried."""
    engine = make_engine(*store_db)
    OLD.create_all(engine)
    opened, ended, retried = alert(1, "new"), alert(2, "end"), alert(3, "new", incident="inc-old-2")
    with engine.begin() as conn:
        conn.execute(OLD_ALERTS.insert(), [old_row(opened, acked_by="anna"), old_row(ended), old_row(retried)])
        conn.execute(
            OLD_NG112_INCIDENTS.insert(),
            [
                {"incident": i, "site": "s1", "node_id": "n1", "token": "t" * 32, "mode": "auto", "created_at": T0}
                for i in ("inc-old-1", "inc-old-2")
            ],
        )
        conn.execute(
            OLD_FORWARDS.insert(),
            [
                forward(opened, 0, "Alert", "delivered"),
                forward(ended, 1, "Cancel", "delivered"),
                forward(retried, 0, "Alert", "retrying"),
            ],
        )
    yield engine
    engine.dispose()


def test_an_older_store_is_completed_and_keeps_its_rows(old_store: Engine) -> None:
    store = Store(old_store)
    assert store.create_all()
    found = inspect(old_store.connect())
    schema = old_store.execution_options().get_execution_options().get("schema_translate_map", {}).get(None)
    columns = {c["name"] for c in found.get_columns("forwards", schema=schema)}
    assert {"cap_sender", "cap_sent"} <= columns
    assert "ix_alerts_incident_seq" in {i["name"] for i in found.get_indexes("alerts", schema=schema)}
    assert {"forward_jobs", "incident_acks", "incident_owners", "aggregator_settings"} <= set(
        found.get_table_names(schema=schema)
    )
    page = list_incidents(old_store, IncidentQuery())
    by_id = {record["incident"]: record for record in page["incidents"]}
    assert (page["total"], page["open"]) == (2, 1)
    assert by_id["inc-old-1"]["state"] == "ended" and by_id["inc-old-1"]["alerts"] == 2
    assert by_id["inc-old-1"]["ng112"] == {"state": "delivered", "calls": {"delivered": 2}}
    assert by_id["inc-old-2"]["ng112"]["state"] == "retrying"
    assert store.alert("alert-n1-0001")["acked_by"] == "anna"  # type: ignore[index]


def test_new_alerts_go_in_beside_the_old_ones_and_an_old_incident_stays_its_nodes(old_store: Engine) -> None:
    store = Store(old_store)
    store.create_all()
    writer = BatchWriter(store)
    later = alert(4, "update", incident="inc-old-2")  # the open incident goes on after the upgrade
    stranger = alert(1, "update", incident="inc-old-2", node="n2")  # another node under its id: refused
    fresh = alert(5, "new", incident="inc-new-1")
    now = datetime.now(UTC)
    outcome = writer.write([(topic_for(a), encode(a), now) for a in (later, stranger, fresh)])
    assert outcome is not None
    assert outcome.confirmed == {("s1", "n1"): {later.id, fresh.id}}
    assert [reason for reason, _, _ in outcome.rejects] == ["incident_conflict"]
    assert store.count_alerts() == 5
    record = {r["incident"]: r for r in list_incidents(old_store, IncidentQuery())["incidents"]}["inc-old-2"]
    assert record["alerts"] == 2 and record["node_id"] == "n1"


def test_retention_prunes_an_ended_incident_of_the_older_store(old_store: Engine) -> None:
    store = Store(old_store)
    store.create_all()
    a_year_on = T0 + timedelta(days=365)
    retention = Retention(old_store, 86400.0, lambda: a_year_on, incidents_s=30 * 86400.0)
    assert retention.prune_incidents_once() == 1  # the ended one; the open one and its call in flight stay
    assert {r["incident"] for r in list_incidents(old_store, IncidentQuery())["incidents"]} == {"inc-old-2"}
