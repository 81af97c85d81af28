"""``s4edge demo``: the whole chain on one machine.

An embedded broker (or ``--broker URL``), the aggregator with its dashboard on SQLite
in a temporary folder, and one node that runs real detection on replayed real frames
and simulated sensors playing a scripted incident. Critical alerts are forwarded as
NG112 calls (CAP status Exercise: the demo node is a drill) to the built-in PSAP.

CO alarms by exposure after EN 50291-1, which takes minutes; the node's plant-room
source plays its CO build-up on a scenario clock ×60 (one wall second is one minute),
so the real alarm comes about 16 s in, and the alert and the summary say so.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from s4edge.resources import packaged
from s4edge.yaml_text import load_yaml


def _example(*parts: str) -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(packaged(*parts).read_text())
    return data


CO_SOURCE = "plant-room"  # sim-node.yaml's CO exposure source, on a scenario clock ×60


def node_config(broker_url: str, protocol: str, workdir: Path, vision: bool) -> dict[str, Any]:
    """The demo node: real sensor drivers on simulated chips playing the gas_leak scenario
    (edge/sensing/examples/sensors-sim.yaml), the CO exposure source of sim-node.yaml, and
    the camera of vision-demo.yaml."""
    config = _example("firmware_configs", "sim-node.yaml")
    co_source = next(s for s in config["sources"] if s["name"] == CO_SOURCE)
    config["node_id"] = "demo-node-1"
    config["mqtt"] = {"url": broker_url, "protocol": protocol, "keepalive_s": 15}
    config["outbox"] = {"path": str(workdir / "node-outbox.db")}
    config["heartbeat"] = {"interval_s": 5}
    sensors = _example("edge", "sensing", "examples", "sensors-sim.yaml")
    sensors["calibration_file"] = str(workdir / "sensor_calibration.json")
    for sensor in sensors["sensors"]:
        if sensor["kind"].startswith("mq"):
            sensor["warmup_s"] = 2  # a simulated heater needs no 3-minute warm-up
    config["sources"] = [sensors, co_source]
    if vision:
        from s4edge.demo_clip import demo_clip

        camera = _example("firmware_configs", "vision-demo.yaml")["sources"][0]
        camera["camera"]["url"] = f"replay:{demo_clip(workdir / 'demo_clip.avi')}"
        config["sources"].append(camera)
    return config


@contextlib.contextmanager
def _broker(url: str | None) -> Iterator[tuple[str, str]]:
    """Yield (url, MQTT protocol) of the broker to use."""
    if url:
        yield url, "5"
        return
    from s4edge.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.url, "3.1.1"  # amqtt speaks MQTT 3.1.1 only


@contextlib.contextmanager
def _psap(calls: list[str]) -> Iterator[str]:
    """The built-in PSAP receiver on a free port; yields its SIP URI."""
    from s4edge.cloud_sync.ng112.receiver import PsapReceiver

    def on_call(call: Any) -> None:
        calls.append(call.summary())
        typer.echo(f"PSAP received: {call.summary()}", err=True)

    receiver = PsapReceiver("tcp:127.0.0.1:0", on_call).start()
    host, port = receiver.address
    try:
        yield f"sip:psap@{host}:{port};transport=tcp"
    finally:
        receiver.stop()


def ng112_config(psap_uri: str, readings_base_url: str) -> Any:
    """Forward fire and gas alarms, and gas + flame escalated as one incident."""
    from s4edge.cloud_sync.ng112.policy import Ng112Config

    return Ng112Config.model_validate(
        {
            "psap": psap_uri,
            "readings_base_url": readings_base_url,
            "default": {"kinds": ["gas", "co", "smoke", "flame", "escalation"], "min_severity": "Severe"},
            "correlation": [{"name": "gas-flame", "kinds": ["gas", "flame"], "within_s": 120, "severity": "Extreme"}],
        }
    )


def summary(aggregator: Any, calls: list[str]) -> dict[str, Any]:
    from s4edge.cloud_sync.aggregator.store import AlertQuery

    alerts, _ = aggregator.store.alerts(AlertQuery(limit=100_000))
    nodes = aggregator.store.nodes(default_interval_s=5, stale_factor=3)
    co_alarms = [a for a in reversed(alerts) if a["kind"] == "co" and a["severity"] in ("Severe", "Extreme")]
    return {
        "alerts": len(alerts),
        "by_kind": dict(Counter(a["kind"] for a in alerts)),
        # the first CO alarm (not pre-alarm), with the standard and the scenario clock it ran on
        "co_alarm": f"{co_alarms[0]['title']}; {co_alarms[0]['detail']}" if co_alarms else None,
        "nodes": [{"node_id": n["node_id"], "site": n["site"], "state": n["state"]} for n in nodes],
        "ng112_calls": len(calls),
        "dashboard": aggregator.url + "/",
    }


def run_demo(
    broker_url: str | None, duration: float | None, http_port: int, vision: bool, stop: threading.Event
) -> dict[str, Any]:
    from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
    from s4edge.cloud_sync.aggregator.broker import BrokerConfig
    from s4edge.cloud_sync.ng112.service import attach
    from s4edge.edge.app import Node
    from s4edge.edge.config import parse_config
    from s4edge.testing.mosquitto import free_port

    calls: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="s4edge-demo-") as tmp,
        _broker(broker_url) as (url, protocol),
        _psap(calls) as psap_uri,
    ):
        workdir = Path(tmp)
        http_port = http_port or free_port()
        aggregator = Aggregator(
            AggregatorConfig(
                broker=BrokerConfig(url),
                db_url=f"sqlite:///{workdir / 'aggregator.db'}",
                http_port=http_port,
                protocol=protocol,
                heartbeat_interval_s=5,
            )
        )
        forwarder = attach(aggregator, ng112_config(psap_uri, f"http://127.0.0.1:{http_port}"))
        try:
            aggregator.start()
            typer.echo(f"dashboard: {aggregator.url}/", err=True)
            node = Node(parse_config(node_config(url, protocol, workdir, vision), "demo node"), base_dir=workdir)
            node.start()
            try:
                stop.wait(duration)
            finally:
                node.close()
            return summary(aggregator, calls)
        finally:
            forwarder.stop()
            aggregator.stop()


def demo(
    broker: str = typer.Option(
        None,
        "--broker",
        help="Use this broker (mqtt://, mqtts://, ws:// or wss://HOST:PORT) instead of an embedded one.",
    ),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds (default: until Ctrl-C)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary when the demo stops."),
    http_port: int = typer.Option(0, "--http-port", min=0, max=65535, help="Dashboard port (default: a free one)."),
    vision: bool = typer.Option(True, "--vision/--no-vision", help="Run the camera with real detection."),
) -> None:
    """Run broker, aggregator + dashboard, and a simulated node playing an incident."""
    from s4edge.cloud_sync.broker_url import BrokerUrlError, broker_endpoint

    if broker:
        try:
            broker_endpoint(broker)
        except BrokerUrlError as exc:
            typer.echo(f"error: --broker: {exc}", err=True)
            raise typer.Exit(2) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from s4edge.cloud_sync.aggregator.broker import BrokerError

    try:
        result = run_demo(broker, duration, http_port, vision, stop)
    except (BrokerError, OSError) as exc:  # a broker that is not there, a dashboard port taken
        typer.echo(f"error: the demo did not start: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result))
