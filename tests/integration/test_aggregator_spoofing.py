"""What a node (or anyone with broker access) forges does not stick: a heartbeat dated in
the year 9999 is refused and counted, and cannot freeze the node's record; another node's
answer to a command is not taken for the addressee's (real mosquitto, SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import CommandResult, Heartbeat, Status, encode, topic_for
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until

YEAR_9999 = datetime(9999, 12, 31, tzinfo=UTC)


def client(broker: Mosquitto, client_id: str) -> mqtt.Client:
    connected = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected.connect(broker.host, broker.port)
    connected.loop_start()
    return connected


@pytest.fixture
def nodes(broker: Mosquitto) -> Iterator[tuple[mqtt.Client, mqtt.Client]]:
    """Two nodes of site s1: n1, and n2, which forges."""
    n1, n2 = client(broker, "node-n1"), client(broker, "node-n2")
    yield n1, n2
    for each in (n1, n2):
        each.disconnect()
        each.loop_stop()


@pytest.fixture
def aggregator(broker: Mosquitto, tmp_path: Path) -> Iterator[Aggregator]:
    config = AggregatorConfig(BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-s")
    with Aggregator(config) as running:
        yield running


def publish(node: mqtt.Client, message: Any) -> None:
    node.publish(topic_for(message), encode(message), qos=1).wait_for_publish(5)


def sample(aggregator: Aggregator, name: str, **labels: str) -> float:
    return aggregator.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_heartbeat_dated_9999_is_refused_and_later_ones_still_count(
    aggregator: Aggregator, nodes: tuple[mqtt.Client, mqtt.Client]
) -> None:
    n1, _ = nodes
    publish(n1, Status(node_id="n1", site="s1", seq=1, ts=YEAR_9999, state="offline"))
    publish(n1, Heartbeat(node_id="n1", site="s1", seq=2, ts=YEAR_9999, uptime_s=1))
    wait_until(
        lambda: sample(aggregator, "s4edge_messages_rejected_total", reason="future_ts") == 2,
        what="the two forged messages, refused and counted",
    )
    publish(n1, Status(node_id="n1", site="s1", seq=3, state="online"))
    publish(n1, Heartbeat(node_id="n1", site="s1", seq=4, uptime_s=42))
    node = wait_until(
        lambda: (found := aggregator.store.node("s1", "n1", 30, 3)) and found["health"] and found,
        what="the real heartbeat",
    )
    assert (node["state"], node["health"]["uptime_s"]) == ("online", 42.0)
    assert node["heartbeat_ts"][:4] != "9999"


def test_only_the_addressed_node_can_answer_its_command(
    aggregator: Aggregator, nodes: tuple[mqtt.Client, mqtt.Client]
) -> None:
    n1, n2 = nodes
    command_id = aggregator.commands.issue("s1", "n1", "ping", {}, 60)["id"]

    def answer(node: str, seq: int, detail: str) -> CommandResult:
        return CommandResult(node_id=node, site="s1", seq=seq, cmd_id=command_id, name="ping", ok=True, detail=detail)

    def stored_results() -> float:
        return sample(aggregator, "s4edge_messages_stored_total", type="cmd_result")

    def shown() -> Any:
        return aggregator.store.commands_for("s1", "n1")[0]["result"]

    publish(n2, answer("n2", 1, "forged"))  # on n2's own topic: the ACL lets it write only there
    wait_until(lambda: stored_results() == 1, what="the forged answer to be stored")
    assert shown() is None
    publish(n1, answer("n1", 1, "pong"))
    publish(n2, answer("n2", 2, "forged again, later"))
    wait_until(lambda: stored_results() == 3, what="both answers to be stored")
    assert shown()["detail"] == "pong"
