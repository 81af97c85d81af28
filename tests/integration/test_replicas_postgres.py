"""Two aggregator replicas, one shared-subscription group, one PostgreSQL: each alert stored once."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import POSTGRES
from sqlalchemy import select

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.store import Store, alerts, make_engine, telemetry
from s4edge.cloud_sync.messages import (
    Alert,
    Heartbeat,
    Location,
    Measurement,
    Receipt,
    Telemetry,
    decode_from,
    encode,
    topic_for,
)
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until


def replica(broker: Mosquitto, schema: str, name: str, writer: str = "thread") -> Aggregator:
    config = AggregatorConfig(
        BrokerConfig(broker.url),
        db_url=POSTGRES,
        db_schema=schema,
        client_id=name,
        group="replicas-test",
        writer=writer,
    )
    return Aggregator(config)


def alert(seq: int, title: str | None = None) -> Alert:
    return Alert(
        id=f"alert-r-{seq:06d}", node_id=f"n{seq % 7}", site="s1", seq=seq, kind="gas", severity="Moderate",
        state="new", incident=f"inc-r-{seq % 7:05d}", location=Location(lat=0, lon=0), title=title,
    )  # fmt: skip


def stored(aggregator: Aggregator) -> float:
    return aggregator.metrics.registry.get_sample_value("s4edge_messages_stored_total", {"type": "alert"}) or 0.0


@pytest.mark.slow
def test_two_replicas_split_the_load_and_store_each_alert_once(
    broker: Mosquitto, pg_schema: str, node: mqtt.Client, tmp_path: Path
) -> None:
    # one commits in its ingest thread, the other in a writer process (aggregator run's default)
    first, second = replica(broker, pg_schema, "replica-a"), replica(broker, pg_schema, "replica-b", "process")
    first.start()
    second.start()
    try:
        total = 300
        infos = [node.publish(topic_for(alert(s)), encode(alert(s)), qos=1) for s in range(total)]
        # A node's outbox resends after a lost PUBACK: the copy may land on the other replica.
        infos += [node.publish(topic_for(alert(s)), encode(alert(s)), qos=1) for s in range(0, total, 10)]
        for info in infos:
            info.wait_for_publish(5)
        wait_until(lambda: first.store.count_alerts() >= total, what=f"{total} alerts")
        wait_until(lambda: stored(first) + stored(second) >= total, what="both replicas' counters")
        with first.store.engine.connect() as conn:
            ids = [row.id for row in conn.execute(select(alerts.c.id))]
        assert len(ids) == total and set(ids) == {alert(s).id for s in range(total)}
        assert stored(first) + stored(second) == total
        assert stored(first) > 0 and stored(second) > 0, (stored(first), stored(second))
    finally:
        first.stop()
        second.stop()


def test_a_row_postgres_refuses_is_rejected_and_the_batch_still_lands(
    broker: Mosquitto, pg_schema: str, node: mqtt.Client
) -> None:
    # a row the store refuses (here a trigger's exception) is isolated, and the rest lands; a NUL,
    # which PostgreSQL's text cannot hold, the schema refuses first, as on SQLite
    with replica(broker, pg_schema, "replica-refuses") as only:
        with only.store.engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE FUNCTION {pg_schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.id = '{alert(1).id}' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE INSERT ON {pg_schema}.alerts "
                f"FOR EACH ROW EXECUTE FUNCTION {pg_schema}.refuse()"
            )
        with_nul = json.loads(encode(alert(3)))
        with_nul["title"] = "gas\u0000leak"
        node.publish(topic_for(alert(3)), json.dumps(with_nul), qos=1).wait_for_publish(5)
        node.publish(topic_for(alert(1)), encode(alert(1)), qos=1).wait_for_publish(5)
        node.publish(topic_for(alert(2)), encode(alert(2)), qos=1).wait_for_publish(5)
        wait_until(lambda: only.store.count_alerts() == 1, what="the good alert")

        def rejected(reason: str) -> float | None:
            return only.metrics.registry.get_sample_value("s4edge_messages_rejected_total", {"reason": reason})

        wait_until(lambda: rejected("store_refused") == 1 and rejected("invalid") == 1, what="both refusals counted")
        assert only.store.alert(alert(1).id) is None and only.store.alert(alert(2).id) is not None


def test_replicas_starting_together_create_the_schema_once(pg_schema: str) -> None:
    failures: list[BaseException] = []

    def start_replica() -> None:
        try:
            Store(make_engine(POSTGRES, pg_schema)).create_all()
        except BaseException as exc:  # collected and asserted on below
            failures.append(exc)

    threads = [threading.Thread(target=start_replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []


def test_a_batch_of_fleet_heartbeats_and_telemetry_on_postgres(pg_schema: str, tmp_path: Path) -> None:
    """PostgreSQL takes a batch's heartbeats as one upsert of arrays (``unnest.py``), SQLite one
    row at a time: the nodes read back the same from both."""
    store = Store(make_engine(POSTGRES, pg_schema))
    store.create_all()
    plain = Store(make_engine(f"sqlite:///{tmp_path / 'plain.db'}"))
    plain.create_all()
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    fleet = [f"n{i:03d}" for i in range(60)]
    for tick in range(2):
        at = t0 + timedelta(seconds=20 * tick)
        beats = [(Heartbeat(node_id=n, site="s1", seq=tick, ts=at, uptime_s=20 * tick), at) for n in fleet]
        readings = [
            (
                Telemetry(
                    node_id=n, site="s1", seq=tick, ts=at, readings=[Measurement(quantity="co", value=tick, unit="ppm")]
                ),
                at,
            )
            for n in fleet
        ]
        with store.engine.begin() as conn:
            store.record_heartbeats(conn, beats)
            store.record_telemetry_batch(conn, readings)
        with plain.engine.begin() as conn:
            plain.record_heartbeats(conn, beats)
    nodes = store.nodes(default_interval_s=30, stale_factor=3)
    beat_fields = ("node_id", "heartbeat_ts", "heartbeat_at", "heartbeat_interval_s", "health")
    assert [{k: n[k] for k in beat_fields} for n in nodes] == [
        {k: n[k] for k in beat_fields} for n in plain.nodes(default_interval_s=30, stale_factor=3)
    ]
    assert len(nodes) == len(fleet)
    assert {n["heartbeat_interval_s"] for n in nodes} == {20.0}
    assert {n["health"]["uptime_s"] for n in nodes} == {20.0}
    with store.engine.connect() as conn:
        values = {row.readings[0]["value"] for row in conn.execute(select(telemetry.c.readings))}
    assert values == {1.0}
    store.engine.dispose()


@pytest.mark.slow
def test_each_replica_confirms_to_the_nodes_what_it_stored(
    broker: Mosquitto, pg_schema: str, node: mqtt.Client
) -> None:
    receipts: list[Receipt] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="receipt-listener", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    listener.on_message = lambda c, u, m: receipts.append(decode_from(m.topic, m.payload))
    listener.on_subscribe = lambda *a: subscribed.set()
    listener.connect(broker.host, broker.port)
    listener.subscribe("s4edge/v1/+/+/receipt", qos=1)
    listener.loop_start()
    first, second = replica(broker, pg_schema, "replica-a"), replica(broker, pg_schema, "replica-b", "process")
    first.start()
    second.start()
    try:
        assert subscribed.wait(10)
        total = 200
        for info in [node.publish(topic_for(alert(s)), encode(alert(s)), qos=1) for s in range(total)]:
            info.wait_for_publish(5)
        by_issuer: dict[str, list[str]] = {}

        def all_confirmed() -> bool:
            by_issuer.clear()
            for receipt in list(receipts):
                assert isinstance(receipt, Receipt)
                assert {alert(int(a[-6:])).node_id for a in receipt.alert_ids} == {receipt.node_id}
                by_issuer.setdefault(receipt.issuer, []).extend(receipt.alert_ids)
            return sum(map(len, by_issuer.values())) >= total

        wait_until(all_confirmed, what=f"receipts for {total} alerts")
        wait_until(lambda: stored(first) + stored(second) >= total, what="both replicas' counters")
        assert sorted(by_issuer) == ["replica-a", "replica-b"]
        a, b = set(by_issuer["replica-a"]), set(by_issuer["replica-b"])
        assert a.isdisjoint(b) and a | b == {alert(s).id for s in range(total)}
        assert (len(a), len(b)) == (stored(first), stored(second)), "each replica confirms what it stored"
    finally:
        first.stop()
        second.stop()
        listener.disconnect()
        listener.loop_stop()
