"""An incident is the node's that opened it: another node's alert under its id is refused,
on SQLite and PostgreSQL alike, and a store made before the rule gives each stored incident
to its node when it is opened."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from s4edge.cloud_sync.aggregator.store import Store, incident_owners, make_engine
from s4edge.cloud_sync.messages import Alert, Location

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        made = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    else:
        made = Store(make_engine(POSTGRES, schema=request.getfixturevalue("pg_schema")))
    made.create_all()
    yield made
    made.engine.dispose()


def alert(seq: int, node: str, incident: str) -> Alert:
    return Alert(
        id=f"alert-{node}-{seq:04d}", node_id=node, site="s1", seq=seq, ts=T0 + timedelta(seconds=seq),
        kind="flame", severity="Extreme", state="new", incident=incident, location=Location(lat=48.1, lon=11.5),
    )  # fmt: skip


def foreign(store: Store, batch: list[Alert]) -> set[str]:
    with store.engine.begin() as conn:
        refused = store.foreign_incidents(conn, batch)
        store.insert_alerts(conn, [(a, T0) for a in batch if a.id not in refused])
    return refused


def test_an_incident_is_the_node_s_that_sent_it_first(store: Store) -> None:
    assert foreign(store, [alert(1, "n1", "inc-fire-0001")]) == set()
    assert foreign(store, [alert(1, "n2", "inc-fire-0001"), alert(2, "n2", "inc-gas-00001")]) == {"alert-n2-0001"}
    assert foreign(store, [alert(2, "n1", "inc-fire-0001"), alert(3, "n1", "inc-gas-00001")]) == {"alert-n1-0003"}
    # within one batch, the first sender of a new incident has it
    assert foreign(store, [alert(4, "n1", "inc-new-00001"), alert(3, "n2", "inc-new-00001")]) == {"alert-n2-0003"}


def test_a_store_made_before_owners_gives_each_incident_to_its_node(store: Store) -> None:
    with store.engine.begin() as conn:
        store.insert_alerts(conn, [(alert(1, "n1", "inc-fire-0001"), T0), (alert(1, "n2", "inc-gas-00001"), T0)])
        incident_owners.drop(conn)
    store.create_all()  # an aggregator upgraded onto that store
    with store.engine.connect() as conn:
        owners = set(conn.execute(select(incident_owners.c.incident, incident_owners.c.node_id)))
    assert owners == {("inc-fire-0001", "n1"), ("inc-gas-00001", "n2")}
    assert foreign(store, [alert(2, "n2", "inc-fire-0001")]) == {"alert-n2-0002"}
    store.create_all()  # a restart after that changes nothing
    assert foreign(store, [alert(3, "n1", "inc-fire-0001")]) == set()
