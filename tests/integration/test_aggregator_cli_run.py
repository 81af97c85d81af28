"""``s4edge aggregator run`` as an operator starts it: a real process on a real mosquitto, with
NG112 forwarding attached from its YAML, signed commands and JSON logs; SIGTERM stops it."""

from __future__ import annotations

import base64
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import Status, decode, encode, signing_bytes, topic, topic_for
from s4edge.testing import Mosquitto, free_port
from s4edge.testing import eventually as wait_until

TIMEOUT = 20.0


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    result = CliRunner().invoke(app, ["fleet", "command-key", "init", "--fleet-dir", str(tmp_path / "fleet")])
    assert result.exit_code == 0, result.output
    return tmp_path / "fleet"


@pytest.fixture
def running(broker: Mosquitto, fleet_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    ng112 = tmp_path / "ng112.yaml"
    ng112.write_text("psap: sip:psap@127.0.0.1:5060;transport=tcp\ndefault: {min_severity: Extreme}\n")
    port = free_port()
    args = [
        *("aggregator", "run", "--broker", broker.url, "--db", f"sqlite:///{tmp_path / 'agg.db'}"),
        *("--http", f"127.0.0.1:{port}", "--client-id", "agg-cli", "--ng112", str(ng112)),
        *("--command-key", str(fleet_dir / "command.key"), "--log-format", "json"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "s4edge", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proc.poll() is None, f"the aggregator exited: {proc.stderr.read() if proc.stderr else ''}"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the aggregator's HTTP server did not come up"
        time.sleep(0.1)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def test_the_ng112_option_attaches_forwarding_and_sigterm_stops_cleanly(
    running: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = running
    answer = httpx.get(f"{url}/ng112/forwards", timeout=5)
    assert answer.status_code == 200 and answer.json() == {"forwards": []}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert proc.stderr is not None
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert any(entry["logger"] == "s4edge.aggregator" and "listening on" in entry["msg"] for entry in logs), logs


def test_commands_from_the_cli_aggregator_are_signed_with_the_fleet_key(
    running: tuple[subprocess.Popen[str], str], broker: Mosquitto, fleet_dir: Path
) -> None:
    _, url = running
    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-n1", protocol=mqtt.MQTTv5)
    node.on_message = lambda _c, _u, message: got.put(bytes(message.payload))
    node.on_subscribe = lambda *_: subscribed.set()
    node.connect(broker.host, broker.port)
    node.loop_start()
    try:
        node.subscribe(topic("plaza", "n1", "cmd/#"), qos=1)
        assert subscribed.wait(TIMEOUT), "no SUBACK"
        status = Status(node_id="n1", site="plaza", seq=0, state="online")  # commands go to nodes it knows
        node.publish(topic_for(status), encode(status), qos=1).wait_for_publish(TIMEOUT)
        wait_until(lambda: httpx.get(f"{url}/api/nodes").json()["nodes"], what="the node known")
        issued = httpx.post(f"{url}/api/nodes/plaza/n1/commands", json={"name": "ping", "args": {}}, timeout=10)
        assert issued.status_code == 202 and issued.json()["published"]
        command = decode(got.get(timeout=TIMEOUT))
    finally:
        node.disconnect()
        node.loop_stop()
    assert command.type == "cmd" and command.signature is not None
    public = load_pem_public_key((fleet_dir / "command.pub").read_bytes())
    public.verify(base64.b64decode(command.signature, validate=True), signing_bytes(command))  # type: ignore[union-attr]
