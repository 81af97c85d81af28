"""The uplink on its own: jittered backoff, MQTT v5 persistent sessions, the 3.1.1
fallback against a real 3.1.1-only broker (amqtt), commands over the broker, and the
forwarder draining an outbox in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from s4edge.cloud_sync.messages import Command, CommandResult, Status, decode, encode, topic_for
from s4edge.cloud_sync.outbox import Outbox
from s4edge.cloud_sync.uplink import Backoff, Forwarder, MqttUplink, UplinkSettings, _PahoDelivery
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto, free_port
from s4edge.testing import eventually as wait_until

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"


def test_backoff_doubles_to_the_cap_with_real_jitter() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(7))
    waits = [backoff.next() for _ in range(12)]
    assert waits[0] == 1.0  # the first retry waits the minimum
    caps = [min(2.0**i, 60.0) for i in range(12)]
    assert all(max(1.0, cap / 2) <= w <= cap for w, cap in zip(waits, caps, strict=True))
    assert waits[-1] >= 30.0
    jittered = [Backoff(1.0, 60.0, random.Random(seed)) for seed in range(20)]
    for b in jittered:
        for _ in range(5):
            b.next()
    assert len({round(b.next(), 6) for b in jittered}) > 10, "nodes must not retry in lock-step"
    backoff.reset()
    assert backoff.next() == 1.0


def collect(broker_host: str, port: int, topic_filter: str, protocol: int = mqtt.MQTTv5) -> tuple[mqtt.Client, list]:
    got: list = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.on_message = lambda c, u, m: got.append((m.topic, m.retain, m.payload))
    client.on_subscribe = lambda *a: done.set()
    client.connect(broker_host, port)
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    assert done.wait(10)
    return client, got


def test_forwarder_drains_in_order_and_deletes_only_acknowledged(tmp_path: Path, broker: Mosquitto) -> None:
    client, got = collect(broker.host, broker.port, "drain/#")
    with Outbox(tmp_path / "o.db") as outbox:
        ids = [outbox.put("drain/t", str(i).encode()) for i in range(500)]
        uplink = MqttUplink(UplinkSettings(url=broker.url, client_id="drainer"))
        forwarder = Forwarder(outbox, uplink, window=50)
        uplink.start()
        forwarder.start()
        try:
            wait_until(lambda: outbox.depth() == 0, 20, "outbox drained")
            wait_until(lambda: len(got) >= 500, 10, "all messages at the subscriber")
        finally:
            forwarder.stop()
            uplink.close()
    client.loop_stop()
    # At least once, in order: a reconnect under load may resend what the broker took
    # before its PUBACK reached us, so a copy may come again later; the first copies are in order.
    assert list(dict.fromkeys(int(p) for _, _, p in got)) == list(range(500))
    assert len(ids) == 500


def test_only_the_connection_thread_writes_to_the_socket(broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    # paho writes a publish from the caller's thread when no event loop is registered,
    # unlocked, while loop() writes from the connection thread: two writers once sent
    # an outbox's row 12 before row 11. Frequent GIL switches make that race likely.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    client, got = collect(broker.host, broker.port, "order/#")
    uplink = MqttUplink(UplinkSettings(url=broker.url, client_id="one-writer"))
    writers: set[str] = set()
    uplink.start()
    try:
        assert uplink.connected.wait(10)
        paho = uplink._client
        send = paho._sock_send

        def recorded(data: bytes) -> int:
            writers.add(threading.current_thread().name)
            return send(data)

        monkeypatch.setattr(paho, "_sock_send", recorded)
        deliveries = [uplink.publish("order/t", str(i).encode(), qos=1) for i in range(2000)]
        assert deliveries[-1].wait(20)
        wait_until(lambda: len(got) >= 2000, 20, "all messages at the subscriber")
    finally:
        sys.setswitchinterval(switch_interval)
        uplink.close()
        client.loop_stop()
    assert writers == {"mqtt-uplink"}
    assert list(dict.fromkeys(int(p) for _, _, p in got)) == list(range(2000))
    # close() queues its DISCONNECT for that thread, which writes it before it ends
    wait_until(lambda: "Client one-writer disconnected." in broker.log.read_text(), 5, "a clean DISCONNECT")


def test_a_qos0_delivery_lost_to_a_reconnect_is_not_acked_and_raises_nothing() -> None:
    # paho marks a QoS 0 packet still queued at a reconnect as lost, and its
    # wait_for_publish then raises RuntimeError: the forwarder took that for a crash
    info = mqtt.MQTTMessageInfo(1)
    info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    delivery = _PahoDelivery(info)

    def reconnect() -> None:
        info.rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
        info._set_as_published()

    threading.Timer(0.05, reconnect).start()
    assert delivery.wait(5.0) is False
    assert delivery.failed() and not delivery.acked()


class HeldLink:
    """A TCP relay to the broker that can hold what the client sends (a link that dies
    silently) and then cut every connection."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port, self.target, self.holding = self.server.getsockname()[1], port, False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, broker]
            threading.Thread(target=self._pump, args=(client, broker, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not (upstream and self.holding):
                    sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.holding = False
        for end in self.sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_the_fresh_status_a_reconnect_publishes_outlives_a_stale_one_paho_resends(broker: Mosquitto) -> None:
    # paho calls on_connect before it resends what the last connection left unacked: the
    # node's fresh 'online' went first, and its stale status became the retained one
    client, got = collect(broker.host, broker.port, "status/#")
    link = HeldLink(broker.port)
    settings = UplinkSettings(url=f"mqtt://127.0.0.1:{link.port}", client_id="stale", reconnect_min_s=0.05)
    uplink = MqttUplink(settings)
    uplink.on_connect(lambda: uplink.publish("status/n", f"fresh {uplink.session}".encode(), qos=1, retain=True))
    uplink.start()
    try:
        wait_until(lambda: b"fresh 1" in [p for _, _, p in got], 10, "the first status")
        link.holding = True  # the link dies silently: this status never reaches the broker
        stale = uplink.publish("status/n", b"stale", qos=1, retain=True)
        link.cut()
        wait_until(lambda: uplink.session == 2 and stale.acked(), 10, "reconnected, the stale status resent")
        wait_until(lambda: b"fresh 2" in [p for _, _, p in got], 10, "the fresh status")
    finally:
        uplink.close()
        link.close()
        client.loop_stop()
    payloads = [p for _, _, p in got]
    assert payloads.index(b"stale") < payloads.index(b"fresh 2")
    late, retained = collect(broker.host, broker.port, "status/#")
    wait_until(lambda: retained, 5, "the retained status")
    late.loop_stop()
    assert [(flag, p) for _, flag, p in retained] == [(True, b"fresh 2")]


def test_rows_stay_in_the_outbox_while_the_broker_is_down(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        for i in range(20):
            outbox.put("t", str(i).encode())
        uplink = MqttUplink(UplinkSettings(url=f"mqtt://127.0.0.1:{free_port()}", client_id="n"))
        forwarder = Forwarder(outbox, uplink)
        uplink.start()
        forwarder.start()
        try:
            assert not uplink.connected.wait(1.0)
            assert outbox.depth() == 20
        finally:
            forwarder.stop()
            uplink.close()


def test_the_connection_thread_survives_an_unexpected_error(broker: Mosquitto) -> None:
    # the Last Will is built before each CONNECT; a node on a full disk once failed there
    # with a database error, and the thread that keeps the node connected died of it
    failures = iter([sqlite3.OperationalError("database or disk is full"), RuntimeError("anything else")])

    def will() -> tuple[str, bytes]:
        if (error := next(failures, None)) is not None:
            raise error
        return "s4edge/v1/demo-city/sim-node-1/status", b"offline"

    settings = UplinkSettings(url=broker.url, client_id="survivor", reconnect_min_s=0.05, reconnect_max_s=0.1)
    uplink = MqttUplink(settings, will=will)
    uplink.start()
    try:
        assert uplink.connected.wait(10), "connected after the errors"
        assert uplink.progress() is not None
    finally:
        uplink.close()
    assert uplink.progress() is None


@pytest.fixture
def amqtt_broker() -> Iterator[int]:
    """amqtt speaks MQTT 3.1.1 only: the peer the v5 → 3.1.1 fallback exists for."""
    from amqtt.broker import Broker

    port = free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def serve() -> None:
        nonlocal stop, loop
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        broker = Broker(config)
        await broker.start()
        await stop.wait()
        await broker.shutdown()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    from s4edge.testing.mosquitto import wait_for_port

    wait_for_port("127.0.0.1", port)
    yield port
    assert loop is not None and stop is not None
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_falls_back_to_mqtt_311_when_the_broker_refuses_v5(amqtt_broker: int) -> None:
    uplink = MqttUplink(
        UplinkSettings(url=f"mqtt://127.0.0.1:{amqtt_broker}", client_id="fallback", connack_timeout_s=1.0)
    )
    uplink.start()
    try:
        assert uplink.connected.wait(15), "never connected"
        assert uplink.protocol == "3.1.1"
        assert uplink.publish("s4edge/test", b"x", qos=1).wait(5)
    finally:
        uplink.close()


def node_config(tmp_path: Path, broker: Mosquitto, **mqtt_changes) -> dict:
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"].update(url=broker.url, **mqtt_changes)
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    data["sources"] = []
    return data


def test_configured_311_node_publishes_retained_online_status(tmp_path: Path, broker: Mosquitto) -> None:
    node = Node(parse_config(node_config(tmp_path, broker, protocol="3.1.1")))
    node.start()
    try:
        wait_until(node.uplink.connected.is_set, 10, "connected")
        status_topic = "s4edge/v1/demo-city/sim-node-1/status"
        # the first subscriber may see the node's publish live (retain flag 0), if it subscribed first
        first, seen = collect(broker.host, broker.port, status_topic, mqtt.MQTTv311)
        wait_until(lambda: bool(seen), 10, "the node's status")
        first.loop_stop()
        client, got = collect(broker.host, broker.port, status_topic, mqtt.MQTTv311)
        wait_until(lambda: bool(got), 10, "retained status")
        _, retained, payload = got[0]
        status = decode(payload)
        assert retained and isinstance(status, Status) and status.state == "online"
        assert status.config_digest == node.digest
        client.loop_stop()
    finally:
        node.close()


def test_a_fault_is_republished_in_the_retained_status_and_cleared(tmp_path: Path, broker: Mosquitto) -> None:
    node = Node(parse_config(node_config(tmp_path, broker)))
    node.start()
    try:
        wait_until(node.uplink.connected.is_set, 10, "connected")
        client, got = collect(broker.host, broker.port, "s4edge/v1/demo-city/sim-node-1/status")

        def last_status() -> Status:
            return decode(got[-1][2]) if got else None

        wait_until(lambda: last_status() and last_status().degraded == [], 10, "a healthy status")
        node.health.set("cam0", "fault: camera stopped delivering frames")
        wait_until(lambda: last_status().degraded == ["cam0"], 10, "the fault in the status")
        node.health.set("cam0", "ok")
        wait_until(lambda: last_status().degraded == [], 10, "the recovery in the status")
        client.loop_stop()
    finally:
        node.close()


def ping(node_id: str = "sim-node-1") -> Command:
    return Command(
        node_id=node_id,
        site="demo-city",
        seq=1,
        name="ping",
        issuer="aggregator",
        expires=datetime.now(UTC) + timedelta(minutes=5),
    )


def test_command_sent_while_the_node_is_away_is_answered_after_it_returns(tmp_path: Path, broker: Mosquitto) -> None:
    client, got = collect(broker.host, broker.port, "s4edge/v1/demo-city/sim-node-1/cmd_result")
    config = parse_config(node_config(tmp_path, broker))
    node = Node(config)
    node.start()
    wait_until(node.uplink.connected.is_set, 10, "connected")
    live = ping()
    client.publish(topic_for(live), encode(live), qos=1)
    wait_until(lambda: len(got) == 1, 10, "answer to the live ping")
    node.close()

    away = ping()  # the broker keeps it in the node's persistent session
    client.publish(topic_for(away), encode(away), qos=1).wait_for_publish(5)
    returned = Node(config)
    returned.start()
    try:
        wait_until(lambda: len(got) >= 2, 15, "answer to the queued ping")
    finally:
        returned.close()
    client.loop_stop()
    answers = [decode(p) for _, _, p in got]
    assert all(isinstance(a, CommandResult) and a.ok for a in answers)
    assert [a.cmd_id for a in answers][:2] == [live.id, away.id]


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, Path]]:
    """mosquitto with a second listener that requires TLS and a client certificate."""
    from s4edge.cloud_sync.fleet.ca import init_ca, issue_client_cert, issue_server_cert

    pki = tmp_path / "pki"
    ca = init_ca(pki / "ca")
    server_cert, server_key = issue_server_cert(ca, ["localhost"], ["127.0.0.1"], pki)
    issue_client_cert(ca, "sim-node-1", pki, "node")
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {ca.cert_path}\ncertfile {server_cert}\nkeyfile {server_key}\n"
        "require_certificate true\n"
    )
    with Mosquitto(tmp_path / "broker", config_extra=extra) as broker:
        from s4edge.testing.mosquitto import wait_for_port

        wait_for_port(broker.host, tls_port)
        yield broker, tls_port, pki


def test_mqtts_with_a_client_certificate(tmp_path: Path, tls_broker: tuple[Mosquitto, int, Path]) -> None:
    broker, tls_port, pki = tls_broker
    data = node_config(tmp_path, broker)
    data["mqtt"].update(
        url=f"mqtts://127.0.0.1:{tls_port}",
        ca_file=str(pki / "ca" / "ca.crt"),
        cert_file=str(pki / "node.crt"),
        key_file=str(pki / "node.key"),
    )
    node = Node(parse_config(data))
    node.start()
    try:
        wait_until(node.uplink.connected.is_set, 10, "TLS connection")
        client, got = collect(broker.host, broker.port, "s4edge/v1/demo-city/sim-node-1/status")
        wait_until(lambda: bool(got), 10, "retained status over TLS")
        client.loop_stop()
    finally:
        node.close()


def test_mqtts_without_the_client_certificate_is_refused(tls_broker: tuple[Mosquitto, int, Path]) -> None:
    _, tls_port, pki = tls_broker
    settings = UplinkSettings(
        url=f"mqtts://127.0.0.1:{tls_port}", client_id="no-cert", ca_file=pki / "ca" / "ca.crt", protocol="3.1.1"
    )
    uplink = MqttUplink(settings)
    uplink.start()
    try:
        assert not uplink.connected.wait(2.0)
    finally:
        uplink.close()


def test_an_alert_whose_in_flight_mark_failed_is_sent_again_at_its_time(tmp_path: Path, broker: Mosquitto) -> None:
    # a full disk failed the marks after each PUBACK: a row whose new mark failed kept its old
    # one, long due, and was sent again at once, over and over (117,004 sends of 500 alerts in
    # 20 s); one with no mark at all was never sent again while the connection lasted
    from s4edge.cloud_sync.outbox import Operation
    from s4edge.testing.listener import Listener

    class DiskFillsAfterFirstMarks(Outbox):
        marked: ClassVar[set[int]] = set()

        def mark_in_flight(self, marks: Any, wait: bool = True) -> Operation | None:
            marks = list(marks)
            if all(row_id not in self.marked for row_id, _, _ in marks):
                self.marked.update(row_id for row_id, _, _ in marks)
                return super().mark_in_flight(marks, wait)
            failed = Operation(lambda db: None)
            failed.error = sqlite3.OperationalError("database or disk is full")
            failed.done.set()
            return failed

    now = [1_000_000.0]
    listener = Listener(broker, "t/alert/#")
    with DiskFillsAfterFirstMarks(tmp_path / "o.db") as outbox:
        for i in range(3):
            outbox.put(f"t/alert/{i}", b"a", receipt_id=f"alert-{i:04d}")
        uplink = MqttUplink(UplinkSettings(url=broker.url, client_id="marks-fail"))
        forwarder = Forwarder(outbox, uplink, receipt_timeout_s=10, receipt_backoff_max_s=60, clock=lambda: now[0])
        uplink.start()
        forwarder.start()
        try:
            wait_until(lambda: len(listener.got) >= 3, 10, "the first sends")
            wait_until(lambda: outbox.unsent() == 0, 10, "their PUBACKs, and their marks on disk")
            now[0] += 13  # past the first wait for a receipt (10 s, up to a quarter more)
            wait_until(lambda: len(listener.got) >= 6, 10, "the resends, whose marks fail")
            assert len(listener.got) == 6, Counter(topic_name for topic_name, _ in listener.got)
            wait_until(lambda: len(forwarder._failed) == 3, 10, "their marks failed, and kept in memory")
            time.sleep(1.5)  # the clock stands still: nothing is due (RESEND_CHECK_S is 1 s)
            assert len(listener.got) == 6, "sent again at once, its new mark lost"
            now[0] += 30  # past the second wait (20 s, up to a quarter more)
            wait_until(lambda: len(listener.got) >= 9, 10, "sent again at its time, though its mark failed")
        finally:
            forwarder.stop()
            uplink.close()
    listener.close()
    assert sorted(Counter(topic_name for topic_name, _ in listener.got)) == ["t/alert/0", "t/alert/1", "t/alert/2"]


def test_a_broker_that_stops_is_a_connection_lost(broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    # paho 2 reports a dropped connection (MQTT_ERR_CONN_LOST) with the DISCONNECT reason code
    # "Unspecified error", as if the broker had sent one: the log said so, and misled
    uplink = MqttUplink(UplinkSettings(url=broker.url, client_id="dropped"))
    uplink.start()
    try:
        wait_until(uplink.connected.is_set, 10, "connected")
        with caplog.at_level(logging.WARNING, logger="s4edge.cloud_sync.uplink"):
            broker.stop()
            wait_until(lambda: not uplink.connected.is_set(), 10, "the loss noticed")
    finally:
        uplink.close()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disconnected")]
    assert said == [f"disconnected from {broker.host}:{broker.port}: connection lost"]
