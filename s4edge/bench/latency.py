"""``s4edge bench latency``: a sensor reading crosses its threshold → the alert row is
committed at the aggregator, through a real mosquitto, one alert at a time.

The path timed is the production one: ThresholdRule → IncidentBook → the node's
publisher → fsync'd outbox → forwarder → paho → mosquitto → aggregator ingest
(validate, de-dup, commit, ack) → the alert on its live event stream (what the dashboard's
SSE shows).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import track

if TYPE_CHECKING:
    from s4edge.cloud_sync.aggregator.events import EventBus

TARGET_P99_MS = 50.0
Stored = Callable[[dict[str, object]], None]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def watch(events: EventBus, on_alert: Stored) -> None:
    """Call ``on_alert`` with each alert record the aggregator streams live, from a thread of
    its own (an SSE client's event loop), until the bus closes; returns once subscribed."""
    subscribed = threading.Event()

    async def listen() -> None:
        subscription = events.subscribe()
        subscribed.set()
        while (item := await subscription.queue.get()) is not None:
            if item[0] == "alert":
                on_alert(json.loads(item[1]))

    threading.Thread(target=asyncio.run, args=(listen(),), name="bench-stream", daemon=True).start()
    if not subscribed.wait(10):
        raise RuntimeError("could not subscribe to the aggregator's live events")


def measure(count: int, workdir: Path, writer: str = "process") -> list[float]:
    from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
    from s4edge.cloud_sync.aggregator.broker import BrokerConfig
    from s4edge.edge.alerts import Level, ThresholdRule, ValueAlarm
    from s4edge.edge.app import Node
    from s4edge.edge.config import parse_config
    from s4edge.testing import Mosquitto

    committed: dict[tuple[str, str], float] = {}
    arrived = threading.Condition()

    def on_stored(alert: dict[str, object]) -> None:
        with arrived:
            committed[(str(alert["incident"]), str(alert["state"]))] = time.perf_counter()
            arrived.notify_all()

    latencies: list[float] = []
    with Mosquitto(workdir / "broker") as broker:
        config = {
            "node_id": "bench-node",
            "site": "bench",
            "location": {"lat": 0.5, "lon": 0.5},
            "mqtt": {"url": broker.url},
            "outbox": {"path": str(workdir / "outbox.db")},
            "alerts": {"update_interval_s": 0},
        }
        aggregator = Aggregator(
            AggregatorConfig(BrokerConfig(broker.url), db_url=f"sqlite:///{workdir}/agg.db", writer=writer)
        )
        with aggregator:
            watch(aggregator.events, on_stored)
            node = Node(parse_config(config, "bench node"))
            node.start()
            try:
                alarm = ValueAlarm(
                    "bench:co", "co", ThresholdRule([Level(50, "Severe", 10)]), node.book, "carbon_monoxide", "ppm"
                )
                # each round crosses up (new) and back down (end): two alerts, two latencies
                for i in track(range(count // 2), description="threshold crossings", transient=True):
                    incident = ""
                    for value, state in ((120.0, "new"), (5.0, "end")):
                        start = time.perf_counter()
                        alarm.observe(value, now=float(i))
                        incident = node.book.incident_id("bench:co") or incident
                        key = (incident, state)
                        with arrived:
                            if not arrived.wait_for(partial(committed.__contains__, key), timeout=10):
                                raise RuntimeError(f"alert {state} of {incident} was not committed within 10 s")
                        latencies.append((committed[key] - start) * 1000)
            finally:
                node.close()
    return latencies


def latency(
    count: int = typer.Option(1000, "--count", help="Alerts to time (≥ 1,000 for a stable p99)."),
    writer: str = typer.Option("process", "--writer", help="The aggregator's writer: process (its default) or thread"),
) -> None:
    """Threshold crossing → row committed at the aggregator (p50/p99, ms)."""
    if writer not in ("process", "thread"):
        raise typer.BadParameter(f"{writer!r}: process or thread", param_hint="--writer")
    with tempfile.TemporaryDirectory(prefix="s4edge-bench-") as tmp:
        values = measure(count, Path(tmp), writer)
    p99 = percentile(values, 99)
    typer.echo(
        json.dumps(
            {
                "bench": "latency",
                "writer": writer,
                "alerts": len(values),
                "p50_ms": round(statistics.median(values), 2),
                "p90_ms": round(percentile(values, 90), 2),
                "p99_ms": round(p99, 2),
                "max_ms": round(max(values), 2),
                "target_p99_ms": TARGET_P99_MS,
                "p99_over_target": round(p99 / TARGET_P99_MS, 3),
            }
        )
    )


def register(bench_app: typer.Typer) -> None:
    bench_app.command("latency")(latency)
