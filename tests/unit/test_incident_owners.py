"""An incident is the node's that opened it: another node's alert under its id is refused,
on SQLite and PostgreSQL alike, and an incident stored before owners were kept goes to the
sender of its earliest alert. The roll-up index an older store had goes once its
replacement is made."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import OperationalError

from s4edge.cloud_sync.aggregator import store as store_module
from s4edge.cloud_sync.aggregator.store import Store, incident_owners, make_engine
from s4edge.cloud_sync.messages import Alert, Location

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def store(store_db: tuple[str, str | None]) -> Iterator[Store]:
    made = Store(make_engine(*store_db))
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


def test_an_incident_stored_before_owners_were_kept_goes_to_its_earliest_sender(store: Store) -> None:
    # a store of the version before, or an incident a replica of that version stored during a
    # rolling upgrade: no owner row. It goes to the sender of its earliest alert, not to
    # whoever sends next, and not to min(site) with min(node_id) of different senders
    with store.engine.begin() as conn:
        store.insert_alerts(conn, [(alert(1, "n5", "inc-fire-0001"), T0)])
        store.insert_alerts(conn, [(alert(2, "n1", "inc-fire-0001"), T0 + timedelta(seconds=1))])
    assert foreign(store, [alert(3, "n1", "inc-fire-0001")]) == {"alert-n1-0003"}
    assert foreign(store, [alert(4, "n5", "inc-fire-0001")]) == set()
    with store.engine.connect() as conn:
        owners = set(conn.execute(select(incident_owners.c.incident, incident_owners.c.node_id)))
    assert owners == {("inc-fire-0001", "n5")}


def test_the_old_roll_up_index_goes_only_once_its_replacement_is_made(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX " + qualified(conn, "ix_alerts_incident_seq")))
        conn.execute(text(f"CREATE INDEX ix_alerts_incident_rollup ON {qualified(conn, 'alerts')} (incident, ts)"))
    index = next(i for i in store_module._later_indexes() if i.name == "ix_alerts_incident_seq")
    made = index.create

    def timed_out(conn, checkfirst):  # a statement timeout on a big PostgreSQL table
        raise OperationalError("CREATE INDEX", {}, Exception("canceling statement due to statement timeout"))

    index.create = timed_out  # type: ignore[method-assign]
    try:
        store.create_all()
    finally:
        index.create = made  # type: ignore[method-assign]
    assert {"ix_alerts_incident_rollup"} <= index_names(store)  # kept: it was dropped all the same, leaving none
    store.create_all()
    assert "ix_alerts_incident_seq" in index_names(store) and "ix_alerts_incident_rollup" not in index_names(store)


def qualified(conn, name: str) -> str:
    schema = conn.schema_for_object(incident_owners)
    return f'"{schema}"."{name}"' if schema else f'"{name}"'


def index_names(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        schema = conn.schema_for_object(incident_owners)
        return {i["name"] for i in inspect(conn).get_indexes("alerts", schema=schema)}


def test_a_schema_name_that_needs_quoting_starts(pg_schema: str) -> None:
    # --db-schema s4-prod: the DROP INDEX of the superseded index was a syntax error at every start
    quoted = Store(make_engine(POSTGRES, schema=f"{pg_schema}-Prod"))
    try:
        quoted.create_all()
        quoted.create_all()
        assert "ix_alerts_incident_seq" in index_names(quoted)
    finally:
        with quoted.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{pg_schema}-Prod" CASCADE'))
        quoted.engine.dispose()


def test_the_share_group_is_drawn_once_per_store(store: Store) -> None:
    drawn = store.share_group()
    assert drawn.startswith("s4edge-") and store.share_group() == drawn
