"""``s4edge bench console``: the operator's console under a city's load: /api/incidents p95 and
the page's first paint in headless Chromium, with 100 nodes and 10,000 incidents in the store.

The store (SQLite, a temporary file) is seeded straight through the store's own insert: 100
nodes on four sites, each with a status, a heartbeat and six hours of downsampled gas, CO,
CO2 and temperature, and 10,000 incidents of two to six alerts each (new, updates, and an
end for most) spread over a week. A real aggregator then serves it, on a real mosquitto.
Timed from a client process of its own: the first page of /api/incidents, a filtered one
(open, Severe or worse, one kind) and a deep page (its cursor found by walking half the list
first), /api/nodes and a node's trends, each ``--requests`` times on a kept-alive connection;
then the dashboard loaded ``--loads`` times in a fresh headless Chromium, read from the Paint
Timing API (``first-contentful-paint``) and Navigation Timing, and the moment the page had
drawn its first incidents (its own ``performance.mark``).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import typer

from s4edge.cloud_sync.aggregator.alert_rows import AlertRows
from s4edge.cloud_sync.aggregator.downsample import BUCKET_S
from s4edge.cloud_sync.aggregator.store import Store, make_engine, telemetry_series
from s4edge.cloud_sync.messages import Alert, Heartbeat, Location, Measurement, Severity, Status
from s4edge.testing import Mosquitto

TARGET_FIRST_PAINT_MS = 1000.0
TARGET_API_P95_MS = 200.0
SITES = ("plaza", "metro", "mall", "school")
CENTRE = (40.4168, -3.7038)  # Madrid, Puerta del Sol
KINDS: tuple[tuple[str, Severity, str], ...] = (
    ("gas", "Severe", "methane"), ("co", "Severe", "carbon monoxide"), ("smoke", "Severe", "smoke"),
    ("flame", "Extreme", ""), ("intrusion", "Moderate", "person in the closed area"),
    ("loitering", "Minor", "loitering at the gate"), ("crowd", "Moderate", "crowd building up"),
    ("sensor_fault", "Minor", "sensor not answering"),
)  # fmt: skip
SEVERITY_STEPS: tuple[Severity, ...] = ("Minor", "Moderate", "Severe", "Extreme")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def node_names(nodes: int) -> list[tuple[str, str, float, float]]:
    rng = random.Random(7)
    out = []
    for i in range(nodes):
        site = SITES[i % len(SITES)]
        out.append((site, f"node-{i:03d}", CENTRE[0] + rng.uniform(-0.03, 0.03), CENTRE[1] + rng.uniform(-0.04, 0.04)))
    return out


def seed(store: Store, nodes: int, incidents: int, now: datetime) -> int:
    """Fill the store; returns the number of alerts."""
    rng = random.Random(11)
    fleet = node_names(nodes)
    writer = AlertRows(store)
    batch: list[tuple[Alert, datetime]] = []
    total = 0
    with store.engine.begin() as conn:
        for i in range(incidents):
            site, node, lat, lon = fleet[i % len(fleet)]
            kind, peak, what = KINDS[i % len(KINDS)]
            start = now - timedelta(seconds=rng.uniform(60, 7 * 86400))
            steps = rng.randint(2, 6)
            ended = rng.random() < 0.8 or start < now - timedelta(days=1)
            location = Location(lat=lat, lon=lon, zone=f"zone-{i % 7}")
            for k in range(steps):
                last = k == steps - 1
                state: Literal["new", "update", "end"] = "new" if k == 0 else ("end" if last and ended else "update")
                severity = SEVERITY_STEPS[min(k, SEVERITY_STEPS.index(peak))]
                value = 10.0 + 15.0 * k
                alert = Alert(
                    id=f"a-{i:05d}-{k}", node_id=node, site=site, seq=i * 10 + k,
                    ts=start + timedelta(seconds=30 * k), kind=kind, severity=severity, state=state,
                    incident=f"inc-{i:05d}", location=location, title=f"{what} {value:g}" if what else None,
                    measurements=[Measurement(quantity=kind, value=value, unit="1")],
                )  # fmt: skip
                batch.append((alert, alert.ts))
            if len(batch) >= 2000:
                writer.insert(conn, batch)
                total += len(batch)
                batch = []
        writer.insert(conn, batch)
        total += len(batch)
        store.ensure_nodes(conn, [(site, node) for site, node, _, _ in fleet])
        for j, (site, node, _, _) in enumerate(fleet):
            online: Literal["online", "offline"] = "offline" if j % 25 == 24 else "online"
            store.record_status(conn, Status(node_id=node, site=site, seq=1, state=online), now)
        beats = [
            (
                Heartbeat(
                    node_id=node,
                    site=site,
                    seq=2,
                    uptime_s=3600,
                    cpu_percent=20 + j % 60,
                    mem_mb=300 + j,
                    soc_temp_c=45 + j % 30,
                    camera_fps=14.5,
                    inference_ms=40 + j % 20,
                    dropped_frames=j % 3,
                    outbox_depth=j % 40,
                    sensors={
                        "cam0": "ok",
                        "cam0.stages_ms": str({"motion": 0.6, "infer": 41.2}),
                        "gas": "fault: no answer" if j % 17 == 0 else "ok",
                    },
                ),
                now - timedelta(seconds=200 if j % 20 == 19 else 5),
            )
            for j, (site, node, _, _) in enumerate(fleet)
        ]
        store.record_heartbeats(conn, beats)
        conn.execute(telemetry_series.insert(), list(_series_rows(fleet, now, rng)))
    return total


def _series_rows(fleet: list[tuple[str, str, float, float]], now: datetime, rng: random.Random) -> Any:
    end = int(now.timestamp()) // BUCKET_S * BUCKET_S
    for site, node, _, _ in fleet:
        for quantity, unit, base in (("methane", "%LEL", 3.0), ("co", "ppm", 8.0), ("co2", "ppm", 600.0),
                                     ("temperature", "Cel", 24.0)):  # fmt: skip
            for b in range(end - 6 * 3600, end + 1, BUCKET_S):
                mean = base * (1 + 0.2 * rng.random())
                yield {
                    "site": site, "node_id": node, "quantity": quantity, "sensor": "", "bucket": b, "unit": unit,
                    "n": 6, "total": mean * 6, "low": mean * 0.9, "high": mean * 1.1,
                }  # fmt: skip


def time_requests(base_url: str, path: str, params: dict[str, Any], requests: int) -> dict[str, float]:
    """Run in a process of its own, as a browser is: a client in the aggregator's process would
    share its interpreter and time the GIL as much as the API."""
    timings = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.get(path, params=params).raise_for_status()  # a connection, kept alive as a browser's
        for _ in range(requests):
            t0 = time.perf_counter()
            response = client.get(path, params=params)
            timings.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
    return {
        "median_ms": round(statistics.median(timings), 1),
        "p95_ms": round(percentile(timings, 95), 1),
        "max_ms": round(max(timings), 1),
    }


def deep_cursor(client: httpx.Client, depth: int) -> str:
    cursor: str | None = None
    seen = 0
    while seen < depth or cursor is None:
        body = client.get("/api/incidents", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        seen += len(body["incidents"])
        cursor = body["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"the list ended after {seen} incidents")
    return cursor


def first_paints(url: str, loads: int, profile: Path) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not Path("/usr/bin/chromedriver").exists():
        return {"skipped": "needs chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"}
    samples: dict[str, list[float]] = {"first_contentful_paint_ms": [], "dom_content_loaded_ms": [],
                                       "load_ms": [], "incidents_drawn_ms": []}  # fmt: skip
    for n in range(loads):
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        flags = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run")  # fmt: skip
        for flag in (*flags, f"--user-data-dir={profile / str(n)}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url)
            deadline = time.monotonic() + 30
            found: dict[str, Any] = {}
            while time.monotonic() < deadline:
                found = driver.execute_script(
                    "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    "const d = performance.getEntriesByName('incidents-drawn')[0];"
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return {fcp: p ? p.startTime : null, drawn: d ? d.startTime : null,"
                    " dcl: n ? n.domContentLoadedEventEnd : null, load: n && n.loadEventEnd ? n.loadEventEnd : null};"
                )
                if found["fcp"] is not None and found["drawn"] is not None and found["load"]:
                    break
                time.sleep(0.05)
            for key, name in (("fcp", "first_contentful_paint_ms"), ("dcl", "dom_content_loaded_ms"),
                              ("load", "load_ms"), ("drawn", "incidents_drawn_ms")):  # fmt: skip
                if found.get(key) is not None:
                    samples[name].append(float(found[key]))
        finally:
            driver.quit()
    out: dict[str, Any] = {}
    for name, values in samples.items():
        if values:
            out[name] = {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}
    fcp = samples["first_contentful_paint_ms"]
    out["meets_target"] = bool(fcp) and statistics.median(fcp) < TARGET_FIRST_PAINT_MS
    return out


def run_console(nodes: int, incidents: int, requests: int, loads: int) -> dict[str, Any]:
    from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
    from s4edge.cloud_sync.aggregator.broker import BrokerConfig

    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="s4edge-bench-console-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'console.db'}"
        store = Store(make_engine(url))
        store.create_all()
        t0 = time.perf_counter()
        alerts = seed(store, nodes, incidents, now)
        seeded_s = time.perf_counter() - t0
        store.engine.dispose()
        with Mosquitto(folder / "broker") as broker:
            config = AggregatorConfig(BrokerConfig(broker.url), db_url=url, client_id="bench-console")
            with Aggregator(config) as aggregator, httpx.Client(base_url=aggregator.url, timeout=30) as client:
                client.get("/api/incidents").raise_for_status()  # warm: the first query loads the pages
                cursor = deep_cursor(client, incidents // 2)
                queries: dict[str, tuple[str, dict[str, Any]]] = {
                    "first_page": ("/api/incidents", {"limit": 50}),
                    "filtered": ("/api/incidents", {"state": "open", "severity": "Severe", "kind": "gas"}),
                    "deep_cursor_page": ("/api/incidents", {"cursor": cursor}),
                    "nodes": ("/api/nodes", {}),
                    "node_trends": ("/api/nodes/plaza/node-000/telemetry", {}),
                }
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as client_process:
                    api = {
                        name: client_process.submit(time_requests, aggregator.url, path, params, requests).result()
                        for name, (path, params) in queries.items()
                    }
                for entry in api.values():
                    entry["meets_target"] = entry["p95_ms"] < TARGET_API_P95_MS
                paint = first_paints(aggregator.url + "/", loads, folder / "chromium")
    return {
        "benchmark": "console",
        "store": "sqlite",
        "nodes": nodes,
        "incidents": incidents,
        "alerts": alerts,
        "seeded_s": round(seeded_s, 1),
        "requests": requests,
        "target_api_p95_ms": TARGET_API_P95_MS,
        "api": api,
        "loads": loads,
        "target_first_paint_ms": TARGET_FIRST_PAINT_MS,
        "first_paint": paint,
    }


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("console")
    def console(
        nodes: int = typer.Option(100, min=1, help="Nodes in the store"),
        incidents: int = typer.Option(10_000, min=10, help="Incidents in the store (2 to 6 alerts each)"),
        requests: int = typer.Option(40, min=5, help="Requests timed per API query"),
        loads: int = typer.Option(5, min=1, help="Page loads timed in headless Chromium"),
    ) -> None:
        """The operator's console with 100 nodes and 10,000 incidents: /api/incidents p95 and first paint."""
        typer.echo(json.dumps(run_console(nodes, incidents, requests, loads), indent=2))
