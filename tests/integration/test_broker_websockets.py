"""MQTT over WebSocket end to end: a node whose config says ws:// and an aggregator started with
--broker ws:// meet on mosquitto's websockets listener (which does not speak plain MQTT); the
alert is stored and its receipt empties the node's outbox. wss:// is the same with TLS."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.uplink import MqttUplink, UplinkSettings
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto, eventually, free_port
from s4edge.testing.mosquitto import wait_for_port

pytestmark = pytest.mark.slow


@pytest.fixture
def ws_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", websockets=True) as broker:
        yield broker


@pytest.fixture
def aggregator_over_ws(ws_broker: Mosquitto, tmp_path: Path) -> Iterator[str]:
    """``s4edge aggregator run --broker ws://…`` as an operator starts it; yields its HTTP URL."""
    port = free_port()
    argv = [sys.executable, "-m", "s4edge", "aggregator", "run", "--broker", ws_broker.ws_url]
    argv += ["--db", f"sqlite:///{tmp_path / 'agg.db'}", "--http", f"127.0.0.1:{port}", "--client-id", "agg-ws"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"the aggregator exited: {proc.stderr.read() if proc.stderr else ''}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually(healthy, 30, "the aggregator connected over ws:// and healthy")
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def node_config(broker_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "node_id": "ws-node",
        "site": "plaza",
        "location": {"lat": 52.52, "lon": 13.405},
        "mqtt": {"url": broker_url, "client_id": "ws-node"},
        "outbox": {"path": str(tmp_path / "outbox.db"), "receipt_timeout_s": 60},
        "sources": [],
    }


def test_a_node_and_the_aggregator_meet_over_ws(ws_broker: Mosquitto, aggregator_over_ws: str, tmp_path: Path) -> None:
    node = Node(parse_config(node_config(ws_broker.ws_url, tmp_path)))
    node.start()
    try:
        eventually(node.uplink.connected.is_set, 15, "the node connected over ws://")
        node.publish_alert(AlertDraft(kind="gas", severity="Severe", state="new", incident="ws-incident", title="ws"))

        def stored() -> list[dict[str, Any]]:
            answer = httpx.get(f"{aggregator_over_ws}/api/alerts", params={"node": "ws-node"}, timeout=5)
            alerts: list[dict[str, Any]] = answer.json()["alerts"]
            return alerts

        alerts = eventually(stored, 20, "the alert at the aggregator")
        assert [a["incident"] for a in alerts] == ["ws-incident"]
        # the receipt came back to the node over the same WebSocket and removed the alert
        eventually(lambda: node.outbox.depth() == 0, 20, "the receipt emptying the node's outbox")
    finally:
        node.close()


def test_the_ws_listener_speaks_no_plain_mqtt(ws_broker: Mosquitto, tmp_path: Path) -> None:
    """What makes the test above able to fail: a client that ignored ws:// would speak plain MQTT
    to this port and never get a CONNACK."""
    plain = MqttUplink(
        UplinkSettings(url=f"mqtt://127.0.0.1:{ws_broker.ws_port}", client_id="plain", connack_timeout_s=2)
    )
    over_ws = MqttUplink(UplinkSettings(url=ws_broker.ws_url, client_id="over-ws"))
    plain.start()
    over_ws.start()
    try:
        eventually(over_ws.connected.is_set, 15, "the ws:// client connected")
        assert not plain.connected.wait(3), "plain MQTT was answered on the WebSocket listener"
    finally:
        plain.close(timeout=1)
        over_ws.close(timeout=1)


def test_wss_carries_mqtt_over_websocket_and_tls(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    for args in (
        ["fleet", "ca", "init", "--out", str(fleet)],
        ["fleet", "ca", "server-cert", "--ca-dir", str(fleet), "--host", "localhost", "--ip", "127.0.0.1"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    wss_port = free_port()
    tls_ws = (
        f"listener {wss_port} 127.0.0.1\nprotocol websockets\n"
        f"certfile {fleet / 'server.crt'}\nkeyfile {fleet / 'server.key'}\n"
    )
    broker = Mosquitto(tmp_path / "broker", config_extra=tls_ws).start()
    try:
        wait_for_port("127.0.0.1", wss_port)
        received: list[bytes] = []
        got = threading.Event()
        listener = MqttUplink(UplinkSettings(url=broker.url, client_id="plain-listener"))
        listener.subscribe("wss/check", lambda _topic, payload: (received.append(payload), got.set()))
        settings = UplinkSettings(
            url=f"wss://127.0.0.1:{wss_port}/mqtt", client_id="wss-node", ca_file=fleet / "ca.crt"
        )
        sender = MqttUplink(settings)
        listener.start()
        sender.start()
        try:
            eventually(lambda: listener.connected.is_set() and sender.connected.is_set(), 15, "both connected")
            # retained: the listener gets it even if its SUBSCRIBE reaches the broker after the PUBLISH
            assert sender.publish("wss/check", b"over tls", qos=1, retain=True).wait(10)
            assert got.wait(10) and received == [b"over tls"]
        finally:
            sender.close(timeout=1)
            listener.close(timeout=1)
    finally:
        broker.stop()
