"""Node → real mosquitto: the lifecycle arrives, and a broker outage, SIGKILL or power
cut loses nothing the outbox acknowledged. The receiving side is a bare paho subscriber."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from s4edge.cloud_sync.messages import Alert, Status, decode
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto, free_port
from s4edge.testing import eventually as wait_until

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "firmware_configs" / "sim-node.yaml"
NODE_TOPICS = "s4edge/v1/demo-city/sim-node-1/#"




class Receiver:
    """A persistent-session subscriber that records every message it decodes, in order."""

    def __init__(self, broker: Mosquitto, client_id: str = "receiver") -> None:
        self.messages: list = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, "SUBACK")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe(NODE_TOPICS, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        decoded = decode(message.payload)
        with self._lock:
            self.messages.append((message.retain, decoded))

    def of(self, kind: type) -> list:
        with self._lock:
            return [m for _, m in self.messages if isinstance(m, kind)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def receiver(broker: Mosquitto) -> Iterator[Receiver]:
    running = Receiver(broker)
    yield running
    running.close()


def node_config(tmp_path: Path, broker: Mosquitto, **source_changes) -> dict:
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = broker.url
    data["mqtt"]["keepalive_s"] = 5
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    data["heartbeat"]["interval_s"] = 3600
    data["sources"][0].update(source_changes)
    return data


def draft(i: int) -> AlertDraft:
    return AlertDraft(kind="gas", severity="Moderate", state="new", incident=f"incident-{i:05d}")


def first_arrivals(alerts: list[Alert]) -> list[Alert]:
    seen: set[str] = set()
    return [a for a in alerts if not (a.id in seen or seen.add(a.id))]


def test_scenario_incident_arrives_as_new_update_end(tmp_path: Path, broker: Mosquitto, receiver: Receiver) -> None:
    # gas_leak at 20x: methane crosses 10 and 40 %LEL, then clears
    data = node_config(tmp_path, broker, speed=20, period_s=0.05, loop=False)
    for sensor in data["sources"][0]["sensors"]:  # debounce runs on the node's clock, not the scenario's
        sensor.update(raise_after_s=0, clear_after_s=0)
    config = parse_config(data)
    node = Node(config)
    node.start()
    try:
        wait_until(lambda: any(a.kind == "gas" and a.state == "end" for a in receiver.of(Alert)), 20, "gas end")
    finally:
        node.close()
    gas = first_arrivals([a for a in receiver.of(Alert) if a.kind == "gas"])
    assert gas[0].state == "new" and gas[-1].state == "end"
    assert "update" in [a.state for a in gas]
    assert {a.severity for a in gas} == {"Moderate", "Severe"}
    assert len({a.incident for a in gas}) == 1
    assert {a.status for a in gas} == {"Exercise"}
    flame = [a for a in receiver.of(Alert) if a.kind == "flame"]
    assert flame and flame[0].severity == "Extreme"
    assert receiver.of(Status)[0].state == "online"
    assert receiver.of(Status)[-1].state == "offline"


def _persisted(broker: Mosquitto, since: float) -> bool:
    db = broker.workdir / "mosquitto.db"
    return db.exists() and db.stat().st_mtime > since


@pytest.mark.slow
def test_broker_outage_loses_nothing_and_keeps_seq_order(tmp_path: Path, broker: Mosquitto, receiver: Receiver) -> None:
    subscribed_at = time.time()
    node = Node(parse_config(node_config(tmp_path, broker)))
    node.start()
    wait_until(node.uplink.connected.is_set, 10, "node connected")
    # the receiver's session must be on the broker's disk, or a restarted broker forgets it
    wait_until(lambda: _persisted(broker, subscribed_at + 0.5), 10, "mosquitto autosave")
    sent: list[Alert] = []
    stop = threading.Event()

    def keep_raising() -> None:
        i = 0
        while not stop.wait(0.05):
            sent.append(node.publish_alert(draft(i)))
            i += 1

    raiser = threading.Thread(target=keep_raising)
    raiser.start()
    try:
        wait_until(lambda: len(receiver.of(Alert)) >= 10, 10, "alerts before the outage")
        broker.kill()
        outage_start = len(sent)
        time.sleep(10)  # the outage itself is what this test is about
        assert len(sent) > outage_start + 50, "the node kept raising alerts during the outage"
        broker.start()
        wait_until(lambda: len(sent) > outage_start + 250, 20, "alerts after the outage")
    finally:
        stop.set()
        raiser.join()
    try:
        wanted = {a.id for a in sent}
        wait_until(lambda: wanted <= {a.id for a in receiver.of(Alert)}, 40, "every alert after restart")
    finally:
        node.close()
    seqs = [a.seq for a in first_arrivals(receiver.of(Alert))]
    assert seqs == sorted(seqs)


_BURST = """
import sys, yaml
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
node = Node(parse_config(yaml.safe_load(open(sys.argv[1]))))
node.start()
i = 0
while True:
    alert = node.publish_alert(AlertDraft(kind="co", severity="Severe", state="new", incident=f"burst-{i:05d}"))
    print(alert.id, flush=True)
    i += 1
"""


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.slow
def test_sigkill_mid_burst_then_restart_loses_nothing(tmp_path: Path, broker: Mosquitto, receiver: Receiver) -> None:
    # the burst runs cut off from the broker, so every alert must come out of the outbox file
    cut_off = node_config(tmp_path, broker, loop=False, speed=1000)
    cut_off["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(cut_off))
    child = _spawn("-c", _BURST, str(config_file))
    assert child.stdout is not None
    printed = [child.stdout.readline().strip() for _ in range(300)]
    child.send_signal(signal.SIGKILL)
    child.wait(5)
    printed += child.stdout.read().split()
    assert not receiver.of(Alert)

    config_file.write_text(yaml.safe_dump(node_config(tmp_path, broker, loop=False, speed=1000)))
    restarted = _spawn("-m", "s4edge", "agent", "run", "--config", str(config_file))
    try:
        wanted = set(printed)
        wait_until(lambda: wanted <= {a.id for a in receiver.of(Alert)}, 30, "every printed alert id")
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(15) == 0
    # clean shutdown: a retained offline status from the restarted node
    wait_until(lambda: receiver.of(Status)[-1].state == "offline", 10, "offline status on SIGTERM")
    seqs = [a.seq for a in first_arrivals(receiver.of(Alert))]
    assert seqs == sorted(seqs)


def test_sigkilled_node_leaves_a_retained_offline_status(tmp_path: Path, broker: Mosquitto) -> None:
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(node_config(tmp_path, broker)))
    child = _spawn("-m", "s4edge", "agent", "run", "--config", str(config_file))
    watcher = Receiver(broker, client_id="watcher")
    try:
        wait_until(lambda: any(s.state == "online" for s in watcher.of(Status)), 20, "online status")
        boot_id = watcher.of(Status)[-1].boot_id
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        wait_until(lambda: watcher.of(Status)[-1].state == "offline", 10, "Last Will")
    finally:
        watcher.close()
        if child.poll() is None:
            child.kill()
    late = Receiver(broker, client_id="late-joiner")
    try:
        wait_until(lambda: bool(late.messages), 10, "retained status")
        retained, status = late.messages[0]
        assert retained and isinstance(status, Status)
        assert status.state == "offline" and status.boot_id == boot_id
    finally:
        late.close()
