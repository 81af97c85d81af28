"""``s4edge agent status`` beside a real running agent: it names the agent's pid, sees the alerts
the broker took wait for their receipt and the receipt arrive, lets the agent run on and stop
cleanly, and then reads the outbox the agent left without adding a file to its folder."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.messages import Alert, decode, encode, receipts_for, topic
from s4edge.testing import Mosquitto, eventually
from s4edge.testing.listener import Listener

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"
SITE, NODE = "demo-city", "sim-node-1"
TIMEOUT = 60.0


def status(config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["agent", "status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def folder_state(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}


def test_status_reads_a_running_agents_outbox_and_then_the_one_it_left(broker: Mosquitto, tmp_path: Path) -> None:
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = broker.url
    data["outbox"]["path"] = str(tmp_path / "state" / "outbox.db")
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(data))
    centre = Listener(broker, topic(SITE, NODE, "alert"))  # takes the alerts, and stores none
    command = [sys.executable, "-m", "s4edge", "agent", "run", "--config", str(config), "--log-format", "text"]
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: (tmp_path / "state" / "outbox.db").exists(), TIMEOUT, "the agent's outbox")
        waiting = eventually(lambda: (s := status(config))["alerts_awaiting_receipt"] and s, TIMEOUT, "an alert sent")
        assert waiting["agent_running"] is True and waiting["agent_pid"] == agent.pid
        assert waiting["last_published_at"] is not None and waiting["last_receipt_at"] is None

        ids = eventually(
            lambda: [a.id for _, payload in list(centre.got) if isinstance(a := decode(payload), Alert)],
            TIMEOUT,
            "the alerts at the centre",
        )
        for receipt in receipts_for(SITE, NODE, "aggregator", ids, seq=1):
            centre.publish(topic(SITE, NODE, "receipt"), encode(receipt))
        eventually(lambda: status(config)["last_receipt_at"], TIMEOUT, "the receipt to be stamped")
        assert agent.poll() is None  # status took nothing from the agent
    finally:
        centre.close()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    left = folder_state(tmp_path / "state")
    stopped = status(config)
    assert stopped["agent_running"] is False and stopped["last_receipt_at"] is not None
    assert folder_state(tmp_path / "state") == left  # no -wal or -shm of the reader's left behind
