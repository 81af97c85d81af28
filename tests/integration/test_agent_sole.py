"""One agent per node: a second `s4edge agent run` on the same outbox (a technician's, beside
the service) is refused in one line instead of running beside the first."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from s4edge.testing import Mosquitto, eventually

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"


def agent(config: Path) -> list[str]:
    return [sys.executable, "-m", "s4edge", "agent", "run", "--config", str(config), "--log-format", "text"]


def test_a_second_agent_on_one_outbox_is_refused_and_says_which_to_stop(broker: Mosquitto, tmp_path: Path) -> None:
    # it ran: the two took the node's MQTT session from each other every second
    # ("disconnected: Unspecified error"), and both read the sensors and raised every alarm
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{broker.port}"
    data["outbox"]["path"] = str(tmp_path / "state" / "outbox.db")
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(data))
    first = subprocess.Popen(agent(config), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        eventually(lambda: (tmp_path / "state" / "outbox.db").exists(), 30.0, "the first agent's outbox")
        second = subprocess.run(agent(config), capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"another agent runs on the outbox {tmp_path / 'state' / 'outbox.db'}" in second.stderr
        assert "systemctl stop" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first runs on
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    with (tmp_path / "state" / "outbox.db.lock").open("a") as lock:  # gone, it holds nothing: the next may start
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
