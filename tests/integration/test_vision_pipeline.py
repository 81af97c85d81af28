"""The vision demo node end to end: the real benchmark clip, the real FastestDet, the
node's outbox and uplink, a real mosquitto. Zone rules fire, and what reaches the
broker is metadata only."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from s4edge.cloud_sync.messages import Alert, decode_from, fleet_filter
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "firmware_configs" / "vision-demo.yaml"
CLIP = "data/video/bench_people_640x480_15fps.avi"
FASTESTDET_SHA256 = "31cb14c017fce347cb4c846ec62fdf00d76bb3beecdf4be21e7116ac67feb880"
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM6", b"RIFF")




class Receiver:
    """A fleet-side subscriber: every alert of the site, as raw payloads."""

    def __init__(self, port: int) -> None:
        self.payloads: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vision-test-receiver")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(fleet_filter("alert"), qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "could not subscribe to the test broker"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append((message.topic, bytes(message.payload)))

    def alerts(self) -> list[Alert]:
        with self._lock:
            received = list(self.payloads)
        decoded = [decode_from(topic, payload) for topic, payload in received]
        return [a for a in decoded if isinstance(a, Alert)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_the_vision_demo_node_fires_zone_rules_and_publishes_metadata_only(
    shared: Path, tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (shared / CLIP).is_file():
        pytest.skip(f"{shared / CLIP} is absent: the benchmark clip with its static stretch lives there")
    monkeypatch.setenv("S4EDGE_MODEL_MIRROR", str(shared / "models"))
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    data = yaml.safe_load(DEMO.read_text())
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{broker.port}"
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    (vision,) = [s for s in data["sources"] if s["type"] == "vision"]
    vision["camera"]["url"] = f"replay:{shared / CLIP}"
    # once through the clip, every frame, as fast as the CPU allows; snapshots on, into tmp
    vision["camera"].update(loop=False, realtime=False)
    vision["snapshots"] = {"enabled": True, "folder": str(tmp_path / "snapshots")}

    receiver = Receiver(broker.port)
    node = Node(parse_config(data, str(DEMO)), base_dir=tmp_path)
    try:
        node.start()
        assert wait_until(lambda: node.health.states().get("cam0") == "finished", timeout=240)
        assert wait_until(lambda: {"intrusion", "crowd"} <= {a.kind for a in receiver.alerts()}, timeout=30)
        # all acknowledged by the broker; with no aggregator here they stay in flight, awaiting receipts
        assert wait_until(lambda: node.outbox.unsent() == 0, timeout=30)
        (pipe,) = [r.source.pipeline for r in node._running]
        assert pipe.frames == 300 and pipe.errors == 0
        assert pipe.gate is not None and pipe.gate.skipped >= 40  # the static stretch, frames 113–172
    finally:
        node.close(flush_s=5)
        receiver.close()

    alerts = receiver.alerts()
    kinds = {a.kind for a in alerts if a.state == "new"}
    assert {"intrusion", "crowd"} <= kinds and "camera_fault" not in kinds
    intrusion = next(a for a in alerts if a.kind == "intrusion" and a.state == "new")
    assert intrusion.status == "Exercise"  # the demo is a drill
    assert intrusion.location.zone == "centre" and intrusion.detection is not None
    assert intrusion.detection.label == "person" and intrusion.detection.count >= 1
    assert intrusion.detection.camera == "cam0" and intrusion.detection.rule == "centre-intrusion"
    assert intrusion.model is not None and intrusion.model.name == "fastestdet"
    assert intrusion.model.sha256 == FASTESTDET_SHA256

    for _, payload in receiver.payloads:
        assert not any(magic in payload for magic in IMAGE_MAGIC)
        assert not re.search(rb"[A-Za-z0-9+/=]{100,}", payload)
        assert b"snapshots" not in payload and b".jpg" not in payload
        boxes = json.loads(payload).get("detection", {}).get("boxes", [])
        assert all(0.0 <= v <= 1.0 for box in boxes for v in box.values())

    # evidence stays on the node, blurred, in its local folder
    assert list((tmp_path / "snapshots").glob("cam0-*.jpg"))
