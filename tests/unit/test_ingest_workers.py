"""The pieces of ingest workers that need no broker: paho reading in blocks and acknowledging in
one write (``paho_tuning``), the sums of the workers' metrics, and what each worker is told."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics, WorkerTotals, snapshot
from s4edge.cloud_sync.aggregator.paho_tuning import ack_all, tunable, tune
from s4edge.cloud_sync.aggregator.workers import WorkerSpec, default_workers, one_identity, worker_client_id
from s4edge.cloud_sync.aggregator.writer import StoreSpec


class ScriptedSocket:
    """What the broker has sent so far, in arrivals; ``recv`` raises BlockingIOError between them
    as a non-blocking socket does."""

    def __init__(self) -> None:
        self.arrived = bytearray()
        self.sent = bytearray()

    def arrive(self, data: bytes) -> None:
        self.arrived += data

    def recv(self, size: int) -> bytes:
        if not self.arrived:
            raise BlockingIOError
        out = bytes(self.arrived[:size])
        del self.arrived[:size]
        return out

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        pass


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n // 128, n % 128
        out.append(digit | (128 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(mid: int, payload: bytes) -> bytes:
    """An MQTT 5 PUBLISH at QoS 1 (§3.3): topic, packet id, no properties, payload."""
    topic = b"s4edge/v1/plaza/n1/alert"
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + varint(0) + payload
    return bytes([0x32]) + varint(len(body)) + body


def client_on(sock: ScriptedSocket, got: list[tuple[int, bytes]]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5, manual_ack=True)
    client.on_message = lambda _c, _u, m: got.append((m.mid, bytes(m.payload)))
    client._sock = sock  # type: ignore[assignment]
    return client


def test_the_installed_paho_can_be_tuned() -> None:
    """If a paho upgrade renames what ``paho_tuning`` uses, ingest falls back to stock reads and
    acks; this says so."""
    assert tunable(mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    cuts=st.lists(st.integers(1, 2000), min_size=1, max_size=30),
)
def test_block_reads_hand_paho_every_whole_packet_wherever_the_stream_is_cut(sizes: list[int], cuts: list[int]) -> None:
    """Every packet arrives once and in order, and after each read every whole packet that has
    arrived has been handled: none waits in the buffer for a select that would not wake."""
    packets = [publish_packet(i + 1, os.urandom(size)) for i, size in enumerate(sizes)]
    stream = b"".join(packets)
    ends = [sum(len(p) for p in packets[: i + 1]) for i in range(len(packets))]
    sock, got = ScriptedSocket(), []
    client = client_on(sock, got)
    assert tune(client)
    offset = 0
    for cut in [*cuts, len(stream)]:
        sock.arrive(stream[offset : offset + cut])
        offset = min(offset + cut, len(stream))
        client.loop_read()
        assert len(got) == sum(1 for end in ends if end <= offset)
    assert got == [(i + 1, p[-size:] if size else b"") for i, (p, size) in enumerate(zip(packets, sizes, strict=True))]


def test_a_new_connection_forgets_what_the_old_one_left_in_the_buffer() -> None:
    old, got = ScriptedSocket(), []
    client = client_on(old, got)
    tune(client)
    old.arrive(publish_packet(1, b"x" * 50)[:20])  # half a packet, then the connection drops
    client.loop_read()
    client._in_packet = {  # as paho resets it on reconnect
        "command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
        "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0,
    }  # fmt: skip
    new = ScriptedSocket()
    client._sock = new  # type: ignore[assignment]
    new.arrive(publish_packet(7, b"fresh"))
    client.loop_read()
    assert got == [(7, b"fresh")]


def publish(
    header: int, mid: int | None, properties: bytes, payload: bytes, topic: bytes = b"s4edge/v1/p/n1/alert"
) -> bytes:
    """An MQTT 5 PUBLISH (§3.3) with these fixed-header flags, properties and payload."""
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if mid is not None else b"")
    body += varint(len(properties)) + properties + payload
    return bytes([header]) + varint(len(body)) + body


EXPIRY_AND_USER = (
    bytes([2]) + struct.pack("!I", 60) + bytes([38]) + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
)


@pytest.mark.parametrize(
    "packet",
    [
        publish(0x32, 9, b"", b'{"a": 1}'),  # QoS 1, no properties: the fast path
        publish(0x30, None, b"", b"qos0"),  # QoS 0
        publish(0x3B, 10, b"", b"dup and retain"),  # QoS 1, DUP and RETAIN set
        publish(0x32, 11, b"", b""),  # no payload
        publish(0x32, 12, b"", b"x" * 20000),  # a three-byte remaining length
        publish(0x32, 12, EXPIRY_AND_USER, b"with properties"),  # paho's own path
        publish(0x32, 13, bytes([35]) + struct.pack("!H", 4), b"alias", topic=b"t/x"),  # a topic alias
        publish(0x34, 14, b"", b"qos2"),  # QoS 2: paho's own path
        bytes.fromhex("40020001"),  # a PUBACK for a message we did not send
        bytes.fromhex("32ffffffff01") + b"x" * 8,  # a remaining length of five bytes: malformed (§1.5.5)
    ],
)
def test_a_packet_is_handled_as_stock_paho_handles_it(packet: bytes) -> None:
    """After a first PUBLISH in the same read, so that the tuned client frames this packet from
    its buffer: the same messages to ``on_message``, the same bytes written back (PUBACK,
    PUBREC), the same result of the read."""

    def handled(tuned: bool) -> tuple[list[tuple], bytes, int]:
        sock, got = ScriptedSocket(), []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
        client.on_message = lambda _c, _u, m: got.append(
            (m.mid, m.topic, bytes(m.payload), m.qos, m.retain, m.dup, m.properties.json())
        )
        client._sock = sock  # type: ignore[assignment]
        if tuned:
            assert tune(client)
        sock.arrive(publish(0x32, 1, b"", b"first") + packet)
        failed = 0
        for _ in range(4):  # stock paho handles one packet a call
            failed = failed or int(client.loop_read())
        while client._sock is not None and client.want_write():
            client.loop_write()
        return got, bytes(sock.sent), failed

    stock, tuned = handled(False), handled(True)
    assert stock[0][0][2] == b"first"
    assert tuned == stock


def test_a_callback_that_raises_leaves_the_stream_in_step() -> None:
    sock, got = ScriptedSocket(), []

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        if m.mid == 2:  # framed from the buffer: the first went through paho's own reader
            raise RuntimeError("a bug in the callback")
        got.append((m.mid, bytes(m.payload)))

    client = client_on(sock, [])
    client.on_message = on_message
    client.suppress_exceptions = False
    assert tune(client)
    sock.arrive(publish_packet(1, b"one") + publish_packet(2, b"two") + publish_packet(3, b"three"))
    with pytest.raises(RuntimeError):
        client.loop_read()
    client.loop_read()
    assert got == [(1, b"one"), (3, b"three")]


def test_a_batch_of_acks_is_one_write_of_back_to_back_pubacks() -> None:
    sock = ScriptedSocket()
    client = client_on(sock, [])
    ack_all(client, [1, 2, 300])
    # MQTT 5.0 §3.4: PUBACK is 0x40, remaining length 2, the packet identifier (no reason code: success)
    assert bytes(sock.sent) == bytes.fromhex("40020001400200024002012c")
    ack_all(client, [])
    assert len(sock.sent) == 12


def counted(stored: int, latency: float) -> IngestMetrics:
    metrics = IngestMetrics()
    metrics.stored.labels("alert").inc(stored)
    metrics.latency.observe(latency)
    return metrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_the_parent_shows_the_sum_of_its_workers_and_keeps_a_dead_ones_counts() -> None:
    parent = IngestMetrics()
    totals = WorkerTotals()
    parent.count_workers(totals)
    totals.update(0, snapshot(counted(5, 0.003)))
    totals.update(1, snapshot(counted(7, 0.3)))
    registry = parent.registry
    assert sample(registry, "s4edge_messages_stored_total", type="alert") == 12
    assert sample(registry, "s4edge_ingest_latency_seconds_count") == 2
    assert sample(registry, "s4edge_ingest_latency_seconds_bucket", le="0.005") == 1
    totals.retire(1)  # worker 1 died; the one started in its place counts from zero
    totals.update(1, snapshot(counted(1, 0.003)))
    assert sample(registry, "s4edge_messages_stored_total", type="alert") == 13
    assert sample(registry, "s4edge_ingest_latency_seconds_bucket", le="0.005") == 2
    later = counted(0, 0.0)  # created after all of the above: the sum's _created is the earliest
    assert (sample(registry, "s4edge_messages_stored_created", type="alert") or 0) < (
        sample(later.registry, "s4edge_messages_stored_created", type="alert") or 0
    )
    text = generate_latest(registry).decode()
    assert text.count("# TYPE s4edge_messages_stored_total counter") == 1
    assert "s4edge_nodes_online" in text and "s4edge_ingest_worker_restarts_total" in text


def test_each_worker_gets_its_client_id_and_its_own_identity_where_the_username_asks() -> None:
    broker = BrokerConfig(
        "mqtts://broker.example:8883", username="aggregator-w{worker}", password="secret",
        cert_file="/etc/s4edge/agg-w{worker}.crt", key_file="/etc/s4edge/agg-w{worker}.key",
    )  # fmt: skip
    spec = WorkerSpec(broker, StoreSpec("sqlite:///a.db"), "aggregator-host", "s4edge-aggregator-host")
    told = spec.for_worker(3, live=True)
    assert told["client_id"] == "aggregator-host-w3"
    assert told["broker"]["username"] == "aggregator-w3" and told["broker"]["password"] == "secret"
    assert told["broker"]["cert_file"] == "/etc/s4edge/agg-w3.crt"
    assert told["broker"]["key_file"] == "/etc/s4edge/agg-w3.key"
    assert told["group"] == "s4edge-aggregator-host" and told["live"] is True
    plain = WorkerSpec(BrokerConfig("mqtt://b:1883", username="aggregator"), StoreSpec("sqlite:///a.db"), "a", "g")
    assert plain.for_worker(1, live=False)["broker"]["username"] == "aggregator"  # no placeholder: shared
    assert len(worker_client_id("x" * 64, 12)) == 64


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///a.db", min(2, os.cpu_count() or 1)),
        ("postgresql://postgres@127.0.0.1:5432/test", os.cpu_count() or 1),
    ],
)
def test_the_default_is_a_worker_per_core_on_postgresql_and_two_on_sqlite(url: str, expected: int) -> None:
    assert default_workers(url) == expected


def test_workers_need_mqtt_5() -> None:
    argv = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--workers", "2", "--protocol", "3.1.1"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "MQTT 5 shared subscriptions" in result.output


def test_workers_that_cannot_reach_the_broker_stop_it_with_the_reason(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    argv = [
        "aggregator",
        "run",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--db",
        db,
        "--http",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    assert "aggregator did not start: could not connect to mqtt://127.0.0.1:1" in result.output


def test_a_single_broker_identity_keeps_the_default_to_one_ingest() -> None:
    """The fleet's broker makes the username the client id: a default that started workers under
    one username would have them take each other's session over, so it does not."""
    assert one_identity(BrokerConfig("mqtts://b:8883", username="aggregator"))
    assert one_identity(BrokerConfig("mqtts://aggregator:pw@b:8883"))
    assert one_identity(BrokerConfig("mqtts://b:8883", cert_file="aggregator.crt", key_file="aggregator.key"))
    assert not one_identity(BrokerConfig("mqtts://b:8883", username="aggregator-w{worker}"))
    assert not one_identity(BrokerConfig("mqtts://b:8883", cert_file="aggregator-w{worker}.crt"))
    assert not one_identity(BrokerConfig("mqtt://127.0.0.1:1883"))  # anonymous: the client ids stay apart


def test_aggregator_run_with_one_identity_says_why_it_ingests_in_one_process(tmp_path: Path) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the default is one ingest anyway")
    db = f"sqlite:///{tmp_path / 'agg.db'}"
    argv = ["aggregator", "run", "--broker", "mqtt://127.0.0.1:1", "--db", db, "--http", "127.0.0.1:0"]
    result = CliRunner().invoke(app, [*argv, "--username", "aggregator", "--password", "x"])
    assert "note: one broker identity for every ingest worker" in result.output
    assert result.exit_code == 1 and "could not connect to mqtt://127.0.0.1:1" in result.output


def test_the_workers_share_a_group_no_node_can_guess(tmp_path: Path) -> None:
    # '$share/s4edge-<host>/…' could be joined by any node with its own credentials: the broker
    # gave it its turn of each message, which its ACL forbids it to read, and dropped it
    from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
    from s4edge.cloud_sync.aggregator.store import Store, make_engine
    from s4edge.cloud_sync.aggregator.workers import IngestWorkers, default_group

    db = f"sqlite:///{tmp_path / 'agg.db'}"
    config = AggregatorConfig(BrokerConfig("mqtt://127.0.0.1:1"), db_url=db, workers=2, client_id="agg-1")
    aggregator = Aggregator(config)
    aggregator.store.create_all()
    aggregator._share_group()  # as start() draws it, once the store is open
    spec = aggregator.ingest
    assert isinstance(spec, IngestWorkers)
    drawn = spec.spec.group
    assert drawn.startswith("s4edge-") and len(drawn) == 7 + 32 and drawn != default_group("agg-1")
    assert spec.spec.retired_group == default_group("agg-1")  # left by sessions that still hold it
    again = Store(make_engine(db)).share_group()
    assert again == drawn  # kept: the same after a restart, and for every replica of this store
    other = Store(make_engine(f"sqlite:///{tmp_path / 'other.db'}"))
    other.create_all()
    assert other.share_group() != drawn
    given = Aggregator(AggregatorConfig(BrokerConfig("mqtt://127.0.0.1:1"), db_url=db, workers=2, group="g1"))
    given._share_group()
    named = given.ingest
    assert isinstance(named, IngestWorkers)
    assert (named.spec.group, named.spec.retired_group) == (f"g1-{drawn.removeprefix('s4edge-')}", "g1")


def test_replicas_given_a_group_share_one_no_node_can_guess(tmp_path: Path) -> None:
    """`--group replicas` on two replicas of one store: the docs name the group, so a node
    could join it and take half the fleet's messages; the group is the name and the store's
    draw, the same for both replicas."""
    from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
    from s4edge.cloud_sync.aggregator.ingest import Ingest

    db = f"sqlite:///{tmp_path / 'agg.db'}"
    groups = []
    for client_id in ("agg-1", "agg-2"):
        replica = Aggregator(
            AggregatorConfig(BrokerConfig("mqtt://127.0.0.1:1"), db_url=db, group="replicas", client_id=client_id)
        )
        replica.store.create_all()
        replica._share_group()
        assert isinstance(replica.ingest, Ingest)
        groups.append((replica.ingest.group, replica.ingest.retired_group))
    (group, retired), second = groups
    assert second == (group, retired) and retired == "replicas"
    assert group.startswith("replicas-") and len(group) == len("replicas-") + 32


class _Subscriber:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def subscribe(self, filters: list) -> None:
        self.calls.append(("subscribe", [f for f, _ in filters]))

    def unsubscribe(self, filters: list[str]) -> None:
        self.calls.append(("unsubscribe", list(filters)))


@pytest.mark.parametrize("present", [True, False])
def test_a_resumed_session_leaves_the_group_it_held_before(tmp_path: Path, present: bool) -> None:
    from types import SimpleNamespace

    from s4edge.cloud_sync.aggregator.ingest import Ingest
    from s4edge.cloud_sync.aggregator.store import Store, make_engine

    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    ingest = Ingest(
        BrokerConfig("mqtt://127.0.0.1:1"), store, IngestMetrics(), client_id="w0", group="new", retired_group="old"
    )
    client = _Subscriber()
    ingest._on_connected(client, mqtt.MQTTv5, SimpleNamespace(session_present=present))  # type: ignore[arg-type]
    left = [filters for call, filters in client.calls if call == "unsubscribe"]
    assert bool(left) == present  # else each message would come twice, once per group
    assert all(f.startswith("$share/old/") for f in (left[0] if left else []))
    assert all(f.startswith("$share/new/") for f in next(f for c, f in client.calls if c == "subscribe"))
