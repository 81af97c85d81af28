"""``s4edge bench ingest``: aggregator ingest rate against a bare paho subscriber.

Both consumers drain the same backlog from a real mosquitto: N alerts (QoS 1) are
published while the consumer's persistent session is offline, then the consumer
reconnects and the clock runs until it has handled all N. The bare subscriber
only counts (paho auto-acks); the aggregator validates, de-duplicates, commits
to SQLite and only then acks. Both see the same broker, in-flight window and
subscriptions, so the ratio isolates the aggregator's own cost.

Each run measures the bare peer and then every variant on one fresh broker; a variant's
ratio is the median over runs of its rate over that run's bare rate. Variants: the
writer in a process (``aggregator run``'s default) or a thread, each without and with
NG112 forwarding on, as ``attach`` turns it on: every forwardable alert is committed with
its forward job, and a forwarder drains the jobs and calls a PSAP (the built-in one, in a
process of its own) while the backlog is ingested. As in service, the forwarder runs in a
process of its own beside the writer process, and in the aggregator's process beside the
writer thread.
``--forwardable-share`` sets how many of the alerts the policy forwards (CO readings at
Severe, evenly spread); the rest are vision alerts it leaves alone. The default, 0.01,
stands for a site where gas, fire and CO at Severe or worse are rare beside the loitering,
crowd and intrusion alerts raised all day; 1.0 (every alert a call) is the worst case.
The aggregator sends its receipts to the nodes after each commit, as it always does;
``--receipts on,off`` adds variants without them (``_no_receipts``) to show their cost.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.ingest import LINGER_S, Ingest, relax_gc
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics
from s4edge.cloud_sync.aggregator.store import Store, make_engine
from s4edge.cloud_sync.aggregator.writer import SUFFIXES, StoreSpec
from s4edge.cloud_sync.messages import QOS, Alert, Location, Measurement, Severity, encode, fleet_filter, topic_for
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.process import ForwarderProcess
from s4edge.testing import Mosquitto, eventually, free_port

TARGET_RATIO = 0.70
FORWARDABLE_SHARE = 0.01
# What NG112's default policy forwards (its kinds at min_severity), and vision alerts it does not.
FORWARDED: tuple[str, Severity] = ("gas", "Severe")
ROUTINE: tuple[tuple[str, Severity], ...] = (("loitering", "Moderate"), ("crowd", "Minor"), ("intrusion", "Moderate"))


def alert_payloads(count: int, run: str, nodes: int = 50, forwardable_share: float = 1.0) -> list[tuple[str, bytes]]:
    """Realistic alerts from ``nodes`` nodes, with a location; ``forwardable_share`` of them,
    evenly spread, CO readings the NG112 policy forwards, the rest vision alerts it does not."""
    out = []
    for seq in range(count):
        node = f"node-{seq % nodes:03d}"
        forwardable = int((seq + 1) * forwardable_share) > int(seq * forwardable_share)
        kind, severity = FORWARDED if forwardable else ROUTINE[seq % len(ROUTINE)]
        message = Alert(
            id=f"{run}-{seq:07d}", node_id=node, site="bench", seq=seq, kind=kind, severity=severity,
            state="new", incident=f"{run}-{node}-{kind}", location=Location(lat=48.137, lon=11.575, zone="entrance"),
            title="CO above threshold" if forwardable else f"{kind} at the entrance",
            measurements=[Measurement(quantity="co", value=61.5, unit="ppm")] if forwardable else [],
        )  # fmt: skip
        out.append((topic_for(message), encode(message)))
    return out


def publish_all(broker: Mosquitto, payloads: list[tuple[str, bytes]]) -> None:
    """Publish and return once the broker has taken every one."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    # Each message type at its contract QoS (heartbeats 0, alerts 1).
    infos = [client.publish(topic, payload, qos=QOS.get(topic.rsplit("/", 1)[-1], 1)) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


class BareSubscriber:
    """The peer: paho, the same shared subscriptions and persistent session, counting only."""

    def __init__(self, broker: Mosquitto, group: str, expect: int) -> None:
        self.broker = broker
        self.group = group
        self.count = 0
        self.expect = expect
        self.subscribed = threading.Event()
        self.done = threading.Event()  # set from the network thread, as the aggregator's count is

    def connect(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
        filters = [(f"$share/{self.group}/{fleet_filter(s)}", 1) for s in SUFFIXES]

        def on_message(_c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
            self.count += 1
            if self.count >= self.expect:
                self.done.set()

        client.on_message = on_message
        client.on_connect = lambda c, *_: c.subscribe(filters)
        client.on_subscribe = lambda *_: self.subscribed.set()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        client.connect(self.broker.host, self.broker.port, clean_start=False, properties=properties)
        client.loop_start()
        return client


def bare_rate(broker: Mosquitto, payloads: list[tuple[str, bytes]]) -> float:
    subscriber = BareSubscriber(broker, "bench-bare", len(payloads))
    client = subscriber.connect()
    if not subscriber.subscribed.wait(10):
        raise RuntimeError("the bare subscriber got no SUBACK within 10 s")
    client.disconnect()
    client.loop_stop()
    publish_all(broker, payloads)
    started = time.perf_counter()
    client = subscriber.connect()
    if not subscriber.done.wait(120):
        raise RuntimeError(f"the bare subscriber got {subscriber.count} of {len(payloads)}")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return len(payloads) / elapsed


def aggregator_rate(
    broker: Mosquitto,
    payloads: list[tuple[str, bytes]],
    store: Store,
    batch_max: int,
    linger_s: float,
    writer_process: StoreSpec | None,
    psap_uri: str | None,
    receipts: bool = True,
) -> float:
    """``psap_uri``: NG112 forwarding on, to that PSAP (forward jobs in each commit, and a
    forwarder draining them while the clock runs, in a process of its own beside a writer
    process). ``receipts``: the aggregator confirms every stored alert to its node, as it
    does in service."""
    metrics = IngestMetrics()

    def ingest() -> Ingest:
        return Ingest(
            BrokerConfig(broker.url), store, metrics, client_id="bench-aggregator",
            group="bench-aggregator", batch_max=batch_max, linger_s=linger_s, writer_process=writer_process,
            receipts=receipts,
        )  # fmt: skip

    first = ingest()
    first.start()
    first.stop()  # the session stays, with its subscriptions
    publish_all(broker, payloads)

    def stored() -> float:
        return metrics.registry.get_sample_value("s4edge_messages_stored_total", {"type": "alert"}) or 0.0

    before = stored()
    second = ingest()
    forwarder = None
    if psap_uri is not None:
        config = Ng112Config(psap=psap_uri)
        # as ``ng112.service.attach`` does: with the writer in a process, the forwarder in one too
        forwarder = (
            ForwarderProcess(writer_process, store.engine, config)
            if writer_process is not None
            else Forwarder(store.engine, config)
        )
        second.forward_jobs(config.job_kinds, on_jobs=forwarder.wake)  # as ``ng112.service.attach`` does
        forwarder.start()
    second.open_writer()  # a running aggregator has its writer process up before a backlog comes
    started = time.perf_counter()
    second.start()
    # the stored-alerts counter, read every 5 ms: ±5 ms on a run of a second or so
    finished = eventually(lambda: stored() - before >= len(payloads), 300, "ingest", every=0.005)
    elapsed = time.perf_counter() - started
    second.stop()
    if forwarder is not None:
        forwarder.stop()
    if not finished or store.count_alerts() != len(payloads):
        raise RuntimeError(f"stored {store.count_alerts()} rows for {len(payloads)} alerts")
    return len(payloads) / elapsed


@contextmanager
def psap_process() -> Iterator[str]:
    """The built-in PSAP (``s4edge ng112 psap``) in a process of its own, as a real PSAP is:
    parsing the calls is not the aggregator's work. It stands for another machine, so it
    runs at the lowest priority (nice 19) and takes only the CPU the aggregator leaves idle.
    Yields its SIP URI."""
    port = free_port()
    argv = [sys.executable, "-m", "s4edge", "ng112", "psap", "--listen", f"tcp:127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.nice(19))
    try:
        eventually(lambda: proc.poll() is not None or _listening(port), 30, "the PSAP to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"the PSAP exited ({proc.returncode})")
        yield f"sip:psap@127.0.0.1:{port};transport=tcp"
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def run_ingest(
    messages: int,
    runs: int,
    batch_max: int,
    sync_modes: list[str],
    writers: list[str],
    linger_s: float,
    receipts: tuple[bool, ...] = (True,),
    forwardable_share: float = FORWARDABLE_SHARE,
) -> dict[str, Any]:
    variants = [
        (writer, mode, ng112, on)
        for writer in writers
        for mode in sync_modes
        for ng112 in (False, True)
        for on in receipts
    ]
    relax_gc()  # as a started Aggregator does; for the bare peer too, which runs in this process
    bare: list[float] = []
    aggregated: dict[tuple[str, str, bool, bool], list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="s4edge-bench-") as tmp, psap_process() as psap_uri:
        # Interleave peer and aggregator runs so that a busy spell on the machine hits both.
        for run in range(runs):
            root = Path(tmp) / f"run{run}"
            with Mosquitto(root / "broker") as broker:
                bare.append(
                    bare_rate(broker, alert_payloads(messages, f"bare{run}", forwardable_share=forwardable_share))
                )
                for writer, mode, ng112, on in variants:
                    url = f"sqlite:///{root / f'agg-{writer}-{mode}-{ng112}-{on}.db'}"
                    store = Store(make_engine(url, sqlite_sync=mode))
                    store.create_all()
                    spec = StoreSpec(url, sqlite_sync=mode) if writer == "process" else None
                    payloads = alert_payloads(
                        messages, f"agg{run}{writer}{mode}{ng112}{on}", forwardable_share=forwardable_share
                    )
                    forwarding = psap_uri if ng112 else None
                    rate = aggregator_rate(broker, payloads, store, batch_max, linger_s, spec, forwarding, on)
                    aggregated[(writer, mode, ng112, on)].append(rate)
                    store.engine.dispose()
    bare_median = statistics.median(bare)
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "messages_per_run": messages,
        "runs": runs,
        "batch_max": batch_max,
        "linger_s": linger_s,
        "forwardable_share": forwardable_share,
        "method": "drain a backlog of N QoS 1 alerts queued on a persistent session; rate = N / time to handle all",
        "bare_paho_msgs_per_s": {"median": round(bare_median), "all": [round(r) for r in bare]},
        "target_ratio": TARGET_RATIO,
    }
    for (writer, mode, ng112, on), rates in aggregated.items():
        # Each run's aggregator against the bare peer of the same run, on the same broker:
        # a busy spell on this shared machine then weighs on both sides of a ratio.
        ratios = [rate / peer for rate, peer in zip(rates, bare, strict=True)]
        ratio = statistics.median(ratios)
        name = f"aggregator_{writer}_writer_sqlite_{mode.lower()}{'_ng112' if ng112 else ''}"
        name += "" if on else "_no_receipts"
        result[name] = {
            "msgs_per_s": {"median": round(statistics.median(rates)), "all": [round(r) for r in rates]},
            "ratio_to_bare": round(ratio, 3),
            "ratio_per_run": [round(r, 3) for r in ratios],
            "meets_target": ratio >= TARGET_RATIO,
        }
    return result


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("ingest")
    def ingest(
        messages: int = typer.Option(5000, help="Alerts per run"),
        runs: int = typer.Option(5, help="Runs (the median is quoted)"),
        batch_max: int = typer.Option(500, help="Most messages per commit"),
        sqlite_sync: str = typer.Option(
            "FULL", help="SQLite synchronous modes to measure (FULL, NORMAL), comma-separated"
        ),
        writer: str = typer.Option(
            "process,thread",
            help="Where validation and commit run: process (aggregator run's default) or thread; comma-separated",
        ),
        linger_s: float = typer.Option(LINGER_S, help="How long a batch may gather while messages keep coming"),
        receipts: str = typer.Option(
            "on", help="Receipts to the nodes after each commit: on (as in service) and/or off; comma-separated"
        ),
        forwardable_share: float = typer.Option(
            FORWARDABLE_SHARE, min=0.0, max=1.0, help="Share of the alerts the NG112 policy forwards (1.0: all)"
        ),
    ) -> None:
        """Aggregator ingest rate (validate + de-dup + commit, SQLite) vs a bare paho subscriber."""
        modes = [m.strip().upper() for m in sqlite_sync.split(",") if m.strip()]
        writers = [w.strip().lower() for w in writer.split(",") if w.strip()]
        if not set(writers) <= {"process", "thread"}:
            raise typer.BadParameter(f"--writer {writer!r}: process and/or thread")
        switches = [r.strip().lower() for r in receipts.split(",") if r.strip()]
        if not switches or not set(switches) <= {"on", "off"}:
            raise typer.BadParameter(f"--receipts {receipts!r}: on and/or off")
        confirming = tuple(switch == "on" for switch in switches)
        result = run_ingest(messages, runs, batch_max, modes, writers, linger_s, confirming, forwardable_share)
        typer.echo(json.dumps(result, indent=2))
