"""CO exposure alarm against the EN 50291-1 and UL 2034 alarm-time tables, with an
injected clock (one reading every 10 s)."""

from __future__ import annotations

import pytest

from s4edge.cloud_sync.messages import PRE_ALARM
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
    while drafts[-1].state != "end":  # fresh air: six minutes of it end the incident
        alarm.observe(0.0, t)
        t += 10.0
    assert len({d.incident for d in drafts}) == 1


def drafts_at(profile: str, ppm: float, minutes: float, time_scale: float = 1.0) -> list[tuple[float, AlertDraft]]:
    """(minute, draft) of a constant exposure, one reading every 10 s of exposure time."""
    drafts: list[tuple[float, AlertDraft]] = []
    t = 0.0
    book = IncidentBook(lambda d: drafts.append((t * time_scale / 60, d)), stale_after_s=None, max_duration_s=None)
    alarm = COAlarm("co:test", PROFILES[profile], book, "mq7", time_scale=time_scale)  # type: ignore[index]
    while t * time_scale <= minutes * 60:
        alarm.observe(ppm, t)
        t += 10.0 / time_scale
    return drafts


def is_marked_pre_alarm(draft: AlertDraft) -> bool:
    return any(m.quantity == PRE_ALARM and m.value == 1 for m in draft.measurements)


@pytest.mark.parametrize(
    ("profile", "ppm", "no_alarm_before", "alarm_by", "pre_alarm_before_bound"),
    # EN 50291-1 table (the pre-alarm comes at 43 min); UL 2034 alarm points (at 66 min)
    [("en50291", 50, 60, 90, True), ("ul2034", 70, 60, 240, False)],
)
def test_before_the_standards_no_alarm_bound_only_a_local_minor_pre_alarm(
    profile: str, ppm: float, no_alarm_before: float, alarm_by: float, pre_alarm_before_bound: bool
) -> None:
    drafts = drafts_at(profile, ppm, alarm_by)
    early = [d for minute, d in drafts if minute < no_alarm_before]
    assert bool(early) == pre_alarm_before_bound
    assert all(d.severity == "Minor" and is_marked_pre_alarm(d) for d in early), early
    assert all("pre-alarm" in (d.title or "") for d in early)
    alarms = [(minute, d) for minute, d in drafts if d.severity in ("Severe", "Extreme")]
    assert alarms and no_alarm_before <= alarms[0][0] <= alarm_by, alarms[:1]
    assert not is_marked_pre_alarm(alarms[0][1]) and alarms[0][1].title.startswith("CO alarm")


def test_an_alarm_ends_without_stepping_back_to_a_pre_alarm() -> None:
    drafts: list[AlertDraft] = []
    alarm = COAlarm("co:test", PROFILES["en50291"], IncidentBook(drafts.append, stale_after_s=None), "mq7")
    t = 0.0
    while not drafts or drafts[-1].severity == "Minor":
        alarm.observe(100.0, t)
        t += 10.0
    assert drafts[-1].severity == "Severe"
    while drafts[-1].state != "end":
        alarm.observe(0.0, t)
        t += 10.0
    after = drafts[[d.severity for d in drafts].index("Severe") :]
    assert {d.severity for d in after} == {"Severe"}, [(d.state, d.severity) for d in after]


def test_a_compressed_scenario_clock_keeps_the_windows_and_names_the_clock() -> None:
    drafts = drafts_at("en50291", 100, 45, time_scale=60)
    alarms = [(minute, d) for minute, d in drafts if d.severity == "Severe"]
    assert alarms and 10 <= alarms[0][0] <= 40  # EN 50291-1: 100 ppm alarms in 10–40 min of exposure
    assert all("scenario clock ×60" in (d.detail or "") for _, d in drafts)
    assert "scenario clock" not in (drafts_at("en50291", 100, 45)[-1][1].detail or "")


def test_readings_either_side_of_the_extreme_line_do_not_flap() -> None:
    # Extreme came from the instantaneous ppm: 299, 301, 299 … sent an alert at every poll
    drafts: list[AlertDraft] = []
    book = IncidentBook(drafts.append, update_interval_s=5.0)
    alarm = COAlarm("co:mq7", PROFILES["en50291"], book, "mq7")
    t = 0.0
    for _ in range(600):  # ten minutes at 300 ppm: the alarm, Extreme
        alarm.observe(300.0, t)
        t += 1
    assert drafts[-1].severity == "Extreme"
    before = len(drafts)
    for i in range(60):
        alarm.observe(299.0 if i % 2 else 301.0, t)
        t += 1
    assert {d.severity for d in drafts[before:]} == {"Extreme"} and len(drafts) - before <= 13  # updates only
    for _ in range(60):  # well below: Severe again, once
        alarm.observe(200.0, t)
        t += 1
    assert [d.severity for d in drafts[before:]][-1] == "Severe"


def exposure(
    profile: str, timeline: list[tuple[float, float]], time_scale: float = 1.0
) -> list[tuple[float, AlertDraft]]:
    """(exposure minute, draft) of a stepwise exposure: ``timeline`` is (ppm, minutes) held
    one after the other, one reading every 10 s of exposure time."""
    drafts: list[tuple[float, AlertDraft]] = []
    t = 0.0
    book = IncidentBook(lambda d: drafts.append((t * time_scale / 60, d)), stale_after_s=None, max_duration_s=None)
    alarm = COAlarm("co:test", PROFILES[profile], book, "mq7", time_scale=time_scale)  # type: ignore[index]
    start = 0.0
    for ppm, minutes in timeline:
        start += minutes * 60
        while t * time_scale < start:
            alarm.observe(ppm, t)
            t += 10.0 / time_scale
    return drafts


def index_of(draft: AlertDraft) -> float:
    return next(m.value for m in draft.measurements if m.quantity == "co_exposure_index")


@pytest.mark.parametrize(("profile", "clean_below"), [("en50291", 40), ("ul2034", 50)])
def test_clean_air_ends_the_alarm_after_six_minutes_though_the_exposure_index_is_still_high(
    profile: str, clean_below: float
) -> None:
    # 2 h at 300 ppm then 3 h at 3 ppm: the index (≈2.2 after 3 h) kept the alarm Severe
    # ("CO alarm: 3 ppm, exposure index 2.2") for 4.5 h of clean air
    drafts = exposure(profile, [(300.0, 120), (3.0, 180)])
    after = [(minute, d) for minute, d in drafts if minute > 120]
    ends = [(minute, d) for minute, d in after if d.state == "end"]
    assert ends, [(round(m), d.state, d.severity, d.title) for m, d in after[-3:]]
    minute, end = ends[0]
    assert 126 <= minute <= 126.5, minute  # six minutes of clean air (UL 2034 / EN 50291-1 alarms)
    assert after[-1] == ends[0], "no pre-alarm or alarm again while the air stays clean"
    assert index_of(end) >= 1.0, "the exposure index alone would still hold the alarm"
    assert f"below {clean_below} ppm for 6 min" in (end.detail or ""), end.detail
    assert {d.severity for _, d in after if d.state != "end"} <= {"Severe", "Extreme"}, "never a pre-alarm"


def test_co_coming_back_after_a_clean_air_end_alarms_again_within_a_minute() -> None:
    # The exposure index still decides: back at 100 ppm with the index above the alarm
    # point, the alarm comes once CO has held for CO_BACK_S (within UL 2034's 6 min), not
    # after another 10–40 min
    drafts = exposure("en50291", [(300.0, 30), (3.0, 10), (100.0, 2)])
    incidents = list(dict.fromkeys(d.incident for _, d in drafts))
    assert len(incidents) == 2, [(round(m, 1), d.state, d.severity) for m, d in drafts]
    first_of_second = next((m, d) for m, d in drafts if d.incident == incidents[1])
    assert first_of_second[1].state == "new" and first_of_second[1].severity == "Severe"
    assert first_of_second[0] <= 41 + 1 / 6, first_of_second[0]


def test_co_driving_the_index_up_after_a_clean_air_end_alarms_at_once() -> None:
    # after 80 min of clean air the index has decayed to 4.7: 100 ppm ((100/40)^1.8 = 5.2)
    # drives it up, and that is no noise
    drafts = exposure("en50291", [(300.0, 30), (3.0, 80), (100.0, 1)])
    incidents = list(dict.fromkeys(d.incident for _, d in drafts))
    assert len(incidents) == 2, [(round(m, 1), d.state, d.severity) for m, d in drafts]
    assert next(m for m, d in drafts if d.incident == incidents[1]) <= 110 + 1 / 6


def test_a_dip_below_the_clean_air_line_shorter_than_six_minutes_keeps_the_alarm() -> None:
    drafts = exposure("en50291", [(300.0, 30), (10.0, 5), (60.0, 5), (10.0, 5)])
    assert len({d.incident for _, d in drafts}) == 1
    assert all(d.state != "end" for _, d in drafts)


def test_air_between_the_clean_air_line_and_the_tables_lowest_row_keeps_the_alarm() -> None:
    # 45 ppm is under EN 50291-1's 50 ppm row but over c_ref (40 ppm): the index alarms
    # there on its own (after 113 min), so it is not clean air and must not end the alarm
    drafts = exposure("en50291", [(300.0, 30), (45.0, 180)])
    assert all(d.state != "end" for _, d in drafts), [(round(m), d.state) for m, d in drafts if d.state == "end"]


def test_the_clean_air_hold_runs_on_the_scenario_clock() -> None:
    drafts = exposure("en50291", [(300.0, 20), (3.0, 30)], time_scale=60)
    minute, end = next((m, d) for m, d in drafts if d.state == "end")
    assert 26 <= minute <= 26.5, minute
    assert "scenario clock ×60" in (end.detail or "")


def test_one_reading_at_the_clean_air_line_after_a_clean_air_end_opens_no_new_alarm() -> None:
    # a single noisy 41 ppm reading (its (c/c_ref)^n under the leftover index) opened a new
    # Severe incident, and so a second PSAP call, for the same event
    drafts = exposure("en50291", [(300.0, 30), (3.0, 10), (41.0, 1 / 6), (3.0, 10)])
    assert len({d.incident for _, d in drafts}) == 1, [(round(m, 1), d.state, d.severity) for m, d in drafts]


def test_co_staying_at_the_clean_air_line_after_a_clean_air_end_alarms_again() -> None:
    # held for a minute it is CO come back, not noise: the index decides again
    drafts = exposure("en50291", [(300.0, 30), (3.0, 10), (41.0, 5)])
    incidents = list(dict.fromkeys(d.incident for _, d in drafts))
    assert len(incidents) == 2, [(round(m, 1), d.state, d.severity) for m, d in drafts]
    minute = next(m for m, d in drafts if d.incident == incidents[1])
    assert 41 <= minute <= 41.5, minute


def test_an_end_held_by_the_book_keeps_its_clean_air_reason() -> None:
    # with alerts.hold_s for co, the next reading's clear replaced the reason with
    # "CO exposure index back to 12.10", far above the alarm point
    drafts: list[AlertDraft] = []
    t = 0.0
    book = IncidentBook(drafts.append, hold_s={"co": 60.0}, stale_after_s=None, max_duration_s=None)
    alarm = COAlarm("co:test", PROFILES["en50291"], book, "mq7")
    for ppm, minutes in [(300.0, 120), (3.0, 10)]:
        for _ in range(int(minutes * 6)):
            alarm.observe(ppm, t)
            book.expire(t)
            t += 10.0
    end = next(d for d in drafts if d.state == "end")
    assert "clean air, the alarm ends" in (end.detail or ""), end.detail
