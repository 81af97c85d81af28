"""The aggregator against a real mosquitto: store once, list, stream, reject, command, survive SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import event, select

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.ingest import Ingest
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.store import alerts as alerts_table
from s4edge.cloud_sync.messages import Alert, Command, CommandResult, Location, Status, decode, encode, topic_for
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until

REPO = Path(__file__).resolve().parents[2]


def alert(seq: int, node: str = "n1") -> Alert:
    return Alert(
        id=f"alert-{node}-{seq:05d}", node_id=node, site="s1", seq=seq, kind="smoke", severity="Severe",
        state="new", incident=f"inc-{node}-00001", location=Location(lat=52.5, lon=13.4, zone="hall"),
        title=f"smoke #{seq}",
    )  # fmt: skip


def publish(client: mqtt.Client, message: Any, retain: bool = False) -> None:
    client.publish(topic_for(message), encode(message), qos=1, retain=retain).wait_for_publish(5)


@pytest.fixture(params=["thread", "process"])
def aggregator(broker: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Aggregator]:
    """Validation and commits in the ingest's thread, or in its writer process."""
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-1", writer=request.param
    )
    with Aggregator(config) as running:
        yield running


def stream_events(url: str, into: list[tuple[str, Any]], opened: threading.Event) -> threading.Thread:
    def read() -> None:
        with httpx.stream("GET", f"{url}/api/stream", timeout=30) as response:
            event = ""
            for line in response.iter_lines():
                opened.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    into.append((event, json.loads(line[6:])))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_alerts_are_stored_once_listed_and_streamed(aggregator: Aggregator, node: mqtt.Client) -> None:
    events: list[tuple[str, Any]] = []
    opened = threading.Event()
    stream_events(aggregator.url, events, opened)
    assert opened.wait(5), "the SSE stream did not open"
    wait_until(lambda: aggregator.events.subscribers == 1, what="the SSE subscriber")
    for seq in range(3):
        publish(node, alert(seq))
    publish(node, alert(1))  # a redelivery, as a node's outbox would after a lost PUBACK
    listed = wait_until(
        lambda: (
            len(httpx.get(f"{aggregator.url}/api/alerts").json()["alerts"]) == 3
            and httpx.get(f"{aggregator.url}/api/alerts").json()["alerts"]
        ),
        what="three stored alerts",
    )
    assert [a["id"] for a in listed] == [alert(2).id, alert(1).id, alert(0).id]
    wait_until(lambda: len([e for e in events if e[0] == "alert"]) >= 3, what="three streamed alerts")
    # One publisher, one ingest writer: a wrongly streamed duplicate would come before this marker.
    marker = alert(3)
    publish(node, marker)
    wait_until(lambda: any(data["id"] == marker.id for kind, data in events if kind == "alert"), what="the marker")
    streamed = sorted(data["id"] for kind, data in events if kind == "alert" and data["id"] != marker.id)
    assert streamed == sorted(a["id"] for a in listed)
    one = httpx.get(f"{aggregator.url}/api/alerts/{alert(1).id}").json()
    assert one["title"] == "smoke #1" and one["zone"] == "hall"
    assert httpx.get(f"{aggregator.url}/api/alerts/nope-0000").status_code == 404


def test_bad_input_is_counted_by_reason_and_ingest_goes_on(aggregator: Aggregator, node: mqtt.Client) -> None:
    topic = "s4edge/v1/s1/n1/alert"
    node.publish(topic, b"{not json", qos=1).wait_for_publish(5)
    node.publish(topic, b"x" * 40_000, qos=1).wait_for_publish(5)
    node.publish("s4edge/v1/s1/n9/alert", encode(alert(1)), qos=1).wait_for_publish(5)
    unknown = json.loads(encode(alert(2)))
    unknown["jpeg"] = "no"
    node.publish(topic, json.dumps(unknown), qos=1).wait_for_publish(5)
    publish(node, alert(3))
    wait_until(lambda: aggregator.store.count_alerts() == 1, what="the valid alert")

    def rejected() -> dict[str, float]:
        text = httpx.get(f"{aggregator.url}/metrics").text
        return {m[0]: float(m[1]) for m in re.findall(r's4edge_messages_rejected_total\{reason="(\w+)"\} (\S+)', text)}

    counts = wait_until(lambda: len(rejected()) == 4 and rejected(), what="four rejection reasons")
    assert counts == {"bad_json": 1, "too_large": 1, "topic_mismatch": 1, "invalid": 1}
    assert httpx.get(f"{aggregator.url}/healthz").json()["ok"] is True


def test_retained_status_marks_the_node_online(broker: Mosquitto, node: mqtt.Client, tmp_path: Path) -> None:
    publish(node, Status(node_id="n1", site="s1", seq=0, state="online"), retain=True)
    config = AggregatorConfig(BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'a.db'}", client_id="agg-2")
    with Aggregator(config) as late:  # started after the status: the retained copy tells it
        nodes = wait_until(lambda: httpx.get(f"{late.url}/api/nodes").json()["nodes"], what="the node")
        assert nodes[0]["state"] == "online" and nodes[0]["stale"] is False
        assert "s4edge_nodes_online 1.0" in httpx.get(f"{late.url}/metrics").text


def test_a_command_reaches_the_node_and_its_result_is_shown(aggregator: Aggregator, node: mqtt.Client) -> None:
    def answer(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        command = decode(message.payload)
        assert isinstance(command, Command)
        reply = CommandResult(node_id="n1", site="s1", seq=7, cmd_id=command.id, name=command.name, ok=True,
                              detail=f"pong from {command.issuer}")  # fmt: skip
        client.publish(topic_for(reply), encode(reply), qos=1)

    node.on_message = answer
    subscribed = threading.Event()
    node.on_subscribe = lambda *_: subscribed.set()
    node.subscribe("s4edge/v1/s1/n1/cmd/+", qos=1)
    assert subscribed.wait(10), "no SUBACK: a command published before it would be lost to this node"
    publish(node, Status(node_id="n1", site="s1", seq=0, state="online"))  # commands go to nodes it knows
    wait_until(lambda: httpx.get(f"{aggregator.url}/api/nodes").json()["nodes"], what="the node known")
    sent = httpx.post(f"{aggregator.url}/api/nodes/s1/n1/commands", json={"name": "ping", "ttl_s": 60}).json()
    assert sent["published"] is True and sent["topic"] == "s4edge/v1/s1/n1/cmd/ping"
    shown = wait_until(
        lambda: httpx.get(f"{aggregator.url}/api/nodes/s1/n1/commands").json()["commands"][0]["result"],
        what="the command's result",
    )
    assert shown["ok"] is True and shown["detail"] == "pong from aggregator"
    refused = httpx.post(f"{aggregator.url}/api/nodes/s1/n1/commands", json={"name": "format_disk"})
    assert refused.status_code == 422


def _start_subprocess(broker: Mosquitto, db: Path, log: Path, workers: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "s4edge.cloud_sync.aggregator", "run", "--broker", broker.url, "--db", f"sqlite:///{db}",
            "--http", "127.0.0.1:0", "--client-id", "agg-killed", "--workers", workers]  # fmt: skip
    # a process group of its own: SIGKILL to it takes the ingest workers and writer processes too
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"), start_new_session=True)
    wait_until(lambda: "aggregator: http://" in log.read_text() or proc.poll() is not None, 20, "the aggregator")
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_loses_nothing_and_duplicates_nothing(
    broker: Mosquitto, node: mqtt.Client, tmp_path: Path, workers: str
) -> None:
    db, log = tmp_path / "agg.db", tmp_path / "agg.log"
    proc = _start_subprocess(broker, db, log, workers)
    store = Store(make_engine(f"sqlite:///{db}"))
    total = 400
    try:
        for seq in range(total // 2):
            node.publish(topic_for(alert(seq)), encode(alert(seq)), qos=1)
        wait_until(lambda: store.count_alerts() >= 20, what="the first alerts stored")
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stream: some stored and unacked, some in flight
        proc.wait(5)
        in_flight = [node.publish(topic_for(alert(s)), encode(alert(s)), qos=1) for s in range(total // 2, total)]
        for info in in_flight:
            info.wait_for_publish(5)
        assert store.count_alerts() < total
        proc = _start_subprocess(broker, db, log, workers)  # same client id: the broker kept its session
        wait_until(lambda: store.count_alerts() >= total, 30, f"all {total} alerts")
        with store.engine.connect() as conn:
            ids = [row.id for row in conn.execute(select(alerts_table.c.id))]
        assert len(ids) == total and set(ids) == {alert(s).id for s in range(total)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        store.engine.dispose()


@pytest.mark.slow
def test_falls_back_to_mqtt_311_on_a_broker_without_v5(tmp_path: Path) -> None:
    from s4edge.embedded_broker import EmbeddedBroker  # the demo's amqtt broker speaks 3.1.1 only

    with EmbeddedBroker() as amqtt_broker:
        config = AggregatorConfig(
            BrokerConfig(amqtt_broker.url), db_url=f"sqlite:///{tmp_path / 'a.db'}", client_id="agg-311"
        )
        with Aggregator(config) as aggregator:
            assert aggregator.ingest.protocol_used == mqtt.MQTTv311
            node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-311", protocol=mqtt.MQTTv311)
            node.connect("127.0.0.1", amqtt_broker.port)
            node.loop_start()
            try:
                publish(node, alert(1))
                wait_until(lambda: aggregator.store.count_alerts() == 1, what="the alert over MQTT 3.1.1")
            finally:
                node.disconnect()
                node.loop_stop()


def test_the_stream_pings_while_idle_and_forgets_a_client_that_left(broker: Mosquitto, tmp_path: Path) -> None:
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'a.db'}", client_id="agg-sse", sse_ping_s=0.2
    )
    with Aggregator(config) as aggregator, httpx.stream("GET", f"{aggregator.url}/api/stream", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines).startswith("retry: ")
        assert wait_until(lambda: next(lines) == ": ping", what="a keep-alive comment")
        assert aggregator.events.subscribers == 1
        response.close()
        wait_until(lambda: aggregator.events.subscribers == 0, what="the subscription to be dropped")


def test_a_burst_is_batched_and_a_full_in_flight_window_ends_the_linger(broker: Mosquitto, tmp_path: Path) -> None:
    """MQTT 3.1.1: the broker caps unacked deliveries (here mosquitto's max_inflight_messages
    100). Once the window is full nothing more arrives until we commit and ack, so lingering
    on for ``linger_s`` (20 s here) would stall every window; the writer must notice the quiet."""
    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    store.create_all()
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    ingest = Ingest(
        BrokerConfig(broker.url), store, IngestMetrics(), client_id="agg-burst", protocol="3.1.1", linger_s=20.0
    )
    ingest.start()
    node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-burst", protocol=mqtt.MQTTv311)
    node.max_inflight_messages_set(1000)
    node.connect(broker.host, broker.port)
    node.loop_start()
    total = 400
    try:
        infos = [node.publish(topic_for(alert(s)), encode(alert(s)), qos=1) for s in range(total)]
        for info in infos:
            info.wait_for_publish(10)
        # Several windows of 100: lingering out 20 s on the first alone would fail this wait.
        wait_until(lambda: store.count_alerts() >= total, 12, f"all {total} alerts")
        assert store.count_alerts() == total
        assert len(commits) <= total // 2, f"{len(commits)} commits for {total} alerts: not batched"
    finally:
        node.disconnect()
        node.loop_stop()
        ingest.stop()
        store.engine.dispose()


def _burst(broker: Mosquitto, total: int) -> mqtt.Client:
    node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-burst", protocol=mqtt.MQTTv311)
    node.max_inflight_messages_set(1000)
    node.connect(broker.host, broker.port)
    node.loop_start()
    for info in [node.publish(topic_for(alert(s)), encode(alert(s)), qos=1) for s in range(total)]:
        info.wait_for_publish(10)
    return node


def _failing_ingest(broker: Mosquitto, store: Store, fails: Any) -> Ingest:
    """Ingest over MQTT 3.1.1, where mosquitto delivers at most 100 unacked messages, whose
    writer raises on a batch when ``fails(items)`` says so."""
    ingest = Ingest(BrokerConfig(broker.url), store, IngestMetrics(), client_id="agg-fail", protocol="3.1.1")
    real_write = ingest.writer.write

    def write(items: Any) -> Any:
        if fails(items):
            raise RuntimeError("writer process 1234 exited (75)")
        return real_write(items)

    ingest.writer.write = write  # type: ignore[method-assign]
    return ingest


def test_a_batch_whose_commit_failed_is_tried_again_and_ingest_goes_on(broker: Mosquitto, tmp_path: Path) -> None:
    """Its writer failed twice on a batch (a store read-only, then writable again): the batch
    was left unacked, held the broker's in-flight window, and no alert was stored again until
    the aggregator was restarted."""
    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    store.create_all()
    failures = [1, 1]
    ingest = _failing_ingest(broker, store, lambda items: bool(failures) and failures.pop() is not None)
    ingest.start()
    node = _burst(broker, 300)
    try:
        wait_until(lambda: store.count_alerts() >= 300, 15, "all 300 alerts, the failed batch among them")
    finally:
        node.disconnect()
        node.loop_stop()
        ingest.stop()
        store.engine.dispose()


def test_a_batch_that_never_commits_is_let_go_and_the_rest_is_stored(broker: Mosquitto, tmp_path: Path) -> None:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    store.create_all()
    ingest = _failing_ingest(
        broker, store, lambda items: any(json.loads(payload)["seq"] == 0 for _, payload, _ in items)
    )
    ingest.start()
    node = _burst(broker, 300)
    try:
        wait_until(lambda: store.count_alerts() >= 200, 20, "the alerts after the batch that never commits")
        dropped = ingest.metrics.registry.get_sample_value("s4edge_messages_rejected_total", {"reason": "batch_failed"})
        assert dropped is not None and 0 < dropped <= 100
        assert store.count_alerts() == 300 - dropped  # those come back from their node, unreceipted
    finally:
        node.disconnect()
        node.loop_stop()
        ingest.stop()
        store.engine.dispose()


def test_a_killed_writer_process_is_replaced_and_its_batch_written_again(
    broker: Mosquitto, node: mqtt.Client, tmp_path: Path
) -> None:
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-w", writer="process"
    )
    total = 600
    with Aggregator(config) as running:
        child = running.ingest._child
        assert child is not None
        first_pid = child.pid
        for seq in range(total):
            node.publish(topic_for(alert(seq)), encode(alert(seq)), qos=1)
            if seq == 100:
                wait_until(lambda: running.store.count_alerts() > 0, what="the first batch")
                os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: running.store.count_alerts() >= total, 30, f"all {total} alerts")
        assert child.pid != first_pid
        ids = [row.id for row in running.store.engine.connect().execute(select(alerts_table.c.id))]
    assert len(ids) == total and set(ids) == {alert(s).id for s in range(total)}


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_bug_while_acking_a_stored_batch_does_not_stop_ingest(
    broker: Mosquitto, node: mqtt.Client, tmp_path: Path, writer: str
) -> None:
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=f"sqlite:///{tmp_path / 'agg.db'}", client_id="agg-b", writer=writer
    )
    with Aggregator(config) as running:
        ingest = running.ingest
        real_count, failures = ingest._count, [1]

        def count_once_broken(outcome: Any) -> None:
            if failures:
                failures.clear()
                raise RuntimeError("a bug while finishing a batch")
            real_count(outcome)

        ingest._count = count_once_broken  # type: ignore[method-assign]
        publish(node, alert(1))
        wait_until(
            lambda: not failures and running.store.count_alerts() == 1, what="the first batch, finished with a bug"
        )
        publish(node, alert(2))
        registry = running.metrics.registry
        wait_until(
            lambda: registry.get_sample_value("s4edge_messages_stored_total", {"type": "alert"}) == 1,
            what="the next batch, stored and counted",
        )
    assert running.store.count_alerts() == 2


def test_stop_under_a_steady_stream_takes_no_more_and_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    # paho delivers while ingest stops: the writer took each arrival and, never finding the
    # queue empty, outlived stop(); what arrives after stop() is left for the broker to give again
    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    store.create_all()
    node = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="steady", protocol=mqtt.MQTTv5)
    node.connect(broker.host, broker.port)
    node.loop_start()
    sent, streaming = [], threading.Event()

    def stream() -> None:
        while not streaming.wait(0.01):
            message = alert(len(sent))
            node.publish(topic_for(message), encode(message), qos=1)
            sent.append(message.id)

    ingest = Ingest(BrokerConfig(broker.url), store, IngestMetrics(store.count_online), client_id="agg-stop")
    ingest.start()
    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: store.count_alerts() >= 20, 10, "alerts flowing")
        ingest.stop()
        assert ingest._writer is not None and not ingest._writer.is_alive()
        later = Ingest(BrokerConfig(broker.url), store, IngestMetrics(store.count_online), client_id="agg-stop")
        later.start()  # the same session: what the first one left unacked comes now
        streaming.set()
        feeder.join()
        wait_until(lambda: store.count_alerts() == len(sent), 15, "every alert stored")
        later.stop()
    finally:
        streaming.set()
        node.loop_stop()


def test_a_broker_that_crashes_again_and_again_is_not_taken_for_a_session_takeover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # its connections closed soon after they opened, three in a row, and the aggregator blamed
    # "another client taking its session over" and two aggregators sharing a client id
    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    store.create_all()
    with Mosquitto(tmp_path / "mq") as crashing:
        ingest = Ingest(BrokerConfig(crashing.url), store, IngestMetrics(store.count_online), client_id="agg-crash")
        ingest.start()
        try:
            for _ in range(4):
                crashing.kill()
                wait_until(lambda: not ingest.connected, 10, "the loss seen")
                time.sleep(1.5)  # down long enough for a reconnection to fail
                crashing.start()
                wait_until(lambda: ingest.connected, 15, "connected again")
        finally:
            ingest.stop()
    assert "taking its session over" not in caplog.text
