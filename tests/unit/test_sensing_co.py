"""CO exposure alarm against the EN 50291-1 and UL 2034 alarm-time tables, with an
injected clock (one reading every 10 s)."""

from __future__ import annotations

import pytest

from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.sensing.co import PROFILES, COAlarm


def minutes_to_alarm(profile: str, ppm: float, horizon_min: float) -> float | None:
    drafts: list[AlertDraft] = []
    book = IncidentBook(drafts.append, stale_after_s=None, max_duration_s=None)
    alarm = COAlarm("co:test", PROFILES[profile], book, "mq7")  # type: ignore[index]
    t = 0.0
    while t <= horizon_min * 60:
        if alarm.observe(ppm, t) in ("Severe", "Extreme"):
            return t / 60
        t += 10.0
    return None


@pytest.mark.parametrize(
    ("ppm", "earliest", "latest"),
    [(50, 60, 90), (100, 10, 40), (300, 0, 3)],  # EN 50291-1 alarm-time table
)
def test_en50291_alarm_windows(ppm: float, earliest: float, latest: float) -> None:
    t = minutes_to_alarm("en50291", ppm, horizon_min=latest + 10)
    assert t is not None and earliest <= t <= latest, t


@pytest.mark.parametrize(("ppm", "earliest", "latest"), [(70, 60, 240), (150, 10, 50), (400, 4, 15)])
def test_ul2034_alarm_windows(ppm: float, earliest: float, latest: float) -> None:
    t = minutes_to_alarm("ul2034", ppm, horizon_min=latest + 10)
    assert t is not None and earliest <= t <= latest, t


@pytest.mark.parametrize("profile", ["en50291", "ul2034"])
def test_no_alert_at_30_ppm_for_two_hours(profile: str) -> None:
    drafts: list[AlertDraft] = []
    alarm = COAlarm("co:test", PROFILES[profile], IncidentBook(drafts.append), "mq7")  # type: ignore[index]
    for step in range(0, 2 * 3600 + 1, 10):
        alarm.observe(30.0, float(step))
    assert drafts == []


def test_alarm_lifecycle_and_standard_named_in_the_alert() -> None:
    drafts: list[AlertDraft] = []
    alarm = COAlarm("co:test", PROFILES["en50291"], IncidentBook(drafts.append, stale_after_s=None), "mq7")
    t = 0.0
    while not drafts or drafts[-1].severity != "Extreme":
        alarm.observe(400.0, t)
        t += 10.0
    assert drafts[0].state == "new"
    assert "EN 50291" in (drafts[-1].detail or "")
    quantities = {m.quantity: m.value for m in drafts[-1].measurements}
    assert quantities["co"] == 400.0 and quantities["co_exposure_index"] >= 1.0
    while drafts[-1].state != "end":  # fresh air: the index decays and the incident ends
        alarm.observe(0.0, t)
        t += 10.0
    assert len({d.incident for d in drafts}) == 1
