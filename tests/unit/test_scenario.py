"""Scenario timelines: interpolation, built-ins, and the scenario source's rules."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from s4edge.cloud_sync.messages import Measurement
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.scenario import Config, Scenario, ScenarioSource, builtins, resolve
from s4edge.edge.sources import SourceContext


class RecordingHealth:
    def __init__(self) -> None:
        self.states: dict[str, object] = {}

    def set(self, key: str, value: object) -> None:
        self.states[key] = value


def test_values_are_linearly_interpolated_and_held_at_the_ends() -> None:
    sc = Scenario(name="x", duration_s=10, signals={"a": [(0, 0), (4, 8), (10, 2)]})
    assert sc.value("a", -1) == 0
    assert sc.value("a", 2) == pytest.approx(4)
    assert sc.value("a", 4) == pytest.approx(8)
    assert sc.value("a", 7) == pytest.approx(5)
    assert sc.value("a", 99) == 2


def test_unsorted_times_are_refused() -> None:
    with pytest.raises(ValueError, match="times must increase"):
        Scenario(name="x", duration_s=10, signals={"a": [(5, 0), (1, 1)]})


def test_builtin_gas_leak_resolves_by_name() -> None:
    assert "gas_leak" in builtins()
    sc = Scenario.load(resolve(Path("gas_leak")))
    assert {"methane_lel", "flame", "co_ppm"} <= sc.signals.keys()
    with pytest.raises(ValueError, match="not found"):
        resolve(Path("no_such_scenario"))


def test_scenario_steps_raise_and_clear_one_incident() -> None:
    sent: list[AlertDraft] = []
    readings: list[list[Measurement]] = []
    book = IncidentBook(sent.append, update_interval_s=0)
    config = Config.model_validate(
        {
            "type": "scenario",
            "file": "gas_leak",
            "sensors": [
                {
                    "signal": "flame",
                    "kind": "flame",
                    "quantity": "flame",
                    "unit": "1",
                    "levels": [{"on_at": 0.5, "severity": "Extreme"}],
                },
            ],
        }
    )
    source = ScenarioSource(config, Scenario.load(resolve(config.file)), book)
    health = RecordingHealth()
    ctx = SourceContext(
        emit=sent.append, telemetry=readings.append, health=health, stop=threading.Event(), clock=lambda: 0.0
    )
    for t in range(0, 61, 1):
        source.step(float(t), float(t), ctx)
    assert [d.state for d in sent] == ["new", "end"]
    assert sent[0].incident == sent[1].incident and sent[0].severity == "Extreme"
    assert len(readings) == 61 and readings[31][0].value == 1
    assert health.states["scenario"] == "ok"


def test_sensor_on_a_missing_signal_is_refused() -> None:
    config = Config.model_validate(
        {
            "type": "scenario",
            "file": "gas_leak",
            "sensors": [
                {
                    "signal": "nope",
                    "kind": "gas",
                    "quantity": "q",
                    "unit": "u",
                    "levels": [{"on_at": 1, "severity": "Minor"}],
                }
            ],
        }
    )
    with pytest.raises(ValueError, match="nope"):
        ScenarioSource(config, Scenario.load(resolve(config.file)), IncidentBook(lambda d: None))


def test_a_co_sensor_alarms_by_exposure_never_by_threshold() -> None:
    co = {"signal": "co_ppm", "kind": "co", "quantity": "carbon_monoxide", "unit": "ppm"}
    with pytest.raises(ValueError, match=r"CO alarms by exposure, not by threshold.*profile: en50291"):
        Config.model_validate(
            {
                "type": "scenario",
                "file": "gas_leak",
                "sensors": [{**co, "levels": [{"on_at": 50, "severity": "Moderate"}]}],
            }
        )
    with pytest.raises(ValueError, match="'profile' is for kind co only"):
        Config.model_validate(
            {"type": "scenario", "file": "gas_leak", "sensors": [{**co, "kind": "gas", "profile": "en50291"}]}
        )
    config = Config.model_validate(
        {"type": "scenario", "file": "boiler_co", "speed": 60, "sensors": [{**co, "profile": "en50291"}]}
    )
    assert "boiler_co" in builtins()
    source = ScenarioSource(config, Scenario.load(resolve(config.file)), IncidentBook(lambda d: None))
    assert source.alarms[0].time_scale == 60  # type: ignore[union-attr]
