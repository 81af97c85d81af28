"""A node restarted on a full disk (the reliability issue, defects 2 and 3). It must
report ``disk_full`` in its heartbeats and retained status, keep its heartbeats and the
systemd watchdog ping going, deliver what its outbox already held, and store and
deliver alerts again once space returns. The disk is a real tmpfs filled with ballast,
the broker a real mosquitto, and the crash before the restart a real SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from s4edge.cloud_sync.messages import Alert, Heartbeat, Status, decode
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto, eventually
from s4edge.testing.disk import SmallDisk
from s4edge.testing.notify import NotifySocket

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "firmware_configs" / "sim-node.yaml"

# A node that stores one alert and is then killed: its outbox keeps the WAL and
# shared-memory files, so that the restart can open it on a disk with no byte left.
CRASH = """
import os, signal, sys, yaml
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
node = Node(parse_config(yaml.safe_load(open(sys.argv[1]))))
print(node.publish_alert(AlertDraft(kind="gas", severity="Severe", state="new", incident="before-the-crash")).id)
sys.stdout.flush()
if sys.argv[2] == "clean":
    node.close(flush_s=0)  # the outbox's WAL and shared memory are gone with it
else:
    os.kill(os.getpid(), signal.SIGKILL)
"""


class Receiver:
    """Everything the node publishes, decoded, in arrival order."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[Any] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="disk-full-receiver", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda client, *_: client.subscribe("s4edge/v1/demo-city/sim-node-1/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.messages.append(decode(message.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        eventually(subscribed.is_set, 10, "SUBACK")

    def of(self, kind: type) -> list[Any]:
        return [m for m in list(self.messages) if isinstance(m, kind)]

    def last(self, kind: type) -> Any:
        found = self.of(kind)
        return found[-1] if found else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    yield listener
    listener.close()


def node_config(broker: Mosquitto, outbox: Path) -> dict[str, Any]:
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = broker.url
    data["outbox"]["path"] = str(outbox)
    data["heartbeat"]["interval_s"] = 0.2
    data["sources"] = []  # the test raises the alerts
    return data


def draft(incident: str) -> AlertDraft:
    return AlertDraft(kind="gas", severity="Severe", state="new", incident=incident)


def disk_full_in(beat: Heartbeat | None) -> bool:
    return beat is not None and beat.sensors.get("disk_full", "").startswith("fault")


@pytest.mark.parametrize("stop", ["crash", "clean"])
def test_a_node_restarted_on_a_full_disk_says_so_and_delivers_again_once_space_returns(
    tmp_path: Path, broker: Mosquitto, disk: SmallDisk, notify: NotifySocket, stop: str
) -> None:
    """After a crash SQLite finds its WAL and shared memory still there; after a clean stop it
    must make them again, on the room the outbox's reserve file kept (cloud_sync/outbox.py).
    Either way an alert raised during the fault is stored in that room too: the reserve is
    not taken back into it (which filled the disk again at once, and after a crash refused
    every alert)."""
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(node_config(broker, disk.mountpoint / "outbox.db")))
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, str(config_file), stop],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    held = crashed.stdout.strip()
    assert held, crashed.stderr
    disk.fill()

    receiver = Receiver(broker)
    node = Node(parse_config(yaml.safe_load(config_file.read_text())))
    try:
        node.start()
        notify.wait_for("READY=1")
        # the fault, in the heartbeat and in the retained status
        eventually(lambda: disk_full_in(receiver.last(Heartbeat)), 20, "disk_full in a heartbeat")
        eventually(lambda: receiver.last(Status).degraded == ["disk_full"], 10, "disk_full in the status")
        # what the outbox held goes out all the same
        eventually(lambda: held in {a.id for a in receiver.of(Alert)}, 10, "the alert stored before the crash")
        # heartbeats and the watchdog ping go on
        beats = len(receiver.of(Heartbeat))
        assert notify.during(1.0).count("WATCHDOG=1") >= 3
        eventually(lambda: len(receiver.of(Heartbeat)) >= beats + 3, 10, "heartbeats during the fault")
        # a source's alert, and the end of the incident left open at the last stop: kept in
        # memory while they cannot be stored, then stored in the room the reserve gave up
        node._emit(draft("during-the-fault"))

        def stored() -> set[tuple[str, str]]:
            return {(a.incident, a.state) for a in receiver.of(Alert)}

        eventually(lambda: ("during-the-fault", "new") in stored(), 10, "an alert stored on the reserve")
        eventually(lambda: ("before-the-crash", "end") in stored(), 10, "the incident left open, ended")
        assert disk_full_in(receiver.last(Heartbeat)), "the disk is still full"

        disk.free()
        eventually(lambda: receiver.last(Status).degraded == [], 20, "the status clear again")
        eventually(lambda: not disk_full_in(receiver.last(Heartbeat)), 10, "a heartbeat without the fault")
        after = node.publish_alert(draft("after-the-fault"))
        eventually(lambda: after.id in {a.id for a in receiver.of(Alert)}, 20, "an alert stored after the fault")
        assert "WATCHDOG=1" in notify.during(0.5)
    finally:
        node.close(flush_s=0)
        receiver.close()
