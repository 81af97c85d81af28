"""The ng112 benchmark runs end to end (few forwards; the figures come from `s4edge bench ng112`)."""

from __future__ import annotations

import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from s4edge.bench.ng112 import register


@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)")
def test_the_benchmark_prints_percentiles_and_the_ratio_to_target():
    bench = typer.Typer()
    register(bench)
    bench.command("other")(lambda: None)  # a group with two commands keeps "ng112" as a subcommand
    result = CliRunner().invoke(bench, ["ng112", "--count", "5", "--transport", "udp"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["forwards"], report["delivered"], report["failed"]) == (5, 5, 0)
    assert 0 < report["received_to_200_ms"]["p50"] <= report["received_to_200_ms"]["p99"]
    assert report["p99_to_target"] == pytest.approx(report["received_to_200_ms"]["p99"] / 200.0, abs=1e-3)
