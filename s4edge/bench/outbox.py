"""``s4edge bench outbox``: durable alert puts per second, and how fast a node drains
its backlog after an outage through a real mosquitto.

Target: 1,000 alerts/s for each. The drain is also compared, in the same run, with
paho publishing the same messages at QoS 1 straight from memory through the same
in-flight window (no outbox): the ratio is what the outbox costs.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import typer

from s4edge.cloud_sync.messages import Alert, Location, encode
from s4edge.cloud_sync.outbox import Outbox
from s4edge.cloud_sync.uplink import Delivery, Forwarder, MqttUplink, UplinkSettings
from s4edge.testing import Mosquitto

TARGET_PER_S = 1000.0
TOPIC = "s4edge/v1/bench/node-1/alert"


def _payload(seq: int) -> bytes:
    alert = Alert(
        node_id="node-1",
        site="bench",
        seq=seq,
        kind="gas",
        severity="Severe",
        state="new",
        incident=f"incident-{seq:08d}",
        location=Location(lat=48.1, lon=11.5, zone="concourse"),
        title="methane 48 %LEL",
    )
    return encode(alert)


def put_rate(path: Path, count: int, writers: int) -> float:
    """Alerts/s with ``writers`` threads each putting ``count / writers`` alerts."""
    payload = _payload(1)
    with Outbox(path) as outbox:
        each = count // writers

        def burst() -> None:
            for _ in range(each):
                outbox.put(TOPIC, payload)

        threads = [threading.Thread(target=burst) for _ in range(writers)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    return each * writers / elapsed


def drain_rate(workdir: Path, count: int, window: int) -> float:
    """Fill an outbox with no broker reachable, then start mosquitto and time the drain."""
    broker = Mosquitto(workdir / "broker")
    with Outbox(workdir / "outbox.db") as outbox:
        for seq in range(count):
            outbox.put(TOPIC, _payload(seq))
        broker.start()
        try:
            uplink = MqttUplink(UplinkSettings(url=broker.url, client_id="bench-drain", max_inflight=window))
            forwarder = Forwarder(outbox, uplink, window=window)
            uplink.start()
            if not uplink.connected.wait(10):
                raise RuntimeError("bench: could not connect to mosquitto")
            start = time.perf_counter()
            forwarder.start()
            while outbox.depth() > 0:
                time.sleep(0.005)
            elapsed = time.perf_counter() - start
            forwarder.stop()
            uplink.close()
        finally:
            broker.stop()
    return count / elapsed


def paho_rate(workdir: Path, count: int, window: int) -> float:
    """The peer: the same messages at QoS 1 from memory with the same in-flight window,
    waiting for every PUBACK: the forwarder minus the outbox."""
    payloads = [_payload(seq) for seq in range(count)]
    with Mosquitto(workdir / "broker") as broker:
        uplink = MqttUplink(UplinkSettings(url=broker.url, client_id="bench-paho", max_inflight=window))
        uplink.start()
        if not uplink.connected.wait(10):
            raise RuntimeError("bench: could not connect to mosquitto")
        start = time.perf_counter()
        inflight: deque[Delivery] = deque()
        for payload in payloads:
            if len(inflight) >= window:
                inflight.popleft().wait(30)
            inflight.append(uplink.publish(TOPIC, payload, qos=1))
        for delivery in inflight:
            delivery.wait(30)
        elapsed = time.perf_counter() - start
        uplink.close()
    return count / elapsed


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("outbox")
    def outbox_bench(
        puts: int = typer.Option(2000, help="Alerts per put run."),
        writers: int = typer.Option(16, help="Concurrent writer threads (group commit shares fsyncs)."),
        drain: int = typer.Option(5000, help="Alerts in the backlog for each drain run."),
        window: int = typer.Option(100, help="Forwarder in-flight window."),
        runs: int = typer.Option(3, help="Runs per figure; the median is reported."),
    ) -> None:
        """Durable put rate and post-outage drain rate; prints JSON with ratios to 1,000/s."""
        with tempfile.TemporaryDirectory(prefix="s4edge-bench-outbox-") as tmp:
            root = Path(tmp)
            single = [put_rate(root / f"single-{i}.db", max(200, puts // 10), 1) for i in range(runs)]
            grouped = [put_rate(root / f"group-{i}.db", puts, writers) for i in range(runs)]
            drained = [drain_rate(root / f"drain-{i}", drain, window) for i in range(runs)]
            ceiling = [paho_rate(root / f"paho-{i}", drain, window) for i in range(runs)]
        put_median = statistics.median(grouped)
        drain_median = statistics.median(drained)
        paho_median = statistics.median(ceiling)
        typer.echo(
            json.dumps(
                {
                    "benchmark": "outbox",
                    "target_alerts_per_s": TARGET_PER_S,
                    "put": {
                        "writers": writers,
                        "alerts_per_s_median": round(put_median, 1),
                        "runs": [round(r, 1) for r in grouped],
                        "ratio_to_target": round(put_median / TARGET_PER_S, 2),
                        "single_writer_alerts_per_s_median": round(statistics.median(single), 1),
                        "durability": "WAL, synchronous=FULL, group commit",
                    },
                    "drain": {
                        "backlog": drain,
                        "window": window,
                        "alerts_per_s_median": round(drain_median, 1),
                        "runs": [round(r, 1) for r in drained],
                        "ratio_to_target": round(drain_median / TARGET_PER_S, 2),
                        "paho_qos1_windowed_from_memory_per_s_median": round(paho_median, 1),
                        "ratio_to_paho": round(drain_median / paho_median, 2),
                    },
                },
                indent=2,
            )
        )
