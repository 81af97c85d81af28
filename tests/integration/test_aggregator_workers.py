"""Ingest workers (``aggregator run --workers N``, docs/architecture.md "Ingest workers"): N
processes in one shared-subscription group commit to one store; every alert is stored once and
receipted, streamed and counted by the one parent, and a worker killed with SIGKILL loses
nothing and is started again. Real mosquitto, a real node with its outbox, SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import POSTGRES
from sqlalchemy import select

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.store import alerts as alerts_table
from s4edge.cloud_sync.aggregator.workers import IngestWorkers
from s4edge.cloud_sync.messages import (
    Alert,
    Command,
    Location,
    Receipt,
    Status,
    decode_from,
    encode,
    topic,
    topic_for,
)
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.receiver import PsapReceiver, ReceivedCall
from s4edge.cloud_sync.ng112.service import attach
from s4edge.edge.alerts import AlertDraft
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until
from s4edge.testing.fleet import SITE as FLEET_SITE
from s4edge.testing.fleet import Fleet, build_fleet, cli, login
from s4edge.testing.listener import Listener

SITE, NODE = "plaza", "worker-node"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def node_config(broker: Mosquitto, tmp_path: Path) -> Any:
    return parse_config(
        {
            "node_id": NODE,
            "site": SITE,
            "location": {"lat": 52.52, "lon": 13.405},
            "mqtt": {"url": broker.url, "keepalive_s": 5},
            "outbox": {"path": str(tmp_path / "outbox.db"), "receipt_timeout_s": 2.0, "receipt_backoff_max_s": 4.0},
            "sources": [],
        }
    )


@pytest.fixture(params=["sqlite-process", "postgresql-thread"])
def config(broker: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest) -> AggregatorConfig:
    """Two workers; SQLite with a writer process in each, PostgreSQL with a writer thread."""
    store, writer = request.param.split("-")
    db: dict[str, Any] = {"db_url": f"sqlite:///{tmp_path / 'agg.db'}"}
    if store == "postgresql":
        db = {"db_url": POSTGRES, "db_schema": request.getfixturevalue("pg_schema")}
    return AggregatorConfig(BrokerConfig(broker.url), client_id="agg-workers", writer=writer, workers=2, **db)


@pytest.fixture
def node(broker: Mosquitto, tmp_path: Path) -> Iterator[Node]:
    running = Node(node_config(broker, tmp_path))
    running.start()
    yield running
    running.close(flush_s=0)


def workers_of(aggregator: Aggregator) -> IngestWorkers:
    assert isinstance(aggregator.ingest, IngestWorkers)
    return aggregator.ingest


def stored_ids(aggregator: Aggregator) -> list[str]:
    with aggregator.store.engine.connect() as conn:
        return [row.id for row in conn.execute(select(alerts_table.c.id))]


def metric(aggregator: Aggregator, sample: str) -> float:
    for line in httpx.get(f"{aggregator.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def draft(i: int) -> AlertDraft:
    return AlertDraft(kind="smoke", severity="Severe", state="new", incident=f"incident-{i:05d}")


def stream_alerts(url: str, into: list[str], opened: threading.Event) -> None:
    def read() -> None:
        with httpx.stream("GET", f"{url}/api/stream", timeout=60) as response:
            event = ""
            for line in response.iter_lines():
                opened.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "alert":
                    into.append(json.loads(line[6:])["id"])

    threading.Thread(target=read, daemon=True).start()


def issuers(listener: Listener) -> set[str]:
    found = set()
    for topic_name, payload in list(listener.got):
        receipt = decode_from(topic_name, payload)
        assert isinstance(receipt, Receipt)
        found.add(receipt.issuer)
    return found


def test_two_workers_store_each_alert_once_receipt_stream_and_count_it(
    broker: Mosquitto, config: AggregatorConfig, node: Node
) -> None:
    listener = Listener(broker, topic(SITE, NODE, "receipt"))
    streamed: list[str] = []
    opened = threading.Event()
    try:
        with Aggregator(config) as aggregator:
            workers = workers_of(aggregator)
            stream_alerts(aggregator.url, streamed, opened)
            assert opened.wait(10), "the SSE stream did not open"
            wait_until(lambda: all(w.live for w in workers.workers), what="the workers told someone watches")
            wait_until(node.uplink.connected.is_set, what="the node's connection")
            created = [node.publish_alert(draft(i)).id for i in range(60)]
            wait_until(lambda: node.outbox.depth() == 0, 60, "a receipt for every alert")
            assert sorted(stored_ids(aggregator)) == sorted(created), "every alert stored exactly once"
            # Both workers took part: each confirms what it committed, under its own client id.
            assert issuers(listener) == {"agg-workers-w0", "agg-workers-w1"}
            wait_until(lambda: sorted(set(streamed)) == sorted(created), what="every alert on the live stream")
            assert len(streamed) == len(created), "a resend is stored once and streamed once"
            wait_until(
                lambda: metric(aggregator, 's4edge_messages_stored_total{type="alert"}') == len(created),
                what="/metrics counting every alert of both workers",
            )
            assert metric(aggregator, "s4edge_ingest_latency_seconds_count") >= len(created)
            assert httpx.get(f"{aggregator.url}/healthz").json() == {"ok": True, "store": "ok", "broker": "ok"}
    finally:
        listener.close()


def test_a_killed_worker_loses_nothing_and_is_started_again(
    broker: Mosquitto, config: AggregatorConfig, node: Node
) -> None:
    with Aggregator(config) as aggregator:
        workers = workers_of(aggregator)
        victim = workers.workers[1]
        first_pid = victim.pid
        assert first_pid is not None
        wait_until(node.uplink.connected.is_set, what="the node's connection")
        created = [node.publish_alert(draft(i)).id for i in range(40)]
        wait_until(lambda: len(stored_ids(aggregator)) >= 10, what="the first alerts stored")
        os.kill(first_pid, signal.SIGKILL)
        created += [node.publish_alert(draft(i)).id for i in range(40, 200)]
        wait_until(lambda: node.outbox.depth() == 0, 90, "a receipt for every alert")
        assert sorted(stored_ids(aggregator)) == sorted(created), "every alert stored exactly once"
        wait_until(lambda: victim.restarts == 1 and workers.connected, what="the killed worker started again")
        assert victim.pid != first_pid
        assert metric(aggregator, "s4edge_ingest_worker_restarts_total") == 1
        # What the dead worker had counted stays in the sums: none of the alerts goes uncounted
        # but those it stored after its last report (at most REPORT_MIN_S before the kill).
        wait_until(
            lambda: metric(aggregator, 's4edge_messages_stored_total{type="alert"}') >= len(created) - 40,
            what="/metrics keeping the dead worker's counts",
        )


def test_commands_go_out_through_a_worker(broker: Mosquitto, tmp_path: Path) -> None:
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-cmd", workers=2
    )
    listener = Listener(broker, topic(SITE, NODE, "cmd/#"))
    try:
        with Aggregator(config) as aggregator:
            with aggregator.store.engine.begin() as conn:  # commands go to nodes it knows
                aggregator.store.record_status(conn, Status(node_id=NODE, site=SITE, seq=0, state="online"), T0)
            answer = httpx.post(f"{aggregator.url}/api/nodes/{SITE}/{NODE}/commands", json={"name": "ping"})
            assert answer.status_code == 202 and answer.json()["published"] is True
            wait_until(lambda: len(listener.got) == 1, what="the command at the node's topic")
            command = decode_from(*listener.got[0])
            assert isinstance(command, Command) and command.name == "ping"
    finally:
        listener.close()


# -- on the fleet's own broker, which makes a client's username its client id ------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = build_fleet(tmp_path)
    cli("fleet", "aggregator-credentials", "--fleet-dir", built.folder, "--name", "ingest",
        "--workers", "2", "--out", tmp_path / "ingest")  # fmt: skip
    built.reconfigure()  # the broker learns the new identities
    yield built
    built.broker.stop()


def fleet_config(fleet: Fleet, tmp_path: Path, username: str, password: str) -> AggregatorConfig:
    broker = BrokerConfig(
        f"mqtts://127.0.0.1:{fleet.port}", ca_file=str(fleet.ca), username=username, password=password
    )
    return AggregatorConfig(broker, db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="fleet-agg", workers=2)


def test_workers_with_an_identity_each_from_aggregator_credentials_ingest_side_by_side(
    fleet: Fleet, tmp_path: Path
) -> None:
    password = (tmp_path / "ingest" / "aggregator-workers.password").read_text().strip()
    node = login(fleet, "node-a")
    try:
        with Aggregator(fleet_config(fleet, tmp_path, "ingest-w{worker}", password)) as aggregator:
            workers = workers_of(aggregator)
            alert = Alert(
                node_id="node-a", site=FLEET_SITE, seq=1, kind="smoke", severity="Severe", state="new",
                incident="incident-fleet", location=Location(lat=40.41, lon=-3.7),
            )  # fmt: skip
            assert node.publish(topic_for(alert), encode(alert)) == 0
            wait_until(lambda: aggregator.store.count_alerts() == 1, what="the alert through the fleet's broker")
            assert workers.connected and workers.restarts == 0
            assert "already connected" not in fleet.broker.log.read_text(), "a worker took over another's session"
    finally:
        node.close()


def test_workers_sharing_one_identity_say_what_is_wrong(
    fleet: Fleet, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Both sign in as "aggregator": the broker makes both client ids "aggregator" and each
    connection takes the other's session over, again and again."""
    with Aggregator(fleet_config(fleet, tmp_path, "aggregator", fleet.password("aggregator"))):
        wait_until(lambda: "share a client id" in capfd.readouterr().err, what="the workers' error")


def test_a_forwarded_alert_a_worker_commits_wakes_the_parents_forwarder_and_calls_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    calls: list[ReceivedCall] = []
    receiver = PsapReceiver("tcp:127.0.0.1:0", calls.append).start()
    host, port = receiver.address
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-ng112", workers=2
    )
    aggregator = Aggregator(config)
    forwarder = attach(aggregator, Ng112Config(psap=f"sip:psap@{host}:{port};transport=tcp", t1_s=0.05))
    wakes: list[int] = []
    workers_of(aggregator).on_jobs = lambda: (wakes.append(1), forwarder.wake())
    aggregator.start()
    sender = Listener(broker, topic(SITE, NODE, "cmd/#"))  # any client will do to publish
    try:
        gas = Alert(
            node_id=NODE, site=SITE, seq=1, kind="gas", severity="Extreme", state="new",
            incident="incident-gas-0001", location=Location(lat=48.2, lon=16.37, zone="boiler room"),
        )  # fmt: skip
        sender.client.publish(topic_for(gas), encode(gas), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=gas.id)
        assert row is not None and row["state"] == "delivered", row
        assert wakes, "the worker's commit woke the parent's forwarder"
        assert [call.cap["incidents"] for call in calls] == ["incident-gas-0001"]
    finally:
        sender.close()
        forwarder.stop()
        aggregator.stop()
        receiver.stop()


def test_workers_stopped_with_their_parent_by_sigterm_are_not_started_again(
    broker: Mosquitto, config: AggregatorConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # systemd's stop sends SIGTERM to every process of the service: each worker committed and
    # exited, and the parent, not yet stopping, logged an ERROR per worker and started new ones
    aggregator = Aggregator(config).start()
    workers = workers_of(aggregator)
    pids = [worker.pid for worker in workers.workers]
    try:
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not workers.connected, what="the workers stopped")
    finally:
        aggregator.stop()  # as the parent does once its own SIGTERM is handled
    assert [worker.restarts for worker in workers.workers] == [0, 0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "starting another" in r.getMessage()]
