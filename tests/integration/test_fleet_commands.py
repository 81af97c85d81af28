"""Remote commands over the fleet's TLS broker: the real aggregator (shared subscription,
its provisioned identity, the fleet's command key) commands a real node agent (its
provisioned config, which names the command public key); the ACL keeps a node identity
from issuing commands at all, and the signature keeps any other key from commanding it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.commands import CommandSigner
from s4edge.cloud_sync.messages import Command, decode, encode, topic, topic_for, utc_now
from s4edge.edge.app import Node
from s4edge.edge.config import load_config
from s4edge.testing import eventually
from s4edge.testing.fleet import SITE, TIMEOUT, Fleet, build_fleet, login

MQTT5_NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    built = build_fleet(tmp_path_factory.mktemp("cmd-fleet"))
    yield built
    built.broker.stop()


@pytest.fixture
def node_config(fleet: Fleet, tmp_path: Path) -> Path:
    """node-a's provisioned config, with its outbox in the test's folder."""
    path = fleet.node_dir("node-a") / "node.yaml"
    data = yaml.safe_load(path.read_text())
    data["outbox"] = {"path": str(tmp_path / "outbox.db")}
    data["heartbeat"] = {"interval_s": 30}
    running = fleet.node_dir("node-a") / f"node-{tmp_path.name}.yaml"
    running.write_text(yaml.safe_dump(data))
    return running


@pytest.fixture
def aggregator(fleet: Fleet, tmp_path: Path) -> Iterator[Aggregator]:
    broker = BrokerConfig(
        url=f"mqtts://127.0.0.1:{fleet.port}",
        ca_file=str(fleet.node_dir("aggregator") / "ca.crt"),
        username="aggregator",
        password=fleet.password("aggregator"),
    )
    config = AggregatorConfig(
        broker=broker,
        db_url=f"sqlite:///{tmp_path / 'agg.db'}",
        client_id="agg-test",
        command_key=fleet.root / "fleet" / "command.key",
    )
    with Aggregator(config) as running:
        yield running


@pytest.fixture
def node(node_config: Path) -> Iterator[Node]:
    running = Node(load_config(node_config), base_dir=node_config.parent)
    running.start()
    assert running.uplink.connected.wait(TIMEOUT), "node-a did not connect over TLS"
    yield running
    running.close(flush_s=2)


def result_of(aggregator: Aggregator, cmd_id: str) -> Callable[[], Any]:
    def probe() -> Any:
        found = [c for c in aggregator.store.commands_for(SITE, "node-a") if c["id"] == cmd_id]
        return found[0]["result"] if found else None

    return probe


def test_the_provisioned_node_requires_signed_commands(node: Node, fleet: Fleet) -> None:
    assert node.config.commands.verify_key == fleet.node_dir("node-a") / "command.pub"
    assert node.verifier is not None


def test_a_signed_ping_is_answered_and_one_signed_with_another_key_is_refused(
    fleet: Fleet, aggregator: Aggregator, node: Node
) -> None:
    issued = aggregator.commands.issue(SITE, "node-a", "ping", {}, 60)
    assert issued["published"]
    assert eventually(result_of(aggregator, issued["id"]), TIMEOUT, "the node's answer to a signed ping")["ok"] is True

    # A broker account alone, which may publish commands: an aggregator identity of its own, since
    # the running aggregator holds "aggregator" (one connection per identity).
    watcher = login(fleet, "operator")
    try:
        assert watcher.subscribe(topic(SITE, "node-a", "cmd_result")) < 0x80
        unsigned = Command(
            node_id="node-a",
            site=SITE,
            seq=1,
            name="ping",
            issuer="aggregator",
            expires=utc_now() + timedelta(minutes=1),
        )
        forged = CommandSigner(Ed25519PrivateKey.generate()).sign(unsigned.model_copy(update={"id": "forged-ping-1"}))
        for command, why in ((forged, "does not verify"), (unsigned, "unsigned")):
            assert watcher.publish(topic_for(command), encode(command)) == 0
            answer = decode(watcher.next_message()[1])
            assert answer.type == "cmd_result" and answer.cmd_id == command.id
            assert answer.ok is False and "bad signature" in (answer.detail or "") and why in (answer.detail or "")
    finally:
        watcher.close()


def test_a_bad_remote_config_is_refused_and_the_running_one_stays(
    aggregator: Aggregator, node: Node, node_config: Path
) -> None:
    # The node's retained `status` (and its will) pass the ACL: the aggregator sees it online.
    eventually(lambda: aggregator.store.count_online() == 1, TIMEOUT, "node-a online at the aggregator")
    before = node.digest
    issued = aggregator.commands.issue(SITE, "node-a", "reload_config", {"config": "node_id: [unclosed"}, 60)
    assert issued["published"]
    refused = eventually(result_of(aggregator, issued["id"]), TIMEOUT, "the node's answer to the bad config")
    assert refused["ok"] is False and "the running one stays" in refused["detail"]
    assert node.digest == before and node.uplink.connected.is_set()

    good = yaml.safe_load(node_config.read_text())
    good["heartbeat"] = {"interval_s": 12}
    issued = aggregator.commands.issue(SITE, "node-a", "reload_config", {"config": yaml.safe_dump(good)}, 60)
    applied = eventually(result_of(aggregator, issued["id"]), TIMEOUT, "the node's answer to the good config")
    assert applied["ok"] is True and applied["data"]["config_digest"] == node.digest != before
    assert node.config.heartbeat.interval_s == 12


def test_a_command_from_a_node_identity_is_refused_by_the_broker(fleet: Fleet, node: Node) -> None:
    watcher, node_b = login(fleet, "aggregator"), login(fleet, "node-b")
    try:
        assert watcher.subscribe(topic(SITE, "node-a", "cmd_result")) < 0x80
        # node-b forges a command naming the aggregator as issuer: only the ACL stands in the way.
        forged = Command(
            node_id="node-a",
            site=SITE,
            seq=1,
            name="ping",
            issuer="aggregator",
            expires=utc_now() + timedelta(minutes=1),
        )
        assert node_b.publish(topic_for(forged), encode(forged)) == MQTT5_NOT_AUTHORIZED
        # The aggregator's own ping, sent afterwards, is answered; the forged one never was.
        signer = CommandSigner.load(fleet.root / "fleet" / "command.key")
        genuine = signer.sign(forged.model_copy(update={"id": "genuine-ping-1", "seq": 2}))
        assert watcher.publish(topic_for(genuine), encode(genuine)) == 0
        answer = decode(watcher.next_message()[1])
        assert answer.type == "cmd_result" and answer.cmd_id == "genuine-ping-1" and answer.ok
        assert watcher.messages.empty()
    finally:
        watcher.close()
        node_b.close()
