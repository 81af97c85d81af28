"""``s4edge bench sensing``: what the sensing side costs and how fast it reacts.

- **poll**: CPU per sensor per poll of the simulated rig (examples/sensors-sim.yaml:
  BME280, 2 × MQ on an ADS1115, SCD4x, SGP30, flame contact), through the real
  drivers. It includes the simulators' own work (the BME280 simulator inverts the
  compensation by bisection), so it is an upper bound for the driver side; the
  simulator-only cost of a BME280 measurement is reported beside it.
- **alert latency**: a methane step past 40 %LEL on the simulated ADC until the alert
  is durable in a real ``cloud_sync.outbox.Outbox`` (fsynced SQLite), with the
  source's own poll loop on a thread. Target: ≤ 1 poll period + 10 ms.
- **nir**: one spectrum through preprocessing, PLS-DA and the T²/Q gate. Target ≤ 5 ms.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from s4edge.cloud_sync.messages import Location, encode
from s4edge.cloud_sync.outbox import Outbox
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.sensing.cli import EXAMPLE, load_sensors_config
from s4edge.edge.sensing.rig import SimWorld, build_source
from s4edge.edge.sensing.source import Config
from s4edge.edge.sources import SourceContext

NIR_TARGET_MS = 5.0
LATENCY_SLACK_S = 0.010


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_poll(rounds: int) -> dict[str, Any]:
    config = load_sensors_config(EXAMPLE, sim=True).model_copy(update={"calibration_file": Path("/nonexistent")})
    clock = [0.0]  # simulated time: one round per simulated second
    source = build_source(config, IncidentBook(lambda d: None), clock=lambda: clock[0])
    for probe in source.probes:
        if hasattr(probe, "sensor"):
            probe.sensor.powered_at -= 3600  # heaters warm
    world = source.world
    assert isinstance(world, SimWorld)
    per_round = []
    for i in range(rounds):  # the source's own poll path: drivers, health, range checks, alarms
        clock[0] = float(i)
        world.apply(float(i))
        source.due = dict.fromkeys(source.due, 0.0)
        start = time.process_time()
        source.poll_once(float(i))
        per_round.append(time.process_time() - start)
    per_probe: dict[str, list[float]] = {p.name: [] for p in source.probes}
    for i in range(rounds, 2 * rounds):
        clock[0] = float(i)
        for probe in source.probes:
            start = time.process_time()
            sample = probe.poll(float(i))
            if sample is not None:
                probe.judge(sample, float(i))
            per_probe[probe.name].append(time.process_time() - start)
    bme = world.chips["climate"]
    sim_only = []
    for _ in range(200):
        start = time.process_time()
        bme.raw_values()  # type: ignore[union-attr]  # the example's climate sensor is a BME280
        sim_only.append(time.process_time() - start)
    n = len(source.probes)
    per_sensor = statistics.median(per_round) / n
    return {
        "sensors": n,
        "rounds": rounds,
        "cpu_us_per_sensor_per_poll_median": round(per_sensor * 1e6, 1),
        "cpu_percent_of_one_core_per_sensor_at_1hz": round(per_sensor * 100, 4),
        "cpu_us_per_poll_by_sensor_median": {k: round(statistics.median(v) * 1e6, 1) for k, v in per_probe.items()},
        "bme280_simulator_only_us_median": round(statistics.median(sim_only) * 1e6, 1),
    }


class _Health:
    def set(self, key: str, value: Any) -> None:
        pass


def bench_alert_latency(trials: int, period_s: float) -> dict[str, Any]:
    config = Config.model_validate(
        {"type": "sensors", "bus": "sim", "period_s": period_s, "calibration_file": "/nonexistent",
         "sensors": [{"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 0}]}
    )  # fmt: skip
    stored = threading.Condition()
    stored_at: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp, Outbox(Path(tmp) / "outbox.db") as outbox:

        def emit(draft: AlertDraft) -> None:
            alert = draft.stamped("bench", "bench", Location(lat=48.1, lon=11.5))
            outbox.put_next("s4edge/v1/bench/bench/alert", lambda seq: encode(alert.model_copy(update={"seq": seq})))
            with stored:
                stored_at.append((time.perf_counter(), draft.state))
                stored.notify_all()

        book = IncidentBook(emit, update_interval_s=3600)
        source = build_source(config, book)
        world = source.world
        assert isinstance(world, SimWorld)
        world.set_ppm("mq2", 0.0)
        polled_at: list[float] = []
        poll = source.poll_once

        def timed_poll(now: float) -> list[Any]:
            polled_at.append(time.perf_counter())
            return poll(now)

        source.poll_once = timed_poll  # type: ignore[method-assign]
        stop = threading.Event()
        ctx = SourceContext(emit=emit, telemetry=lambda r: None, health=_Health(), stop=stop, clock=time.monotonic)
        thread = threading.Thread(target=source.run, args=(ctx,), daemon=True)
        thread.start()
        latencies, overheads = [], []
        for trial in range(trials):
            time.sleep(period_s * (0.3 + 0.7 * (trial % 7) / 7))  # steps land at varied phases of the poll
            for ppm, state in ((25_000.0, "new"), (0.0, "end")):  # 50 %LEL, then clean air
                with stored:
                    seen = len(stored_at)
                    start = time.perf_counter()
                    world.set_ppm("mq2", ppm)
                    if not stored.wait_for(lambda n=seen: len(stored_at) > n, timeout=5 * period_s + 1):  # type: ignore[misc]
                        raise RuntimeError(f"no {state} alert within the timeout")
                    if state == "new":
                        done = stored_at[-1][0]
                        latencies.append(done - start)
                        overheads.append(done - max(t for t in polled_at if t <= done))
        stop.set()
        thread.join(timeout=5)
    target = period_s + LATENCY_SLACK_S
    p95 = _pct(latencies, 95)
    return {
        "trials": trials,
        "period_s": period_s,
        "to": "s4edge.cloud_sync.outbox.Outbox (durable put)",
        "latency_ms_median": round(statistics.median(latencies) * 1e3, 2),
        "latency_ms_p95": round(p95 * 1e3, 2),
        "latency_ms_max": round(max(latencies) * 1e3, 2),
        "target_ms": round(target * 1e3, 1),
        "p95_over_target": round(p95 / target, 3),
        "poll_to_durable_ms_median": round(statistics.median(overheads) * 1e3, 2),
        "poll_to_durable_ms_p95": round(_pct(overheads, 95) * 1e3, 2),
        "poll_to_durable_target_ms": LATENCY_SLACK_S * 1e3,
    }


def _time_predictions(model: Any, spectrum: Any, iterations: int) -> dict[str, Any]:
    model.predict(spectrum)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        model.predict(spectrum)
        times.append(time.perf_counter() - start)
    p95 = _pct(times, 95)
    return {
        "points": len(spectrum),
        "components": model.n_components,
        "ms_per_spectrum_median": round(statistics.median(times) * 1e3, 4),
        "ms_per_spectrum_p95": round(p95 * 1e3, 4),
        "target_ms": NIR_TARGET_MS,
        "p95_over_target": round(p95 * 1e3 / NIR_TARGET_MS, 4),
    }


def bench_nir(iterations: int) -> dict[str, Any]:
    """SNV + Savitzky-Golay + PLS(-DA) + T²/Q gate, one spectrum at a time."""
    from s4edge.edge.sensing.chemometrics import Preprocess, fit
    from s4edge.edge.sensing.nir_synthetic import synthetic_library

    x, labels, wl = synthetic_library(per_class=15)
    plsda = fit(x, labels, wl, kind="classification", preprocess=Preprocess(sg_window=11), max_components=6)
    result = {"iterations": iterations, "plsda_synthetic": _time_predictions(plsda, x[0], iterations)}
    corn = Path(__file__).resolve().parents[2].parent / "shared/data/nir/corn/Data_Corn.mat"
    if corn.exists():
        import scipy.io

        mat = scipy.io.loadmat(corn)
        pls = fit(mat["Xcal1"], mat["ycal"].ravel(), mat["wv"].ravel())
        result["pls_corn"] = _time_predictions(pls, mat["Xtest1"][0], iterations)
    return result


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("sensing")
    def sensing(
        rounds: int = typer.Option(500, help="Poll rounds for the CPU figure."),
        trials: int = typer.Option(20, help="Threshold crossings for the latency figure."),
        period_s: float = typer.Option(0.25, help="Poll period for the latency figure."),
        iterations: int = typer.Option(2000, help="NIR predictions."),
    ) -> None:
        """Sensor poll CPU, threshold → outbox latency, NIR time per spectrum (JSON)."""
        result = {
            "poll": bench_poll(rounds),
            "alert_latency": bench_alert_latency(trials, period_s),
            "nir": bench_nir(iterations),
        }
        typer.echo(json.dumps(result, indent=2))
