"""``s4edge bench ng112``: alert received by the aggregator → 200 OK from a sipp PSAP.

Each alert goes through a real mosquitto and the real aggregator. The clock starts when
the aggregator receives the alert (the stored row's ``received_at``, just before the
commit that also writes its forward job) and stops when the PSAP's final response
arrives (the forward's ``answered_at``), so it includes the forwarder's wait for the job
(ingest wakes it after the commit). One alert at a time, so the figure is latency, not queueing.
The target (p99 ≤ 200 ms on loopback) is quoted as a ratio.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.messages import Alert, Location, Measurement, encode, topic_for
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.service import attach
from s4edge.testing import Mosquitto, free_port
from s4edge.testing.sipp import SippPsap


def _ms(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds() * 1000


def run_bench(count: int, transport: str, target_p99_ms: float, workdir: Path) -> dict[str, object]:
    http_port = free_port()
    with Mosquitto(workdir / "broker") as broker, SippPsap("psap_200.xml", transport, workdir, calls=count) as psap:
        aggregator = Aggregator(
            AggregatorConfig(
                broker=BrokerConfig(f"mqtt://{broker.host}:{broker.port}"),
                db_url=f"sqlite:///{workdir / 'aggregator.db'}",
                http_port=http_port,
                client_id="bench-ng112",
            )
        )
        config = Ng112Config(psap=psap.uri, readings_base_url=f"http://127.0.0.1:{http_port}")
        forwarder = attach(aggregator, config)
        aggregator.start()
        node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-node", protocol=mqtt.MQTTv5)
        node.connect(broker.host, broker.port)
        node.loop_start()
        to_ok: list[float] = []
        transaction: list[float] = []
        failed = 0
        try:
            for seq in range(count):
                alert = Alert(
                    node_id="bench", site="loopback", seq=seq, kind="gas", severity="Extreme", state="new",
                    incident=f"inc-bench-{seq:06d}", location=Location(lat=48.2, lon=16.37, zone="lab"),
                    measurements=[Measurement(quantity="ch4", value=25.0, unit="%LEL")],
                )  # fmt: skip
                node.publish(topic_for(alert), encode(alert), qos=1).wait_for_publish(5)
                row = forwarder.wait_for(("delivered", "failed", "retrying"), 30, alert_id=alert.id)
                if row is None or row["state"] != "delivered":
                    failed += 1
                    continue
                stored = aggregator.store.alert(alert.id)
                assert stored is not None  # a forward is only made of a stored alert
                to_ok.append(_ms(row["answered_at"], stored["received_at"]))
                transaction.append(float(row["latency_ms"]))
        finally:
            node.disconnect()
            node.loop_stop()
            forwarder.stop()
            aggregator.stop()
    p50, p99 = (float(v) for v in np.percentile(to_ok, [50, 99])) if to_ok else (float("nan"),) * 2
    return {
        "benchmark": "ng112",
        "path": "aggregator receives -> commit with forward job -> forwarder -> SIP MESSAGE -> 200 OK from sipp "
        "(real mosquitto, SQLite)",
        "transport": transport,
        "forwards": count,
        "delivered": len(to_ok),
        "failed": failed,
        "received_to_200_ms": {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(max(to_ok, default=0), 2)},
        "sip_transaction_ms": {
            "p50": round(float(np.percentile(transaction, 50)), 2) if transaction else None,
            "p99": round(float(np.percentile(transaction, 99)), 2) if transaction else None,
        },
        "target_p99_ms": target_p99_ms,
        "p99_to_target": round(p99 / target_p99_ms, 3),
    }


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("ng112")
    def ng112(
        count: int = typer.Option(200, min=1, help="Forwards to measure (one alert, one incident each)."),
        transport: str = typer.Option("tcp", help="udp or tcp between forwarder and sipp."),
        target_p99_ms: float = typer.Option(200.0, help="Target p99 on loopback."),
    ) -> None:
        """Alert committed → 200 OK from sipp: p50/p99 over COUNT forwards, as JSON."""
        with tempfile.TemporaryDirectory(prefix="s4edge-bench-ng112-") as workdir:
            result = run_bench(count, transport, target_p99_ms, Path(workdir))
        typer.echo(json.dumps(result, indent=2))
