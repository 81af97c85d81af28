"""The fleet's broker security, end to end: generated CA, TLS listener, password file and
ACL in a real mosquitto, exercised by paho clients acting as nodes and the aggregator."""

from __future__ import annotations

import datetime as dt
import queue
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from s4edge.cloud_sync.aggregator.broker_log import BrokerLogWatch
from s4edge.cloud_sync.fleet.ca import init_ca, issue_client_cert, load_ca
from s4edge.cloud_sync.messages import Alert, Location, Receipt, decode, encode, topic, topic_for
from s4edge.testing.fleet import SITE, TIMEOUT, Fleet, build_fleet, cli, login, peer

MQTT5_NOT_AUTHORIZED = 0x87
MQTT5_BAD_USER_OR_PASSWORD = 0x86


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    built = build_fleet(tmp_path_factory.mktemp("fleet"))
    yield built
    built.broker.stop()


def alert(node_id: str, seq: int = 1) -> Alert:
    return Alert(
        node_id=node_id,
        site=SITE,
        seq=seq,
        kind="gas",
        severity="Severe",
        state="new",
        incident=f"inc-{node_id}-{seq}",
        location=Location(lat=40.41, lon=-3.7),
    )


def test_a_node_publishes_its_own_alert_to_the_aggregator(fleet: Fleet) -> None:
    aggregator, node_a = login(fleet, "aggregator"), login(fleet, "node-a")
    try:
        assert aggregator.subscribe("s4edge/v1/#") < 0x80
        sent = alert("node-a")
        assert node_a.publish(topic_for(sent), encode(sent)) == 0
        got_topic, payload = aggregator.next_message()
        assert got_topic == topic_for(sent) and decode(payload) == sent
    finally:
        aggregator.close()
        node_a.close()


def test_a_node_cannot_publish_as_another_node(fleet: Fleet) -> None:
    aggregator, node_a = login(fleet, "aggregator"), login(fleet, "node-a")
    try:
        aggregator.subscribe("s4edge/v1/#")
        forged = alert("node-b", seq=7)
        assert node_a.publish(topic_for(forged), encode(forged)) == MQTT5_NOT_AUTHORIZED
        # A's own alert, sent after the forged one on the same connection, arrives; the
        # broker routes in order, so the forged one would have come first.
        sentinel = alert("node-a", seq=8)
        assert node_a.publish(topic_for(sentinel), encode(sentinel)) == 0
        assert decode(aggregator.next_message()[1]) == sentinel
        assert aggregator.messages.empty()
    finally:
        aggregator.close()
        node_a.close()


def test_a_node_reads_only_its_own_commands_and_nothing_of_the_fleet(fleet: Fleet) -> None:
    aggregator, node_a, node_b = login(fleet, "aggregator"), login(fleet, "node-a"), login(fleet, "node-b")
    try:
        for topic_filter in ("s4edge/v1/#", topic(SITE, "node-b", "cmd/#")):
            assert node_a.subscribe(topic_filter) in (0, 1, MQTT5_NOT_AUTHORIZED)
        assert node_a.subscribe(topic(SITE, "node-a", "cmd/#")) < 0x80
        assert node_b.subscribe(topic(SITE, "node-b", "cmd/#")) < 0x80
        aggregator.subscribe("s4edge/v1/#")

        # node-b's alert reaches the aggregator, and node-b's command reaches node-b ...
        b_alert = alert("node-b", seq=3)
        assert node_b.publish(topic_for(b_alert), encode(b_alert)) == 0
        assert decode(aggregator.next_message()[1]) == b_alert
        assert aggregator.publish(topic(SITE, "node-b", "cmd/ping"), b"for b") == 0
        assert node_b.next_message() == (topic(SITE, "node-b", "cmd/ping"), b"for b")
        # ... and node-a, subscribed to the whole fleet, sees only its own command, sent last.
        assert aggregator.publish(topic(SITE, "node-a", "cmd/ping"), b"for a") == 0
        assert node_a.next_message() == (topic(SITE, "node-a", "cmd/ping"), b"for a")
        # Overlapping subscriptions may each get a copy (MQTT 5 §3.3.4); none is of node-b.
        while not node_a.messages.empty():
            assert node_a.next_message()[0] == topic(SITE, "node-a", "cmd/ping")
    finally:
        for p in (aggregator, node_a, node_b):
            p.close()


def test_a_node_cannot_issue_commands(fleet: Fleet) -> None:
    node_a, node_b = login(fleet, "node-a"), login(fleet, "node-b")
    try:
        node_b.subscribe(topic(SITE, "node-b", "cmd/#"))
        assert node_a.publish(topic(SITE, "node-b", "cmd/reload_config"), b"{}") == MQTT5_NOT_AUTHORIZED
        assert node_a.publish(topic(SITE, "node-a", "cmd/reload_config"), b"{}") == MQTT5_NOT_AUTHORIZED
    finally:
        node_a.close()
        node_b.close()


def test_the_aggregator_cannot_speak_for_a_node(fleet: Fleet) -> None:
    aggregator = login(fleet, "aggregator")
    try:
        forged = alert("node-a", seq=99)
        assert aggregator.publish(topic_for(forged), encode(forged)) == MQTT5_NOT_AUTHORIZED
    finally:
        aggregator.close()


def test_only_the_aggregator_writes_receipts_and_a_node_reads_only_its_own(fleet: Fleet) -> None:
    aggregator, node_a, node_b = login(fleet, "aggregator"), login(fleet, "node-a"), login(fleet, "node-b")
    try:
        assert node_a.subscribe(topic(SITE, "node-b", "receipt")) in (0, 1, MQTT5_NOT_AUTHORIZED)
        assert node_a.subscribe(topic(SITE, "node-a", "receipt")) < 0x80
        assert node_b.subscribe(topic(SITE, "node-b", "receipt")) < 0x80
        # A forged receipt would make node-b forget alerts no aggregator stored.
        forged = Receipt(node_id="node-b", site=SITE, seq=1, issuer="node-a", alert_ids=["alert-of-b-0001"])
        assert node_a.publish(topic_for(forged), encode(forged)) == MQTT5_NOT_AUTHORIZED
        own = Receipt(node_id="node-a", site=SITE, seq=2, issuer="node-a", alert_ids=["alert-of-a-0001"])
        assert node_a.publish(topic_for(own), encode(own)) == MQTT5_NOT_AUTHORIZED
        # The aggregator's receipt reaches its node; the forged one, refused before it, never did.
        real = Receipt(node_id="node-b", site=SITE, seq=3, issuer="aggregator", alert_ids=["alert-of-b-0001"])
        assert aggregator.publish(topic_for(real), encode(real)) == 0
        assert decode(node_b.next_message()[1]) == real
        for_a = Receipt(node_id="node-a", site=SITE, seq=4, issuer="aggregator", alert_ids=["alert-of-a-0001"])
        assert aggregator.publish(topic_for(for_a), encode(for_a)) == 0
        assert decode(node_a.next_message()[1]) == for_a, "node-a read node-b's receipt"
        assert node_b.messages.empty()
    finally:
        for p in (aggregator, node_a, node_b):
            p.close()


def test_wrong_password_is_refused(fleet: Fleet) -> None:
    intruder = peer(fleet, "node-a", username="node-a", password="not-the-password")
    try:
        assert intruder.connect() in (("connack", MQTT5_BAD_USER_OR_PASSWORD), ("connack", MQTT5_NOT_AUTHORIZED))
    finally:
        intruder.close()


def test_anonymous_client_is_refused(fleet: Fleet) -> None:
    anonymous = peer(fleet, "anon")
    try:
        assert anonymous.connect() == ("connack", MQTT5_NOT_AUTHORIZED)
    finally:
        anonymous.close()


def test_plaintext_mqtt_on_the_tls_port_gets_no_connack(fleet: Fleet) -> None:
    # MQTT 3.1.1 CONNECT, client id "x", clean session (§3.1): a TLS listener must not answer it.
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 1]) + b"x"
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=TIMEOUT) as sock:
        sock.sendall(connect)
        try:
            reply = sock.recv(16)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"\x20"), "the TLS listener answered a plaintext CONNECT with a CONNACK"


def test_a_broker_certificate_from_another_ca_is_not_trusted(fleet: Fleet, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other-ca")
    node_a = peer(fleet, "node-a", username="node-a", password=fleet.password("node-a"), ca=other.cert_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        node_a.client.connect("127.0.0.1", fleet.port)


def test_a_node_delivers_alerts_through_the_outbox_and_uplink_over_tls(fleet: Fleet, tmp_path: Path) -> None:
    from s4edge.cloud_sync.outbox import Outbox
    from s4edge.cloud_sync.uplink import Forwarder, MqttUplink, UplinkSettings

    aggregator = login(fleet, "aggregator")
    aggregator.subscribe(topic(SITE, "node-a", "alert"))
    node_dir = fleet.node_dir("node-a")
    settings = UplinkSettings(
        url=f"mqtts://127.0.0.1:{fleet.port}",
        client_id="node-a-uplink",  # other tests' "node-a" peers must not take this session over
        username="node-a",
        password=fleet.password("node-a"),
        ca_file=node_dir / "ca.crt",
    )
    uplink, outbox = MqttUplink(settings), Outbox(tmp_path / "outbox.db")
    forwarder = Forwarder(outbox, uplink)
    try:
        sent = [alert("node-a", seq=100 + i) for i in range(3)]
        for message in sent:
            outbox.put(topic_for(message), encode(message), qos=1)
        uplink.start()
        forwarder.start()
        assert [decode(aggregator.next_message()[1]) for _ in sent] == sent
        assert forwarder.flush(TIMEOUT) and outbox.depth() == 0
    finally:
        forwarder.stop()
        uplink.close()
        outbox.close()
        aggregator.close()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The same fleet provisioned with client certificates: the listener requires them."""
    built = build_fleet(tmp_path_factory.mktemp("mtls"), client_certs=True)
    yield built
    built.broker.stop()


class TestClientCertificates:
    def test_a_node_with_a_fleet_certificate_delivers_alerts(self, mtls: Fleet) -> None:
        aggregator, node_a = login(mtls, "aggregator"), login(mtls, "node-a")
        try:
            aggregator.subscribe("s4edge/v1/#")
            sent = alert("node-a")
            assert node_a.publish(topic_for(sent), encode(sent)) == 0
            assert decode(aggregator.next_message()[1]) == sent
            # The certificate's CN is the username, so the ACL still fences the node in.
            forged = alert("node-b")
            assert node_a.publish(topic_for(forged), encode(forged)) == MQTT5_NOT_AUTHORIZED
        finally:
            aggregator.close()
            node_a.close()

    def test_a_client_certificate_from_another_ca_is_refused(self, mtls: Fleet, tmp_path: Path) -> None:
        rogue_ca = init_ca(tmp_path / "rogue")
        cert, key = issue_client_cert(rogue_ca, "node-a", tmp_path / "rogue", "node")
        rogue = peer(mtls, "node-a", cert=cert, key=key)
        # TLS 1.3 may report the refused certificate after the handshake, on first read.
        assert rogue.connect() == ("closed", None)
        rogue.close()

    def test_a_password_alone_is_refused(self, mtls: Fleet) -> None:
        no_cert = peer(mtls, "node-a", username="node-a", password="any")
        assert no_cert.connect() == ("closed", None)
        no_cert.close()


@pytest.fixture(scope="module")
def revoking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A client-certificate fleet of its own: revoking changes its broker for good."""
    built = build_fleet(tmp_path_factory.mktemp("revoking"), client_certs=True)
    yield built
    built.broker.stop()


class TestRevokedAndExpiredCertificates:
    def test_a_revoked_node_certificate_is_refused_after_the_broker_restarts(self, revoking: Fleet) -> None:
        login(revoking, "node-b").close()  # valid until revoked
        output = cli("fleet", "revoke", "node-b", "--fleet-dir", revoking.folder)
        assert "1 certificate(s) on" in output and (revoking.folder / "crl.pem").exists()
        assert "node-b" not in (revoking.folder / "acl").read_text()
        assert f"crlfile {revoking.folder.absolute() / 'crl.pem'}" in revoking.reconfigure()

        node_b = revoking.node_dir("node-b")
        refusals: queue.Queue[str] = queue.Queue()
        watch = BrokerLogWatch(revoking.broker.log, refusals.put, poll_s=0.05)
        watch.start()
        try:
            revoked = peer(revoking, "node-b", cert=node_b / "node.crt", key=node_b / "node.key")
            assert revoked.connect() == ("closed", None)
            revoked.close()
            # The aggregator's --broker-log sees the refusal in mosquitto's log.
            assert refusals.get(timeout=TIMEOUT) == "tls_certificate"
        finally:
            watch.stop()
        # The CRL refuses only what it lists: node-a and the aggregator still log in.
        login(revoking, "node-a").close()
        login(revoking, "aggregator").close()

    def test_an_expired_node_certificate_is_refused(self, revoking: Fleet, tmp_path: Path) -> None:
        ca = load_ca(revoking.folder)
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        cert, key = issue_client_cert(ca, "node-a", tmp_path, "expired", not_after=yesterday)
        assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < dt.datetime.now(dt.UTC)
        expired = peer(revoking, "node-a", cert=cert, key=key)
        assert expired.connect() == ("closed", None)
        expired.close()
        # The same CA's current certificate for the same node is accepted.
        fresh_cert, fresh_key = issue_client_cert(ca, "node-a", tmp_path, "fresh")
        fresh = peer(revoking, "node-a", cert=fresh_cert, key=fresh_key)
        assert fresh.connect() == ("connack", 0)
        fresh.close()
