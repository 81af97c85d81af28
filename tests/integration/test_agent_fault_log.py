"""``s4edge agent run`` says on its console what it publishes about its own faults: a camera
whose file is missing is a ``camera_fault`` alert over MQTT and a WARNING line naming the
camera and the fault; when the file appears, the recovery is an INFO line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

from s4edge.cloud_sync.messages import Alert, decode
from s4edge.testing import Mosquitto, eventually

TIMEOUT = 60.0


class Console:
    """The agent's stderr, line by line, read while it runs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> str | None:
        return next((line for line in list(self.lines) if re.search(pattern, line)), None)


def write_clip(path: Path) -> None:
    """A short MJPG clip, written beside its place and moved in, so the camera never opens half a file."""
    partial = path.with_suffix(".partial.avi")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, dtype=np.uint8))
    writer.release()
    partial.rename(path)


@pytest.fixture
def alerts(broker: Mosquitto) -> Iterator[list[Alert]]:
    received: list[Alert] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-listener")
    client.on_message = lambda _c, _u, msg: received.append(decode(msg.payload))  # type: ignore[arg-type]
    client.connect(broker.host, broker.port)
    client.subscribe("s4edge/v1/demo-city/cam-node-1/alert", qos=1)
    client.loop_start()
    yield received
    client.loop_stop()
    client.disconnect()


def test_a_missing_camera_and_its_recovery_are_logged_on_the_console(
    broker: Mosquitto, alerts: list[Alert], tmp_path: Path
) -> None:
    config = {
        "node_id": "cam-node-1",
        "site": "demo-city",
        "location": {"lat": 48.1374, "lon": 11.5755},
        "mqtt": {"url": broker.url, "keepalive_s": 5},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "heartbeat": {"interval_s": 5},
        "sources": [
            {
                "type": "vision",
                "name": "cam0",
                "camera": {"url": "replay:cam0.avi", "loop": True},  # not there yet
                "model": {"name": "fastestdet"},
            }
        ],
    }
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s4edge",
            "agent",
            "run",
            "--config",
            str(tmp_path / "node.yaml"),
            "--log-format",
            "text",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    console = Console(proc)
    try:
        fault = eventually(
            lambda: console.find(r"WARNING .*camera_fault: camera cam0 lost — .*cam0\.avi: no such video file"),
            TIMEOUT,
            "the camera fault on the console",
        )
        eventually(lambda: console.find(r"WARNING .*degraded: cam0 — fault:"), TIMEOUT, "cam0 degraded on the console")
        # what went over MQTT is what the console said
        published = eventually(
            lambda: [a for a in alerts if a.kind == "camera_fault" and a.state == "new"], TIMEOUT, "the alert"
        )
        assert published[0].title is not None and published[0].title in fault

        write_clip(tmp_path / "cam0.avi")
        eventually(
            lambda: console.find(r"INFO .*camera_fault over: camera cam0 lost — camera cam0 recovered"),
            TIMEOUT,
            "the camera's recovery on the console",
        )
        eventually(lambda: console.find(r"INFO .*recovered: cam0 — now ok"), TIMEOUT, "cam0 well again")
        assert eventually(lambda: [a for a in alerts if a.kind == "camera_fault" and a.state == "end"], TIMEOUT, "end")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, "\n".join(console.lines[-30:])


def test_sighup_applies_the_config_file_again_and_a_refused_one_leaves_the_agent_running(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """SIGHUP killed the agent with no log line, its Last Will said offline, and the next start
    ended every open incident and opened it again under a new id."""
    from s4edge.resources import packaged

    config = yaml.safe_load(packaged("firmware_configs", "sim-node.yaml").read_text(encoding="utf-8"))
    config["mqtt"] = {"url": broker.url, "keepalive_s": 5}
    config["outbox"]["path"] = str(tmp_path / "outbox.db")
    node_yaml = tmp_path / "node.yaml"
    node_yaml.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "s4edge", "agent", "run", "--config", str(node_yaml), "--log-format", "text"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    console = Console(proc)
    try:
        eventually(lambda: console.find(r"connected to"), TIMEOUT, "the agent connected")
        config["heartbeat"]["interval_s"] = 31
        node_yaml.write_text(yaml.safe_dump(config))
        proc.send_signal(signal.SIGHUP)
        eventually(lambda: console.find(r"INFO .*node\.yaml applied"), TIMEOUT, "the new config applied")
        node_yaml.write_text("node_id: [not a name]\n")
        proc.send_signal(signal.SIGHUP)
        eventually(
            lambda: console.find(r"ERROR .*node\.yaml not applied, the running config stays"), TIMEOUT, "refused"
        )
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, "\n".join(console.lines[-30:])
