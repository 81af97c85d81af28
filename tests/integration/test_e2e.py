"""The spine end to end: scenario → node → outbox → real mosquitto → aggregator →
/api/alerts and the live stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import new_id
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_for

pytestmark = pytest.mark.slow




@pytest.fixture
def aggregator(broker: Mosquitto, tmp_path: Path) -> Iterator[Aggregator]:
    config = AggregatorConfig(
        broker=BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="e2e-aggregator"
    )
    with Aggregator(config) as running:
        yield running


def node_config(broker: Mosquitto, tmp_path: Path) -> dict[str, Any]:
    scenario = tmp_path / "leak.yaml"
    # methane rises through 10 %LEL (Moderate) to 45 (Severe), then falls back to zero
    scenario.write_text(
        "name: short leak\nduration_s: 3\nsignals:\n  ch4: [[0, 0], [0.6, 15], [1.2, 45], [2.0, 45], [2.6, 0]]\n"
    )
    return {
        "node_id": "e2e-node",
        "site": "plaza",
        "location": {"lat": 52.52, "lon": 13.405, "zone": "entrance"},
        "mqtt": {"url": broker.url},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "alerts": {"update_interval_s": 0},
        "sources": [
            {
                "type": "scenario",
                "name": "leak",
                "file": str(scenario),
                "period_s": 0.05,
                "sensors": [
                    {
                        "signal": "ch4",
                        "kind": "gas",
                        "quantity": "methane",
                        "unit": "%LEL",
                        "levels": [
                            {"on_at": 10, "severity": "Moderate", "hysteresis": 2},
                            {"on_at": 40, "severity": "Severe", "hysteresis": 4},
                        ],
                    }
                ],
            }
        ],
    }


def read_stream(url: str, events: list[dict[str, Any]], ready: threading.Event, stop: threading.Event) -> None:
    with httpx.Client(timeout=None) as client, client.stream("GET", url) as response:
        ready.set()
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "alert":
                events.append(json.loads(line.removeprefix("data: ")))
            if stop.is_set():
                return


def test_an_incident_travels_from_scenario_to_the_operators_view(
    broker: Mosquitto, aggregator: Aggregator, tmp_path: Path
) -> None:
    streamed: list[dict[str, Any]] = []
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(
        target=read_stream, args=(f"{aggregator.url}/api/stream", streamed, ready, stop), daemon=True
    )
    reader.start()
    assert ready.wait(10)

    node = Node(parse_config(node_config(broker, tmp_path)))
    node.start()
    try:

        def incident_closed() -> list[dict[str, Any]] | None:
            page = httpx.get(f"{aggregator.url}/api/alerts", params={"node": "e2e-node", "limit": 100}).json()
            alerts: list[dict[str, Any]] = page["alerts"]
            return alerts if any(a["state"] == "end" for a in alerts) else None

        alerts = wait_for(incident_closed, what="the incident's end at the aggregator")
    finally:
        node.close()

    states = [a["state"] for a in sorted(alerts, key=lambda a: a["seq"])]
    assert states[0] == "new" and states[-1] == "end" and "update" in states
    assert len({a["incident"] for a in alerts}) == 1, "new, update and end share one incident id"
    assert len({a["id"] for a in alerts}) == len(alerts), "each alert is stored once"
    assert {a["severity"] for a in alerts} >= {"Moderate", "Severe"}
    assert alerts[0]["node_id"] == "e2e-node" and alerts[0]["site"] == "plaza"

    wait_for(lambda: {a["id"] for a in alerts} <= {e["id"] for e in streamed}, what="every alert on the live stream")
    stop.set()

    nodes = httpx.get(f"{aggregator.url}/api/nodes").json()["nodes"]
    assert [n["node_id"] for n in nodes] == ["e2e-node"]


def test_broker_down_for_ten_seconds_loses_nothing_in_the_operators_view(
    broker: Mosquitto, aggregator: Aggregator, tmp_path: Path
) -> None:
    """The node keeps raising alerts while the broker is dead for 10 s; afterwards the
    aggregator holds every one exactly once, in per-node seq order."""
    config = node_config(broker, tmp_path)
    config["sources"] = []
    node = Node(parse_config(config))
    node.start()
    raised: list[str] = []
    try:
        wait_for(lambda: node.uplink.connected.is_set(), what="the node's connection")

        def burst(n: int) -> None:
            for _ in range(n):
                draft = AlertDraft(kind="smoke", severity="Severe", state="new", incident=new_id())
                raised.append(node.publish_alert(draft).id)

        burst(20)
        wait_for(lambda: aggregator.store.count_alerts() == 20, what="the first burst at the aggregator")
        # mosquitto persists sessions every autosave_interval (1 s), not per message: wait
        # until a save that includes the aggregator's session, as a broker up for more than
        # a second would have, before pulling the plug
        saved_after = time.time()
        database = broker.workdir / "mosquitto.db"
        wait_for(lambda: database.exists() and database.stat().st_mtime > saved_after, what="a broker autosave")
        broker.kill()
        outage_ends = time.monotonic() + 10
        while time.monotonic() < outage_ends:  # the node goes on raising alerts, into its outbox
            burst(5)
            time.sleep(0.5)
        broker.start()
        burst(20)

        def stored() -> list[dict[str, Any]] | None:
            page = httpx.get(f"{aggregator.url}/api/alerts", params={"node": "e2e-node", "limit": 1000}).json()
            return page["alerts"] if len(page["alerts"]) >= len(raised) else None

        alerts = wait_for(stored, timeout=90, what=f"all {len(raised)} alerts at the aggregator")
    finally:
        node.close()

    assert sorted(a["id"] for a in alerts) == sorted(raised), "every alert once, none twice"
    by_seq = [a["id"] for a in sorted(alerts, key=lambda a: a["seq"])]
    assert by_seq == raised, "per-node seq order is the order the node raised them"
