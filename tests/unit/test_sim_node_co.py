"""The simulated node's CO sensor (firmware_configs/sim-node.yaml, plant-room) alarms by
exposure after EN 50291-1, on its labelled scenario clock ×60, within a demo's run: a
real alarm reached at a constant 100 ppm after minutes of exposure, not a threshold."""

from __future__ import annotations

import threading

from s4edge.cloud_sync.messages import PRE_ALARM, Measurement
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.config import load_config
from s4edge.edge.scenario import Scenario, ScenarioSource, resolve
from s4edge.edge.sensing.co import COAlarm
from s4edge.edge.sources import SourceContext
from s4edge.resources import packaged

SIM_NODE = packaged("firmware_configs", "sim-node.yaml")


class Health:
    def set(self, key: str, value: object) -> None:
        pass


def test_the_sim_nodes_co_sensor_raises_a_real_en50291_alarm_within_a_demo_run() -> None:
    config = load_config(SIM_NODE)
    (co_source,) = [s for s in config.sources if any(sensor.kind == "co" for sensor in s.sensors)]
    assert co_source.speed == 60 and all(s.profile == "en50291" for s in co_source.sensors if s.kind == "co")

    sent: list[tuple[float, AlertDraft]] = []
    now = 0.0
    book = IncidentBook(lambda draft: sent.append((now, draft)), update_interval_s=5, stale_after_s=60)
    source = ScenarioSource(co_source, Scenario.load(resolve(co_source.file)), book)
    assert any(isinstance(alarm, COAlarm) for alarm in source.alarms), "CO must alarm by exposure"
    readings: list[list[Measurement]] = []
    ctx = SourceContext(emit=lambda draft: None, telemetry=readings.append, health=Health(), stop=threading.Event(),
                        clock=lambda: now)  # fmt: skip
    while now <= 40 and not any(d.severity == "Severe" for _, d in sent):  # `s4edge demo --duration 40`
        source.step(now * co_source.speed, now, ctx)
        now += co_source.period_s

    alarm_at, alarm = next(((t, d) for t, d in sent if d.severity == "Severe"), (None, None))
    assert alarm is not None and alarm_at is not None, [(t, d.severity, d.title) for t, d in sent]
    values = {m.quantity: m.value for m in alarm.measurements}
    assert values["co_exposure_index"] >= 1.0 and PRE_ALARM not in values
    assert "EN 50291-1" in (alarm.detail or "") and "scenario clock ×60" in (alarm.detail or "")
    # Not a threshold: the CO had been at the same 100 ppm for over 10 scenario minutes
    # (EN 50291-1: 100 ppm alarms in 10–40 min), and until then only a local pre-alarm went.
    at_100 = next(i for i, r in enumerate(readings) if r[0].value >= 100)
    assert values["co"] == 100 and 10 <= (alarm_at - at_100 * co_source.period_s) <= 40
    before = [d for t, d in sent if t < alarm_at]
    assert before and all(d.severity == "Minor" and "pre-alarm" in (d.title or "") for d in before)
