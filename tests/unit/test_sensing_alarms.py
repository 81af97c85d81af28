"""% LEL gas alarm, debounced detector contacts and the heat (rate-of-rise) alarm."""

from __future__ import annotations

import pytest

from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.sensing.alarms import LEL_PERCENT_VOL, HeatAlarm, detector_alarm, gas_alarm, lel_percent


def test_lel_computation() -> None:
    assert lel_percent(50_000, LEL_PERCENT_VOL["methane"]) == pytest.approx(100.0)
    assert lel_percent(5_000, LEL_PERCENT_VOL["methane"]) == pytest.approx(10.0)
    assert lel_percent(8_400, LEL_PERCENT_VOL["propane"]) == pytest.approx(40.0)


def test_gas_warning_then_alarm_then_clear() -> None:
    drafts: list[AlertDraft] = []
    alarm = gas_alarm("gas:mq2", IncidentBook(drafts.append, update_interval_s=0))
    for t, lel in enumerate([2, 12, 15, 41, 45, 20, 9, 7]):
        alarm.observe(lel, float(t))
    assert [(d.state, d.severity) for d in drafts] == [
        ("new", "Moderate"), ("update", "Moderate"), ("update", "Severe"), ("update", "Severe"),
        ("update", "Moderate"), ("update", "Moderate"), ("end", "Moderate"),
    ]  # fmt: skip
    assert drafts[0].kind == "gas" and drafts[2].measurements[0].unit == "%LEL"


def test_detector_contact_is_debounced() -> None:
    drafts: list[AlertDraft] = []
    alarm = detector_alarm("smoke:1", "smoke", IncidentBook(drafts.append), "Severe", debounce_s=2.0)
    for t, level in [(0, 1), (0.5, 0), (1, 1), (1.5, 0)]:  # chatter shorter than the debounce
        alarm.observe(level, t)
    assert drafts == []
    for t in (2, 3, 4, 5):
        alarm.observe(1, float(t))
    assert [(d.kind, d.state, d.severity) for d in drafts] == [("smoke", "new", "Severe")]
    for t in (6, 7, 8.5):
        alarm.observe(0, t)
    assert drafts[-1].state == "end"


def test_a_detector_contact_waiting_to_clear_sends_no_update_with_the_open_contact() -> None:
    """A smoke contact in alarm for a while, then released: during its debounce the
    incident is not updated to state 0 at Severe; the end follows the debounce."""
    drafts: list[AlertDraft] = []
    alarm = detector_alarm("smoke:1", "smoke", IncidentBook(drafts.append), "Severe", debounce_s=2.0)
    for t in range(10):
        alarm.observe(1, float(t))
    for t in (10, 11, 12):
        alarm.observe(0, float(t))
    assert [(d.state, d.measurements[0].value) for d in drafts] == [("new", 1), ("end", 1)]


def test_rate_of_rise_trips_before_the_fixed_temperature() -> None:
    drafts: list[AlertDraft] = []
    heat = HeatAlarm("heat:bme", IncidentBook(drafts.append), "bme")
    t, temp = 0.0, 22.0
    for _ in range(120):  # steady room: no alarm
        heat.observe(temp, t)
        t += 1.0
    assert drafts == []
    while not drafts:  # a fire: +12 °C/min
        temp += 0.2
        heat.observe(temp, t)
        t += 1.0
    assert temp < 35.0  # the rate-of-rise element, not the fixed 58 °C point, tripped it
    assert "rate of rise" in (drafts[0].title or "")
    rate = {m.quantity: m.value for m in drafts[0].measurements}["temperature_rate"]
    assert 8.0 <= rate <= 12.0  # the regression window still holds some of the steady minutes


def test_slow_warming_alarms_only_at_the_fixed_temperature() -> None:
    drafts: list[AlertDraft] = []
    heat = HeatAlarm("heat:bme", IncidentBook(drafts.append, stale_after_s=None), "bme")
    t, temp = 0.0, 40.0
    while not drafts:
        temp += 2.0 / 60  # 2 °C/min
        heat.observe(temp, t)
        t += 1.0
    assert temp == pytest.approx(58.0, abs=0.1)
    assert "fixed temperature" in (drafts[0].title or "")
