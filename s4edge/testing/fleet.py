"""A provisioned fleet behind a real mosquitto with the generated TLS listener, password
file and ACL, and a paho client that speaks to it the way a node or the aggregator would."""

from __future__ import annotations

import queue
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.testing import Mosquitto, free_port

SITE = "plaza"
TIMEOUT = 10.0


def cli(*args: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class Fleet:
    root: Path
    broker: Mosquitto
    port: int

    @property
    def ca(self) -> Path:
        return self.root / "fleet" / "ca.crt"

    def node_dir(self, name: str) -> Path:
        return self.root / name

    @property
    def folder(self) -> Path:
        return self.root / "fleet"

    def password(self, name: str) -> str:
        folder = self.node_dir(name)
        secret = folder / ("mqtt.password" if (folder / "mqtt.password").exists() else "aggregator.password")
        return secret.read_text().strip()

    def reconfigure(self) -> str:
        """Render the broker config again from the fleet folder (after a revocation) and
        restart the broker on it; returns the config."""
        conf = write_broker_config(self.root, self.port)
        self.broker.stop()
        self.broker.start(wait_port=self.port)
        return conf


def write_broker_config(root: Path, port: int) -> str:
    conf = root / "mosquitto.conf"
    options = f"--port {port} --bind 127.0.0.1 --user current --persistence-dir {root / 'broker'}".split()
    cli("fleet", "broker-config", "--fleet-dir", root / "fleet", "--out", conf, *options)
    return conf.read_text()


def build_fleet(root: Path, client_certs: bool = False) -> Fleet:
    """CA, broker certificate, nodes node-a and node-b, the aggregator, and the broker config.

    ``operator`` is a second aggregator identity, for a test's own client beside a running
    aggregator: the broker makes a client's id its username, so each connection needs its own."""
    fleet_dir = root / "fleet"
    port = free_port()
    cli("fleet", "ca", "init", "--out", fleet_dir)
    cli("fleet", "ca", "server-cert", "--ca-dir", fleet_dir, "--host", "localhost", "--ip", "127.0.0.1")
    cert = ["--client-cert"] if client_certs else []
    url = f"mqtts://127.0.0.1:{port}"
    for node, lon in (("node-a", "-3.70"), ("node-b", "-3.71")):
        args = f"{node} --site {SITE} --lat 40.41 --lon {lon} --broker {url} --board x86 --out {root / node}"
        cli("provision", *args.split(), "--ca-dir", fleet_dir, *cert)
    for name in ("aggregator", "operator"):
        cli("fleet", "aggregator-credentials", "--fleet-dir", fleet_dir, "--name", name, "--out", root / name, *cert)
    write_broker_config(root, port)  # creates root/broker, the broker's persistence folder
    broker = Mosquitto(root / "broker", port=port, config_file=root / "mosquitto.conf")
    return Fleet(root, broker.start(wait_port=port), port)


@dataclass
class Peer:
    """One MQTT client; records its CONNACK, SUBACKs, PUBACKs and messages."""

    client: mqtt.Client
    port: int
    # ("connack", reason code) or ("closed", None): what the broker did with the CONNECT.
    events: queue.Queue[tuple[str, int | None]] = field(default_factory=queue.Queue)
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    acks: dict[int, int] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Publish and return the broker's PUBACK reason code (0 = accepted)."""
        info = self.client.publish(topic, payload, qos=qos)
        assert info.mid is not None
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, TIMEOUT), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def subscribe(self, topic_filter: str) -> int:
        """Subscribe and return the SUBACK reason code (0-2 = granted QoS, >= 0x80 = refused)."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, TIMEOUT), f"no SUBACK for {topic_filter}"
            return self.acks[mid]

    def connect(self) -> tuple[str, int | None]:
        """Connect and return the broker's answer; a refused TLS handshake reads ("closed", None)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return ("closed", None)
        self.client.loop_start()
        return self.events.get(timeout=TIMEOUT)

    def next_message(self, timeout: float = TIMEOUT) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def peer(
    fleet: Fleet,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    port: int | None = None,
    protocol: MQTTProtocolVersion = mqtt.MQTTv5,
) -> Peer:
    """A TLS client trusting ``ca`` (default: the fleet CA); call ``connect()`` next."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    p = Peer(client, port or fleet.port)
    if username is not None:
        client.username_pw_set(username, password)
    context = ssl.create_default_context(cafile=str(ca or fleet.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    client.tls_set_context(context)

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason_code: ReasonCode, props: object) -> None:
        p.events.put(("connack", reason_code.value))

    def on_disconnect(c: mqtt.Client, userdata: object, flags: object, reason_code: object, props: object) -> None:
        p.events.put(("closed", None))

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        p.messages.put((message.topic, bytes(message.payload)))

    def on_ack(mid: int, reason_code: ReasonCode) -> None:
        with p.acked:
            p.acks[mid] = reason_code.value
            p.acked.notify_all()

    def on_subscribe(c: mqtt.Client, userdata: object, mid: int, codes: list[ReasonCode], props: object) -> None:
        on_ack(mid, codes[0])

    def on_publish(c: mqtt.Client, userdata: object, mid: int, reason_code: ReasonCode, props: object) -> None:
        on_ack(mid, reason_code)

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    return p


def login(fleet: Fleet, name: str, port: int | None = None) -> Peer:
    """Connect as a provisioned identity and require a successful CONNACK."""
    folder = fleet.node_dir(name)
    stem = "node" if (folder / "node.yaml").exists() else "aggregator"
    if (folder / f"{stem}.crt").exists():
        p = peer(fleet, name, cert=folder / f"{stem}.crt", key=folder / f"{stem}.key", port=port)
    else:
        p = peer(fleet, name, username=name, password=fleet.password(name), port=port)
    assert p.connect() == ("connack", 0), f"{name} was refused"
    return p
