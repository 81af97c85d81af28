"""End-to-end receipts (docs/architecture.md, "Delivery guarantees"): an alert leaves the
node's outbox only when the aggregator that stored it says so, so a broker that loses
what it had acknowledged loses no alert. Real mosquitto, real SQLite."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.store import alerts as alerts_table
from s4edge.cloud_sync.messages import Alert, Location, Receipt, decode, decode_from, encode, topic, topic_for
from s4edge.cloud_sync.outbox import Outbox
from s4edge.cloud_sync.uplink import receipt_wait
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.edge.incident_journal import RESTARTED
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until
from s4edge.testing.listener import Listener

SITE, NODE = "plaza", "receipt-node"


def node_config(broker: Mosquitto, tmp_path: Path, receipt_timeout_s: float = 1.0) -> Any:
    return parse_config(
        {
            "node_id": NODE,
            "site": SITE,
            "location": {"lat": 52.52, "lon": 13.405},
            "mqtt": {"url": broker.url, "keepalive_s": 5},
            "outbox": {
                "path": str(tmp_path / "outbox.db"),
                "receipt_timeout_s": receipt_timeout_s,
                "receipt_backoff_max_s": 4 * receipt_timeout_s,
            },
            "sources": [],
        }
    )


def draft(i: int) -> AlertDraft:
    return AlertDraft(kind="smoke", severity="Severe", state="new", incident=f"incident-{i:05d}")


def aggregator_config(broker: Mosquitto, tmp_path: Path, writer: str = "thread") -> AggregatorConfig:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    return AggregatorConfig(BrokerConfig(broker.url), db_url=db, client_id="receipts-agg", writer=writer)


def stored_ids(aggregator: Aggregator) -> list[str]:
    """The alerts stored, less the ends a restarted node sends for the incidents it had open
    (edge/incident_journal.py): these tests count what the node created before."""
    query = select(alerts_table.c.id).where(alerts_table.c.detail.is_distinct_from(RESTARTED))
    with aggregator.store.engine.connect() as conn:
        return [row.id for row in conn.execute(query)]


@pytest.fixture
def listener(broker: Mosquitto, request: pytest.FixtureRequest) -> Iterator[Listener]:
    running = Listener(broker, getattr(request, "param", topic(SITE, NODE, "alert")))
    yield running
    running.close()


def _autosave_after(broker: Mosquitto, since: float) -> bool:
    db = broker.workdir / "mosquitto.db"
    return db.exists() and db.stat().st_mtime > since


@pytest.mark.slow
def test_a_broker_killed_while_the_aggregator_is_down_loses_no_alert(broker: Mosquitto, tmp_path: Path) -> None:
    """The broker PUBACKs the node's alerts, holds them for the offline aggregator's session
    in memory only (mosquitto saves every autosave_interval), and is killed -9. Without
    receipts the node had deleted them at the PUBACK: they were gone for good."""
    with Aggregator(aggregator_config(broker, tmp_path)):
        pass  # leaves its persistent session and subscriptions on the broker
    since = time.time()
    wait_until(lambda: _autosave_after(broker, since), what="an autosave holding the aggregator's session")

    node = Node(node_config(broker, tmp_path))
    node.start()
    try:
        wait_until(node.uplink.connected.is_set, what="the node's connection")
        # Right after an autosave, so that the next one cannot come before the kill.
        since = (broker.workdir / "mosquitto.db").stat().st_mtime
        wait_until(lambda: _autosave_after(broker, since), what="the next autosave")
        created = [node.publish_alert(draft(i)).id for i in range(5)]
        wait_until(lambda: node.outbox.unsent() == 0, what="the broker's PUBACK for every alert")
        broker.kill()
    finally:
        node.close(flush_s=0)
    with Outbox(tmp_path / "outbox.db") as outbox:
        assert outbox.depth() == len(created), "acknowledged by the broker, the alerts wait for their receipts"

    broker.start()
    with Aggregator(aggregator_config(broker, tmp_path)) as aggregator:
        node = Node(node_config(broker, tmp_path))
        node.start()
        try:
            wait_until(lambda: node.outbox.depth() == 0, 30, "a receipt for every alert")
        finally:
            node.close(flush_s=0)
        stored = stored_ids(aggregator)
    assert sorted(stored) == sorted(created), "every alert created is stored exactly once"


def test_an_alert_is_sent_again_until_its_receipt_comes(broker: Mosquitto, tmp_path: Path, listener: Listener) -> None:
    node = Node(node_config(broker, tmp_path, receipt_timeout_s=0.3))
    node.start()
    try:
        alert = node.publish_alert(draft(1))
        wait_until(lambda: len(listener.got) >= 3, what="the alert sent again twice without a receipt")
        assert {decode(payload).id for _, payload in listener.got} == {alert.id}
        assert node.outbox.depth() == 1 and node.outbox.unsent() == 0
        wait_until(lambda: node.outbox.due(float("inf"), 0.0)[0].attempts >= 3, what="the third attempt recorded")

        receipt_topic = topic(SITE, NODE, "receipt")
        listener.publish(receipt_topic, b"{not json")
        someone_else = Receipt(node_id=NODE, site=SITE, seq=1, issuer="agg-1", alert_ids=["never-ours-0001"])
        listener.publish(receipt_topic, encode(someone_else))
        assert node.outbox.depth() == 1
        receipt = Receipt(node_id=NODE, site=SITE, seq=2, issuer="agg-1", alert_ids=[alert.id])
        listener.publish(receipt_topic, encode(receipt))
        listener.publish(receipt_topic, encode(receipt))  # a receipt twice changes nothing more
        wait_until(lambda: node.outbox.depth() == 0, what="the receipt deleting the alert")
        wait_until(lambda: node.rejected == {"bad_json": 1}, what="the malformed receipt refused")
    finally:
        node.close(flush_s=0)


def test_the_wait_for_a_receipt_doubles_up_to_its_cap() -> None:
    rng = random.Random(3)
    waits = [receipt_wait(attempts, 30.0, 600.0, rng) for attempts in range(8)]
    floors = [30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0]
    assert all(floor <= wait <= 1.25 * floor for wait, floor in zip(waits, floors, strict=True))


def alert(node_id: str, seq: int) -> Alert:
    return Alert(
        id=f"alert-{node_id}-{seq:04d}", node_id=node_id, site=SITE, seq=seq, kind="gas", severity="Moderate",
        state="new", incident=f"incident-{node_id}", location=Location(lat=0, lon=0),
    )  # fmt: skip


@pytest.mark.parametrize("listener", ["s4edge/v1/+/+/receipt"], indirect=True)
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_the_aggregator_confirms_new_and_already_stored_alerts_to_their_node(
    broker: Mosquitto, tmp_path: Path, listener: Listener, writer: str
) -> None:
    def confirmed() -> dict[str, list[str]]:
        by_node: dict[str, list[str]] = {}
        for topic_name, payload in listener.got:
            receipt = decode_from(topic_name, payload)
            assert isinstance(receipt, Receipt) and receipt.issuer == "receipts-agg"
            by_node.setdefault(receipt.node_id, []).extend(receipt.alert_ids)
        return by_node

    with Aggregator(aggregator_config(broker, tmp_path, writer)):
        first = [alert("n1", 1), alert("n1", 2), alert("n2", 1)]
        for message in first:
            listener.publish(topic_for(message), encode(message))
        wait_until(lambda: sum(map(len, confirmed().values())) == 3, what="receipts for three alerts")
        assert {node: sorted(ids) for node, ids in confirmed().items()} == {
            "n1": [first[0].id, first[1].id],
            "n2": [first[2].id],
        }
        listener.publish(topic_for(first[0]), encode(first[0]))  # a resend of an alert already stored
        wait_until(lambda: confirmed()["n1"].count(first[0].id) == 2, what="the stored alert confirmed again")
