"""`s4edge bench sensing` runs and prints its three figures as JSON (timings are
reported by the benchmark, never asserted here)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from s4edge.bench.sensing import register


def test_bench_prints_json_figures() -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    args = ["sensing", "--rounds", "5", "--trials", "2", "--period-s", "0.05", "--iterations", "10"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["poll"]["sensors"] == 6 and figures["poll"]["cpu_us_per_sensor_per_poll_median"] > 0
    assert figures["alert_latency"]["trials"] == 2 and figures["alert_latency"]["latency_ms_median"] > 0
    assert figures["nir"]["plsda_synthetic"]["points"] == 228
    assert figures["nir"]["plsda_synthetic"]["ms_per_spectrum_median"] > 0
