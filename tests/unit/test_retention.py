"""The incident retention (``--incident-retention-days``): ended incidents go with everything
that belongs to them once their last alert is older than the retention; nothing else does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from s4edge.cloud_sync.aggregator import retention as retention_module
from s4edge.cloud_sync.aggregator.incidents import ack_incident
from s4edge.cloud_sync.aggregator.retention import CALLS_IN_FLIGHT, NG112_TABLES, Retention
from s4edge.cloud_sync.aggregator.store import (
    Store,
    alerts,
    forward_jobs,
    incident_acks,
    incident_owners,
    make_engine,
)
from s4edge.cloud_sync.aggregator.writer import BatchWriter
from s4edge.cloud_sync.messages import Alert, AlertState, Location, encode, topic_for
from s4edge.cloud_sync.ng112 import records

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0
PREFIX = "incident-"  # ids are 8 characters or more


def alert(name: str, seq: int, state: AlertState) -> Alert:
    incident = f"{PREFIX}{name}"
    return Alert(
        id=f"{incident}-{seq:02d}", node_id="n1", site="plaza", seq=seq, ts=NOW, kind="gas",
        severity="Severe", state=state, incident=incident, location=Location(lat=48.2, lon=16.4),
    )  # fmt: skip


def received(store: Store, items: list[Alert], at: datetime) -> None:
    """Through the writer's own commit, as ingest writes them, received at ``at``."""
    sent = [m.model_copy(update={"ts": at}) for m in items]
    outcome = BatchWriter(store).write([(topic_for(m), encode(m), at) for m in sent])
    assert outcome is not None and not outcome.rejects, outcome


@pytest.fixture
def store(store_db: tuple[str, str | None]) -> Iterator[Store]:
    created = Store(make_engine(*store_db), clock=lambda: NOW)
    created.create_all()
    yield created
    created.engine.dispose()


def incidents_left(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return {i.removeprefix(PREFIX) for i in conn.execute(select(alerts.c.incident).distinct()).scalars()}


def rows(store: Store, table: Any) -> set[str]:
    with store.engine.connect() as conn:
        return {i.removeprefix(PREFIX) for i in conn.execute(select(table.c.incident)).scalars()}


def call(store: Store, name: str, state: str) -> None:
    """An NG112 call of the incident, as the forwarder records it (ng112/records.py)."""
    incident = f"{PREFIX}{name}"
    with store.engine.begin() as conn:
        conn.execute(
            insert(records.incidents).values(
                incident=incident, site="plaza", node_id="n1", token="t", mode="auto", created_at=NOW
            )
        )
        conn.execute(
            insert(records.forwards).values(
                id=f"f-{incident}", incident=incident, alert_id=f"{incident}-01", ordinal=0, site="plaza",
                node_id="n1", kind="gas", severity="Severe", alert_state="new", status="Actual", alert={},
                state=state, created_at=NOW, due_at=NOW, attempts=1,
            )
        )  # fmt: skip


def test_an_ended_incident_goes_with_its_ack_and_owner_once_older_than_the_retention(store: Store) -> None:
    old, recent = NOW - timedelta(days=31), NOW - timedelta(days=29)
    received(store, [alert("gone", 1, "new"), alert("gone", 2, "end")], old)
    received(store, [alert("open", 1, "new"), alert("open", 2, "update")], old)  # never ended
    received(store, [alert("fresh", 1, "new"), alert("fresh", 2, "end")], recent)
    received(store, [alert("reopened", 1, "new"), alert("reopened", 2, "end")], old)
    received(store, [alert("reopened", 3, "update")], recent)  # a re-trigger opened it again
    ack_incident(store.engine, f"{PREFIX}gone", "op", old)
    retention = Retention(store.engine, 7 * DAY, lambda: NOW, incidents_s=30 * DAY)

    assert retention.prune_incidents_once() == 1
    assert incidents_left(store) == {"open", "fresh", "reopened"}
    assert "gone" not in rows(store, incident_acks) | rows(store, incident_owners)
    assert rows(store, incident_owners) == {"open", "fresh", "reopened"}
    assert retention.prune_incidents_once() == 0


def test_incidents_are_kept_for_good_unless_a_retention_is_set(store: Store) -> None:
    received(store, [alert("ancient", 1, "new"), alert("ancient", 2, "end")], NOW - timedelta(days=3650))
    assert Retention(store.engine, 7 * DAY, lambda: NOW).prune_incidents_once() == 0
    assert incidents_left(store) == {"ancient"}


def test_an_incident_waiting_to_be_forwarded_or_with_a_call_in_flight_is_kept(store: Store) -> None:
    old = NOW - timedelta(days=31)
    for name in ("queued", "calling", "called"):
        received(store, [alert(name, 1, "new"), alert(name, 2, "end")], old)
    with store.engine.begin() as conn:
        store.add_forward_jobs(conn, [f"{PREFIX}queued-02"])  # stored, not yet taken by the forwarder
    call(store, "calling", "retrying")
    call(store, "called", "delivered")

    assert Retention(store.engine, 7 * DAY, lambda: NOW, incidents_s=30 * DAY).prune_incidents_once() == 1
    assert incidents_left(store) == {"queued", "calling"}
    assert rows(store, records.forwards) == rows(store, records.incidents) == {"calling"}
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(forward_jobs)).scalar() == 1


def test_a_backlog_goes_in_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention_module, "INCIDENTS_PER_BATCH", 2)
    monkeypatch.setattr(retention_module, "BATCHES_PER_TURN", 2)
    received(
        store, [alert(f"i{n}", s, st) for n in range(5) for s, st in ((1, "new"), (2, "end"))], NOW - timedelta(days=40)
    )
    retention = Retention(store.engine, 7 * DAY, lambda: NOW, incidents_s=30 * DAY)
    assert retention.prune_incidents_once() == 4  # two batches of two: the rest at the next turn
    assert retention.prune_incidents_once() == 1
    assert incidents_left(store) == set()


def test_the_calls_in_flight_are_the_forwarders_open_states() -> None:
    assert set(CALLS_IN_FLIGHT) == set(records.OPEN_STATES)


# An aggregator run without --ng112 never imports ng112/records.py: what it prunes there
PRUNE_WITHOUT_NG112 = """
import sys
from datetime import datetime
from s4edge.cloud_sync.aggregator.app import Aggregator  # what `aggregator run` imports without --ng112
from s4edge.cloud_sync.aggregator.retention import Retention
from s4edge.cloud_sync.aggregator.store import make_engine
assert "s4edge.cloud_sync.ng112.records" not in sys.modules
url, schema, now = sys.argv[1], sys.argv[2] or None, datetime.fromisoformat(sys.argv[3])
print(Retention(make_engine(url, schema), 7 * 86400, lambda: now, incidents_s=30 * 86400).prune_incidents_once())
"""


def test_an_aggregator_without_ng112_prunes_the_calls_a_store_holds(
    store: Store, store_db: tuple[str, str | None]
) -> None:
    """NG112 forwarding turned off later: the store still holds its calls, which go with their incidents."""
    old = NOW - timedelta(days=31)
    for name in ("called", "calling"):
        received(store, [alert(name, 1, "new"), alert(name, 2, "end")], old)
    call(store, "called", "delivered")
    call(store, "calling", "retrying")  # another replica's forwarder still at it
    url, schema = store_db
    pruned = subprocess.run(
        [sys.executable, "-c", PRUNE_WITHOUT_NG112, url, schema or "", NOW.isoformat()],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert pruned.stdout.strip() == "1"
    assert incidents_left(store) == {"calling"}
    assert rows(store, records.forwards) == rows(store, records.incidents) == {"calling"}


def test_the_ng112_tables_pruned_are_the_forwarders_own() -> None:
    for table in NG112_TABLES:
        assert set(table.c.keys()) <= set(records.metadata.tables[table.name].c.keys()), table.name
