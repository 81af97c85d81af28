"""`aggregator run` with its default workers against a broker that speaks only MQTT 3.1.1
(amqtt, the demo's embedded broker): shared subscriptions need MQTT 5, so it says so and
ingests in its own process instead of failing to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from s4edge.embedded_broker import EmbeddedBroker
from s4edge.testing import eventually, free_port


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_default_workers_fall_back_to_one_ingest_on_an_mqtt_3_broker(tmp_path: Path) -> None:
    broker = EmbeddedBroker().start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "s4edge", "aggregator", "run", "--broker", broker.url]
    argv += ["--db", f"sqlite:///{tmp_path / 'agg.db'}", "--http", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: proc.poll() is not None or healthy(url), 60, "the aggregator to come up")
        assert proc.poll() is None, "the aggregator exited"
    finally:
        proc.terminate()
        stderr = proc.communicate(timeout=30)[1]
        broker.stop()
    assert "ingest runs in this process instead (MQTT 3.1.1)" in stderr, stderr
    assert "connected to" in stderr and "(MQTT 3.1.1" in stderr, stderr
