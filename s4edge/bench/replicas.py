"""``s4edge bench replicas``: ingest on PostgreSQL with 1 and with 2 aggregator replicas.

Each replica is its own ``aggregator run`` (``python -m s4edge.cloud_sync.aggregator run``)
in one shared-subscription group, with ``--workers`` ingest processes of its own (by
default as ``aggregator run`` chooses: one per core on PostgreSQL). The replicas are
connected and subscribed, then paused with their workers (SIGSTOP to each one's process
group) while N messages are published; the clock starts when they are resumed (SIGCONT)
and stops when they have handled all N. This leaves process start-up and the publisher's
own speed out of the figure. Every run checks that each alert is stored exactly once.

The fleet size one replica sustains is derived from a third measurement, with the
sizing fleet's own mix (two heartbeats per alert from many nodes), since a
heartbeat takes a different path (an upsert per node) than an alert (an insert).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import typer
from sqlalchemy import Engine, select, text

from s4edge.bench.ingest import alert_payloads, check_postgres, publish_all
from s4edge.cloud_sync.aggregator.store import alerts, make_engine
from s4edge.cloud_sync.aggregator.store_url import POSTGRES_EXAMPLE, StoreUrlError, shown
from s4edge.cloud_sync.aggregator.workers import default_workers
from s4edge.cloud_sync.messages import Alert, Heartbeat, Location, Measurement, encode, topic_for
from s4edge.testing import Mosquitto, eventually

# The fleet the sizing assumes: one heartbeat per node per 30 s and one alert per node per minute.
MSGS_PER_NODE_PER_S = 1 / 30 + 1 / 60
STORED_ALERTS = 's4edge_messages_stored_total{type="alert"}'
RECEIVED_HEARTBEATS = 's4edge_messages_received_total{type="heartbeat"}'


def _replica(
    broker: Mosquitto, db_url: str, schema: str, name: str, log: Path, workers: int
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "s4edge.cloud_sync.aggregator", "run", "--broker", broker.url, "--db", db_url,
        "--db-schema", schema, "--http", "127.0.0.1:0", "--client-id", name, "--group", "bench-replicas",
        "--workers", str(workers),
    ]  # fmt: skip
    # a session of its own, so that a signal to its process group reaches its workers and writers too
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=log.open("ab"), env=dict(os.environ), start_new_session=True
    )


def _url(log: Path) -> str:
    for line in log.read_text().splitlines():
        if line.startswith("aggregator: http://"):
            return line.split()[1]
    return ""


def _wait_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    eventually(lambda: bool(_url(log)) or proc.poll() is not None, 60, "replica start", every=0.002)
    if proc.poll() is not None:
        raise RuntimeError(f"a replica exited: {log.read_text()[-2000:]}")


def _metric(url: str, sample: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def fleet_payloads(count: int, run: str, nodes: int) -> list[tuple[str, bytes]]:
    """The sizing fleet's traffic: per node, two heartbeats (QoS 0) for every alert (QoS 1)."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for k in range(count):
        node, tick = f"node-{k % nodes:05d}", k // nodes
        message: Heartbeat | Alert
        if tick % 3 == 2:
            message = Alert(
                id=f"{run}-{k:07d}", node_id=node, site="bench", seq=tick, ts=t0 + timedelta(seconds=tick),
                kind="smoke", severity="Severe", state="new", incident=f"{run}-{node}",
                location=Location(lat=48.1, lon=11.5), measurements=[Measurement(quantity="smoke", value=0.4, unit="")],
            )  # fmt: skip
        else:
            message = Heartbeat(
                node_id=node, site="bench", seq=tick, ts=t0 + timedelta(seconds=tick), uptime_s=tick,
                cpu_percent=31.0, mem_mb=412.0, soc_temp_c=55.5, camera_fps=14.8, inference_ms=11.2, outbox_depth=0,
            )  # fmt: skip
        out.append((topic_for(message), encode(message)))
    return out


def one_run(db_url: str, replicas: int, payloads: list[tuple[str, bytes]], root: Path, workers: int) -> dict[str, Any]:
    """Time the messages through ``replicas`` paused-then-resumed processes; check alerts stored once."""
    schema = f"s4edge_bench_{uuid.uuid4().hex[:10]}"
    engine: Engine = make_engine(db_url, schema)
    procs: list[subprocess.Popen[bytes]] = []
    expected = {json.loads(p)["id"] for t, p in payloads if t.endswith("/alert")}
    heartbeats = sum(1 for t, _ in payloads if t.endswith("/heartbeat"))
    try:
        with Mosquitto(root / "broker") as broker:
            logs = [root / f"replica-{i}.log" for i in range(replicas)]
            procs = [_replica(broker, db_url, schema, f"bench-replica-{i}", logs[i], workers) for i in range(replicas)]
            for proc, log in zip(procs, logs, strict=True):
                _wait_started(proc, log)
            urls = [_url(log) for log in logs]
            time.sleep(0.5)  # SUBACKs
            for proc in procs:
                os.killpg(proc.pid, signal.SIGSTOP)
            publish_all(broker, payloads)
            started = time.perf_counter()
            for proc in procs:
                os.killpg(proc.pid, signal.SIGCONT)

            def done() -> bool:
                if sum(_metric(url, STORED_ALERTS) for url in urls) < len(expected):
                    return False
                return sum(_metric(url, RECEIVED_HEARTBEATS) for url in urls) >= heartbeats

            # Polled every 50 ms: asking the replicas more often would take their CPU.
            eventually(done, 600, f"{len(payloads)} messages handled", every=0.05)
            elapsed = time.perf_counter() - started
            with engine.connect() as conn:
                ids = [row.id for row in conn.execute(select(alerts.c.id))]
            return {
                "msgs_per_s": len(payloads) / elapsed,
                "exactly_once": len(ids) == len(expected) and set(ids) == expected,
                "stored_per_replica": [_metric(url, STORED_ALERTS) for url in urls],
            }
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                proc.terminate()
                proc.wait(60)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def run_replicas(db_url: str, messages: int, runs: int, nodes: int, workers: int = 0) -> dict[str, Any]:
    """``workers``: ingest processes per replica (0: ``aggregator run``'s default). ``db_url`` is a
    PostgreSQL that ``check_postgres`` has reached."""
    workers = workers or default_workers(db_url)
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    fleet: list[dict[str, Any]] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="s4edge-bench-") as tmp:
        for run in range(runs):
            loads.append(os.getloadavg()[0])
            for replicas in (1, 2):  # interleaved, so that a busy spell on the machine hits both
                payloads = alert_payloads(messages, f"run{run}r{replicas}")
                root = Path(tmp) / f"run{run}-{replicas}"
                results[replicas].append(one_run(db_url, replicas, payloads, root, workers))
            payloads = fleet_payloads(messages, f"fleet{run}", nodes)
            fleet.append(one_run(db_url, 1, payloads, Path(tmp) / f"fleet{run}", workers))
    out: dict[str, Any] = {
        "benchmark": "replicas",
        "store": shown(db_url),
        "messages_per_run": messages,
        "runs": runs,
        "workers_per_replica": workers,
        "cpu_cores": os.cpu_count(),
        "load_average_1min_per_run": [round(load, 2) for load in loads],
        "method": "replicas paused (SIGSTOP) while N messages are queued; rate = N / time from resume to all handled",
    }
    for replicas, rows in results.items():
        rates = [r["msgs_per_s"] for r in rows]
        out[f"replicas_{replicas}"] = {
            "msgs_per_s": {"median": round(statistics.median(rates)), "all": [round(r) for r in rates]},
            "exactly_once": all(r["exactly_once"] for r in rows),
            "stored_per_replica": [r["stored_per_replica"] for r in rows],
        }
    one = statistics.median(r["msgs_per_s"] for r in results[1])
    two = statistics.median(r["msgs_per_s"] for r in results[2])
    out["speedup_2_vs_1"] = round(two / one, 2)
    mix = statistics.median(r["msgs_per_s"] for r in fleet)
    out["fleet_mix_1_replica"] = {
        "traffic": f"{nodes} nodes, 2 heartbeats (QoS 0) per alert (QoS 1), as the sizing fleet sends",
        "msgs_per_s": {"median": round(mix), "all": [round(r["msgs_per_s"]) for r in fleet]},
        "exactly_once": all(r["exactly_once"] for r in fleet),
    }
    out["fleet_sizing"] = {
        "assumption": "per node: 1 heartbeat / 30 s + 1 alert / 60 s = 0.05 msg/s",
        "method": f"nodes = median rate of 1 replica ({workers} workers) on that 2:1 heartbeat:alert mix / 0.05 msg/s",
        "nodes_one_replica_at_100pct": int(mix / MSGS_PER_NODE_PER_S),
        "nodes_one_replica_at_50pct_headroom": int(mix / MSGS_PER_NODE_PER_S / 2),
    }
    return out


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("replicas")
    def replicas(
        db: str = typer.Option("postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL URL (postgresql://…)"),
        messages: int = typer.Option(5000, help="Messages per run"),
        runs: int = typer.Option(3, help="Runs per configuration (the median is quoted)"),
        nodes: int = typer.Option(1000, help="Distinct nodes in the fleet-mix run"),
        workers: int = typer.Option(
            0, min=0, help="Ingest processes per replica (aggregator run --workers); 0: its default, one per core"
        ),
    ) -> None:
        """Ingest with 1 and 2 replicas on PostgreSQL; exactly-once check; fleet size per replica."""
        try:
            check_postgres(db, f"replicas share one PostgreSQL; give one, e.g. {POSTGRES_EXAMPLE}")
        except StoreUrlError as exc:
            typer.echo(f"error: --db {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(run_replicas(db, messages, runs, nodes, workers), indent=2))
