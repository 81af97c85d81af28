"""The generated broker config's rules, held by a real mosquitto: a client id is its username,
so no identity takes over another's session; the wire contract's size limit; a revocation
that takes effect on SIGHUP from the first one; and a fleet of password and certificate
identities side by side."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.fleet.broker_config import MAX_PACKET_BYTES
from s4edge.cloud_sync.messages import MAX_MESSAGE_BYTES, topic
from s4edge.testing import Mosquitto, eventually, free_port
from s4edge.testing.fleet import SITE, TIMEOUT, Fleet, build_fleet, cli, login, peer


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    built = build_fleet(tmp_path_factory.mktemp("rules"))
    yield built
    built.broker.stop()


def test_a_client_id_of_another_node_takes_nothing_over(fleet: Fleet) -> None:
    aggregator, node_a = login(fleet, "aggregator"), login(fleet, "node-a")
    try:
        assert node_a.subscribe(topic(SITE, "node-a", "cmd/#")) < 0x80
        # node-b's own credentials, node-a's client id: the broker makes it "node-b"
        intruder = peer(fleet, "node-a", username="node-b", password=fleet.password("node-b"))
        assert intruder.connect() == ("connack", 0)
        try:
            assert aggregator.publish(topic(SITE, "node-a", "cmd/ping"), b"for a") == 0
            assert node_a.next_message() == (topic(SITE, "node-a", "cmd/ping"), b"for a")
            assert intruder.messages.empty() and node_a.events.empty(), "node-a lost its connection"
        finally:
            intruder.close()
    finally:
        aggregator.close()
        node_a.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_a_packet_over_the_wire_contracts_limit_is_refused(fleet: Fleet, protocol: int) -> None:
    aggregator = login(fleet, "aggregator")
    alert = topic(SITE, "node-a", "alert")
    try:
        assert aggregator.subscribe(alert) < 0x80
        node_a = peer(fleet, "node-a", "node-a", fleet.password("node-a"), protocol=protocol)
        assert node_a.connect() == ("connack", 0)
        try:
            node_a.client.publish(alert, b"x" * MAX_PACKET_BYTES, qos=1)
            # mosquitto hangs up on a packet over max_packet_size (MQTT 5.0: DISCONNECT 0x95)
            assert node_a.events.get(timeout=TIMEOUT) == ("closed", None)
        finally:
            node_a.close()
        node_a = peer(fleet, "node-a", "node-a", fleet.password("node-a"), protocol=protocol)
        assert node_a.connect() == ("connack", 0)
        try:
            assert node_a.publish(alert, b"y" * MAX_MESSAGE_BYTES) == 0
        finally:
            node_a.close()
        # the broker routes in order: had the larger one gone through, it would arrive first
        assert aggregator.next_message() == (alert, b"y" * MAX_MESSAGE_BYTES)
        assert aggregator.messages.empty()
    finally:
        aggregator.close()


def test_the_largest_message_on_the_longest_topic_fits_the_packet_limit(fleet: Fleet) -> None:
    # max_packet_size counts the topic too: its header room must let every valid message through
    longest = topic("s" * 64, "n" * 64, "cmd/reload_config")  # NAME_PATTERN's longest names
    aggregator = login(fleet, "aggregator")  # the identity that may write any node's commands
    try:
        assert aggregator.subscribe(longest) < 0x80
        assert aggregator.publish(longest, b"z" * MAX_MESSAGE_BYTES) == 0
        assert aggregator.next_message() == (longest, b"z" * MAX_MESSAGE_BYTES)
    finally:
        aggregator.close()


@pytest.fixture
def revoking(tmp_path: Path) -> Iterator[Fleet]:
    built = build_fleet(tmp_path, client_certs=True)
    yield built
    built.broker.stop()


def test_the_first_revocation_takes_effect_on_sighup(revoking: Fleet) -> None:
    login(revoking, "node-b").close()
    assert "1 certificate(s) on" in cli("fleet", "revoke", "node-b", "--fleet-dir", revoking.folder)
    assert revoking.broker.proc is not None
    revoking.broker.proc.send_signal(signal.SIGHUP)  # `systemctl reload mosquitto`, no restart
    eventually(lambda: "Reloading config." in revoking.broker.log.read_text(), TIMEOUT, "mosquitto to reload")
    node_b = revoking.node_dir("node-b")
    revoked = peer(revoking, "node-b", cert=node_b / "node.crt", key=node_b / "node.key")
    assert revoked.connect() == ("closed", None)
    revoked.close()
    login(revoking, "node-a").close()


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[tuple[Fleet, int, str]]:
    """node-a with a password, node-b with a certificate, the aggregator with a password."""
    fleet_dir, port, cert_port = tmp_path / "fleet", free_port(), free_port()
    cli("fleet", "ca", "init", "--out", fleet_dir)
    cli("fleet", "ca", "server-cert", "--ca-dir", fleet_dir, "--host", "localhost", "--ip", "127.0.0.1")
    for node, extra in (("node-a", []), ("node-b", ["--client-cert"])):
        args = f"{node} --site {SITE} --lat 40.41 --lon -3.7 --board x86 --broker mqtts://127.0.0.1:{port}"
        cli("provision", *args.split(), "--ca-dir", fleet_dir, "--out", tmp_path / node, *extra)
    cli("fleet", "aggregator-credentials", "--fleet-dir", fleet_dir, "--out", tmp_path / "aggregator")
    options = f"--port {port} --cert-port {cert_port} --bind 127.0.0.1 --user current --persistence-dir {tmp_path}"
    said = cli(
        "fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", tmp_path / "mosquitto.conf", *options.split()
    )
    broker = Mosquitto(tmp_path, port=port, config_file=tmp_path / "mosquitto.conf").start(wait_port=cert_port)
    yield Fleet(tmp_path, broker, port), cert_port, said
    broker.stop()


def test_a_fleet_of_both_kinds_of_identity_logs_everyone_in(mixed: tuple[Fleet, int, str]) -> None:
    fleet, cert_port, said = mixed
    assert f"node-b: certificate identities, connect on port {cert_port}" in said and "warning" not in said
    aggregator, node_a, node_b = login(fleet, "aggregator"), login(fleet, "node-a"), login(fleet, "node-b", cert_port)
    try:
        assert aggregator.subscribe("s4edge/v1/#") < 0x80
        for node, name in ((node_a, "node-a"), (node_b, "node-b")):
            assert node.publish(topic(SITE, name, "alert"), name.encode()) == 0
            assert aggregator.next_message() == (topic(SITE, name, "alert"), name.encode())
        # the certificate's CN is the username there too: the ACL fences node-b in
        assert node_b.publish(topic(SITE, "node-a", "alert"), b"forged") == 0x87
    finally:
        for client in (aggregator, node_a, node_b):
            client.close()
    no_cert = peer(fleet, "node-a", "node-a", fleet.password("node-a"), port=cert_port)
    assert no_cert.connect() == ("closed", None)  # the certificate listener takes no password alone
    no_cert.close()
