"""Simulated gas sensors in a real node: scenario → SimBus → ADS1115 driver → MQ-2
curve → % LEL alarm → outbox → a real mosquitto, where a subscriber sees the alert
and the telemetry."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from s4edge.cloud_sync.messages import decode_from
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto

pytestmark = pytest.mark.slow


def test_simulated_methane_leak_reaches_the_broker(broker: Mosquitto, tmp_path: Path) -> None:
    scenario = tmp_path / "leak.yaml"
    scenario.write_text("name: leak\nduration_s: 4\nsignals:\n  ch4_lel: [[0, 0], [0.5, 0], [1.5, 50], [4, 50]]\n")
    config = parse_config(
        {
            "node_id": "sensing-node",
            "site": "plaza",
            "location": {"lat": 52.52, "lon": 13.405},
            "mqtt": {"url": broker.url},
            "outbox": {"path": str(tmp_path / "outbox.db")},
            "sources": [
                {
                    "type": "sensors",
                    "bus": "sim",
                    "scenario": str(scenario),
                    "period_s": 0.05,
                    "calibration_file": str(tmp_path / "cal.json"),
                    "sensors": [
                        {
                            "name": "mq2",
                            "kind": "mq2",
                            "channel": 0,
                            "r0_ohm": 10000,
                            "warmup_s": 0,
                            "sim": {"signal": "ch4_lel", "scale": 500},
                        },
                        {"name": "climate", "kind": "bme280"},
                    ],
                }
            ],
        }
    )
    received: list[Any] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sensing-test")
    client.on_connect = lambda c, *_: c.subscribe("s4edge/v1/plaza/sensing-node/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda c, u, m: received.append(decode_from(m.topic, m.payload))
    host, port = broker.url.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.loop_start()
    assert subscribed.wait(10)
    node = Node(config, base_dir=tmp_path)
    node.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(m.type == "alert" and m.severity == "Severe" for m in list(received)):
                break
            time.sleep(0.05)
    finally:
        node.close()
        client.loop_stop()
        client.disconnect()
    alerts = [m for m in received if m.type == "alert" and m.kind == "gas"]
    assert alerts and alerts[0].state == "new", [json.loads(m.model_dump_json()) for m in received][-3:]
    severe = next(a for a in alerts if a.severity == "Severe")
    lel = next(m for m in severe.measurements if m.unit == "%LEL")
    assert 40 <= lel.value <= 55
    readings = {(r.sensor, r.quantity) for m in received if m.type == "telemetry" for r in m.readings}
    assert ("mq2", "flammable_gas") in readings and ("climate", "pressure") in readings
