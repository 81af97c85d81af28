"""With the writer in a process (``aggregator run``'s default), the NG112 forwarder runs in
a process of its own: calls still go, the dashboard still hears of every change, the
operator still confirms through the API, and a forwarder killed is replaced without losing
or repeating a call (real mosquitto, the built-in PSAP receiver, SQLite)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import Alert, Location, encode, topic_for
from s4edge.cloud_sync.ng112.policy import Ng112Config, SitePolicy
from s4edge.cloud_sync.ng112.process import ForwarderProcess
from s4edge.cloud_sync.ng112.receiver import PsapReceiver, ReceivedCall
from s4edge.cloud_sync.ng112.service import attach
from s4edge.testing import Mosquitto, eventually


@pytest.fixture
def psap() -> Iterator[tuple[str, list[ReceivedCall]]]:
    calls: list[ReceivedCall] = []
    receiver = PsapReceiver("tcp:127.0.0.1:0", calls.append).start()
    host, port = receiver.address
    yield f"sip:psap@{host}:{port};transport=tcp", calls
    receiver.stop()


def gas(incident: str, site: str = "plaza") -> Alert:
    return Alert(
        node_id="n1", site=site, seq=1, kind="gas", severity="Extreme", state="new",
        incident=incident, location=Location(lat=48.2, lon=16.37, zone="gate"),
    )  # fmt: skip


def aggregator_with_ng112(broker: Mosquitto, tmp_path: Path, config: Ng112Config) -> tuple[Aggregator, Any]:
    aggregator = Aggregator(
        AggregatorConfig(
            BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-fp", writer="process"
        )
    )
    return aggregator, attach(aggregator, config)


def test_the_forwarder_runs_in_its_own_process_and_the_dashboard_and_operator_still_see_it(
    broker: Mosquitto, node: mqtt.Client, psap: tuple[str, list[ReceivedCall]], tmp_path: Path
) -> None:
    psap_uri, calls = psap
    config = Ng112Config(psap=psap_uri, t1_s=0.05, sites={"mall": SitePolicy(mode="confirm")})
    aggregator, forwarder = aggregator_with_ng112(broker, tmp_path, config)
    published: list[tuple[str, dict[str, Any]]] = []
    publish = aggregator.events.publish
    aggregator.events.publish = lambda event, data: (published.append((event, data)), publish(event, data))  # type: ignore[method-assign]
    aggregator.start()
    try:
        assert isinstance(forwarder, ForwarderProcess)
        assert forwarder.pid is not None and forwarder.pid != os.getpid() and forwarder.alive()
        auto = gas("inc-auto-0001")
        node.publish(topic_for(auto), encode(auto), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=auto.id)
        assert row is not None and row["state"] == "delivered", row
        states = [d["state"] for e, d in published if e == "ng112" and d["alert_id"] == auto.id]
        assert states[0] == "pending" and states[-1] == "delivered", states

        held = gas("inc-held-0002", site="mall")  # this site's calls wait for an operator
        node.publish(topic_for(held), encode(held), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("awaiting_confirm",), 20, alert_id=held.id)
        assert row is not None and row["state"] == "awaiting_confirm", row
        answer = httpx.post(f"{aggregator.url}/ng112/forwards/{row['id']}/confirm", json={"by": "carol"})
        assert answer.status_code == 200 and answer.json()["decided_by"] == "carol"
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=held.id)
        assert row is not None and row["state"] == "delivered", row
        assert sorted(call.cap["incidents"] or "" for call in calls) == ["inc-auto-0001", "inc-held-0002"]
    finally:
        forwarder.stop()
        aggregator.stop()
    assert forwarder.pid is not None and not forwarder.alive()


def test_a_forwarder_process_killed_is_replaced_and_the_next_call_goes_once(
    broker: Mosquitto, node: mqtt.Client, psap: tuple[str, list[ReceivedCall]], tmp_path: Path
) -> None:
    psap_uri, calls = psap
    aggregator, forwarder = aggregator_with_ng112(broker, tmp_path, Ng112Config(psap=psap_uri, t1_s=0.05))
    aggregator.start()
    try:
        first = forwarder.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: forwarder.restarts == 1 and forwarder.pid != first, 20, "a new forwarder process")
        alert = gas("inc-after-kill-0003")
        node.publish(topic_for(alert), encode(alert), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=alert.id)
        assert row is not None and row["state"] == "delivered" and row["attempts"] == 1, row
        assert [call.cap["incidents"] for call in calls] == ["inc-after-kill-0003"]
    finally:
        forwarder.stop()
        aggregator.stop()
