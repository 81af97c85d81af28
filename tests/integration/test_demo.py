"""``s4edge demo`` — the README's main job — and the privacy promise: in a full run,
with real detection on real frames, no outbound MQTT payload carries image data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.messages import MessageError, decode
from s4edge.testing import Mosquitto

pytestmark = pytest.mark.slow

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM6", b"GIF8", b"RIFF")
BLOB = re.compile(rb"[A-Za-z0-9+/=]{120,}")


def test_demo_runs_detection_and_sensors_and_sends_no_pixels(broker: Mosquitto, shared: Path) -> None:
    payloads: list[tuple[str, bytes]] = []
    sniffer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="privacy-sniffer")
    sniffer.on_message = lambda _c, _u, msg: payloads.append((msg.topic, bytes(msg.payload)))
    sniffer.connect(broker.host, broker.port)
    sniffer.subscribe("#", qos=1)
    sniffer.loop_start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "s4edge", "demo", "--broker", broker.url, "--duration", "45", "--json"],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        sniffer.loop_stop()
        sniffer.disconnect()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["dashboard"].startswith("http://127.0.0.1:")
    assert [n["node_id"] for n in result["nodes"]] == ["demo-node-1"]
    kinds = set(result["by_kind"])
    assert {"gas", "flame"} <= kinds, f"the scripted incident raised {kinds}"
    assert kinds & {"intrusion", "loitering", "crowd", "line_cross"}, f"no vision alert in {kinds}"
    assert result["ng112_calls"] >= 1
    # the real EN 50291-1 exposure alarm, on the plant room's labelled scenario clock
    assert "EN 50291-1" in (result["co_alarm"] or "") and "scenario clock ×60" in result["co_alarm"], result

    assert len(payloads) > result["alerts"] // 2
    for topic, payload in payloads:
        assert not any(magic in payload for magic in IMAGE_MAGIC), f"image bytes on {topic}"
        assert not BLOB.search(payload), f"an encoded blob on {topic}"
        try:
            decode(payload)
        except MessageError as exc:
            pytest.fail(f"{topic}: not an s4edge/1 message: {exc}")
