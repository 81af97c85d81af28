"""The fleet quick start (README.md, docs/deploy-raspberry-pi.md) command for command, through
the `s4edge` console script in a fresh folder: CA, broker certificate, broker config, a real
mosquitto started from that config, a provisioned node, `doctor` over TLS, the agent online.

Only the port differs from the README (a free one, bound to loopback)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from s4edge.testing import Mosquitto, eventually, free_port
from s4edge.testing.mosquitto import stop_process

pytestmark = pytest.mark.slow
SCRIPT = Path(sys.executable).with_name("s4edge")
# The console script as a user types it; `python -m s4edge` where the scripts are not installed.
S4EDGE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "s4edge"]
TIMEOUT = 20.0


def s4edge(cwd: Path, command: str) -> str:
    done = subprocess.run([*S4EDGE, *command.split()], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"s4edge {command}\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """The README's first three steps, then mosquitto started on the config they wrote."""
    port = free_port()
    s4edge(tmp_path, "fleet ca init --out fleet/")
    s4edge(tmp_path, "fleet ca server-cert --ca-dir fleet/ --host localhost --ip 127.0.0.1")
    listener = f"--port {port} --bind 127.0.0.1"
    said = s4edge(tmp_path, f"fleet broker-config --fleet-dir fleet/ --out mosquitto.conf {listener}")
    assert "created fleet/passwords and fleet/acl" in said
    running = Mosquitto(tmp_path / "mosquitto-state", port=port, config_file=tmp_path / "mosquitto.conf")
    yield running.start()
    running.stop()


def test_the_quick_start_brings_a_node_online_over_tls(broker: Mosquitto, tmp_path: Path) -> None:
    node = "node-01 --site plaza-mayor --lat 40.4168 --lon -3.7038 --board x86"
    files = f"--ca-dir fleet/ --out node-01/ --outbox node-01/outbox.db --broker mqtts://localhost:{broker.port}"
    s4edge(tmp_path, f"provision {node} {files}")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)  # `kill -HUP %1`: mosquitto rereads passwords and acl
    eventually(lambda: "Reloading config." in broker.log.read_text(), TIMEOUT, "mosquitto to reload")

    checks = {c["name"]: c for c in json.loads(s4edge(tmp_path, "doctor --config node-01/node.yaml --json"))}
    assert checks["config"]["status"] == "PASS", checks["config"]
    assert checks["broker"]["status"] == "PASS", checks["broker"]
    assert f"localhost:{broker.port} (TLS) as node-01: CONNACK Success" in checks["broker"]["detail"]
    assert checks["disk"]["status"] == "PASS", checks["disk"]  # the outbox folder exists and is writable

    log = tmp_path / "agent.log"
    with log.open("w") as sink:
        agent = subprocess.Popen(
            [*S4EDGE, "agent", "run", "--config", "node-01/node.yaml", "--log-format", "json"],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: f"connected to localhost:{broker.port}" in log.read_text(), TIMEOUT, "the agent online")
        eventually(lambda: " as node-01 (p5" in broker.log.read_text(), TIMEOUT, "mosquitto to log node-01")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            assert agent.wait(TIMEOUT) == 0, log.read_text()
        finally:
            stop_process(agent)
    assert (tmp_path / "node-01" / "outbox.db").exists()
