"""Flap suppression at the source (issue 13): an incident ends only after its condition
stayed absent for its kind's hold time, a re-trigger within the cooldown after an end
continues the same incident, and a broken track re-identified in the zone keeps its dwell.
Time is injected; no sleeps."""

from __future__ import annotations

import itertools

import pytest

from s4edge.edge.alerts import AlertDraft, Content, IncidentBook, Level, ThresholdRule, ValueAlarm
from s4edge.edge.config import DEFAULT_HOLD_S, ConfigError, LifecycleConfig, parse_config
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.tracker import Track

ZONE = {"name": "door", "polygon": [[0.4, 0.4], [0.8, 0.4], [0.8, 1.0], [0.4, 1.0]]}


def make_book(**kwargs) -> tuple[IncidentBook, list[AlertDraft]]:
    sent: list[AlertDraft] = []
    counter = itertools.count()
    book = IncidentBook(sent.append, new_id=lambda: f"incident-{next(counter):04d}", **kwargs)
    return book, sent


def states(sent: list[AlertDraft]) -> list[str]:
    return [d.state for d in sent]


# --- hold time ------------------------------------------------------------------------


def test_an_absence_shorter_than_the_hold_does_not_end_the_incident() -> None:
    book, sent = make_book(hold_s={"intrusion": 3.0})
    book.raise_("k", "intrusion", "Severe", 0.0, Content(title="in"))
    book.clear("k", 1.0, detail="zone clear")
    book.clear("k", 3.9, detail="zone clear")  # absent 2.9 s < 3 s
    book.expire(3.9)
    assert states(sent) == ["new"] and book.is_open("k")
    book.raise_("k", "intrusion", "Severe", 4.0, Content(title="in"))  # back: it never ended
    book.clear("k", 5.0, detail="zone clear")
    book.clear("k", 7.5, detail="zone clear")  # the hold counts again from 5.0
    assert states(sent) == ["new"]


def test_an_absence_as_long_as_the_hold_ends_it_naming_the_hold() -> None:
    book, sent = make_book(hold_s={"intrusion": 3.0})
    book.raise_("k", "intrusion", "Severe", 0.0, Content(title="in"))
    book.clear("k", 1.0, detail="zone clear")
    book.clear("k", 4.0, detail="zone clear")
    assert states(sent) == ["new", "end"]
    assert sent[1].incident == sent[0].incident and sent[1].detail == "zone clear (for 3 s)"
    assert not book.is_open("k")


def test_the_tick_ends_a_held_incident_that_nobody_clears_again() -> None:
    book, sent = make_book(hold_s={"crowd": 15.0})
    book.raise_("k", "crowd", "Moderate", 0.0)
    book.clear("k", 2.0, detail="2 people")
    book.expire(16.9)
    assert states(sent) == ["new"]
    book.expire(17.0)
    assert states(sent) == ["new", "end"] and sent[-1].detail == "2 people (for 15 s)"


def test_the_hold_is_per_kind_and_kinds_not_named_end_at_once() -> None:
    book, sent = make_book(hold_s={"loitering": 15.0})
    book.raise_("a", "loitering", "Moderate", 0.0)
    book.raise_("b", "gas", "Severe", 0.0)
    book.clear("a", 1.0)
    book.clear("b", 1.0, detail="methane back to 2 %LEL")
    assert [(d.kind, d.state) for d in sent] == [("loitering", "new"), ("gas", "new"), ("gas", "end")]


def test_clear_all_ends_at_once_whatever_the_hold() -> None:
    book, sent = make_book(hold_s={"intrusion": 3.0}, cooldown_s=30.0)
    book.raise_("k", "intrusion", "Severe", 0.0)
    book.clear("k", 1.0)
    book.clear_all(1.5, "config reloaded")
    assert states(sent) == ["new", "end"] and sent[-1].detail == "config reloaded"
    book.raise_("k", "intrusion", "Severe", 2.0)  # a forced end is never continued
    assert sent[-1].state == "new" and sent[-1].incident != sent[0].incident


# --- cooldown -------------------------------------------------------------------------


def test_a_retrigger_inside_the_cooldown_continues_the_incident_as_an_update() -> None:
    book, sent = make_book(cooldown_s=30.0)
    book.raise_("k", "intrusion", "Severe", 0.0, Content(title="1 × person in door"))
    book.clear("k", 2.0, detail="zone clear")
    book.expire(10.0)
    book.raise_("k", "intrusion", "Severe", 31.9, Content(title="1 × person in door"))  # 29.9 s after the end
    assert states(sent) == ["new", "end", "update"]
    assert len({d.incident for d in sent}) == 1
    assert book.is_open("k") and book.incident_id("k") == sent[0].incident


def test_a_retrigger_after_the_cooldown_opens_a_new_incident() -> None:
    book, sent = make_book(cooldown_s=30.0)
    book.raise_("k", "intrusion", "Severe", 0.0)
    book.clear("k", 2.0)
    book.expire(32.5)  # the end is forgotten once the cooldown has passed
    book.raise_("k", "intrusion", "Severe", 32.5)
    assert states(sent) == ["new", "end", "new"]
    assert sent[2].incident != sent[0].incident


def test_a_continued_incident_keeps_its_age_for_the_maximum_duration() -> None:
    book, sent = make_book(cooldown_s=30.0, max_duration_s=100.0, stale_after_s=None)
    book.raise_("k", "intrusion", "Severe", 0.0)
    book.clear("k", 60.0)
    book.raise_("k", "intrusion", "Severe", 70.0)
    book.expire(101.0)
    assert states(sent) == ["new", "end", "update", "end"]
    assert "maximum" in (sent[-1].detail or "")
    book.raise_("k", "intrusion", "Severe", 102.0)  # forced end: a new incident follows
    assert sent[-1].state == "new" and sent[-1].incident != sent[0].incident


def test_every_kind_benefits_a_gas_alarm_back_within_the_cooldown_is_the_same_incident() -> None:
    book, sent = make_book(cooldown_s=30.0)
    rule = ThresholdRule([Level(10, "Moderate", hysteresis=2)], clear_after_s=1.0)
    alarm = ValueAlarm("gas:mq4", "gas", rule, book, "methane", "%LEL")
    for now, value in [(0, 12), (1, 5), (2, 5), (3, 5), (10, 12), (11, 12)]:
        alarm.observe(value, float(now))
    assert states(sent) == ["new", "end", "update"]
    assert len({d.incident for d in sent}) == 1


def test_the_book_changes_only_after_a_continuation_was_emitted() -> None:
    sent: list[AlertDraft] = []
    failing = [False]

    def emit(draft: AlertDraft) -> None:
        if failing[0]:
            raise OSError("disk full")
        sent.append(draft)

    book = IncidentBook(emit, cooldown_s=30.0)
    book.raise_("k", "intrusion", "Severe", 0.0)
    book.clear("k", 1.0)
    failing[0] = True
    with pytest.raises(OSError):
        book.raise_("k", "intrusion", "Severe", 5.0)
    assert not book.is_open("k")
    failing[0] = False
    book.raise_("k", "intrusion", "Severe", 6.0)
    assert states(sent) == ["new", "end", "update"] and sent[-1].incident == sent[0].incident


# --- vision rules through the book ----------------------------------------------------


def track(track_id: int, foot_x: float, foot_y: float, w: float = 0.1, h: float = 0.3) -> Track:
    return Track(track_id, 0, "person", (foot_x - w / 2, foot_y - h, foot_x + w / 2, foot_y), 0.9, 0.0, 0.0, 5)


def scene(rule: dict, **book: object) -> tuple[SceneAnalytics, list[AlertDraft]]:
    drafts: list[AlertDraft] = []
    config = SceneConfig.model_validate({"zones": [ZONE], "rules": [rule]})
    return SceneAnalytics("cam0", config, IncidentBook(drafts.append, **book)), drafts  # type: ignore[arg-type]


def test_an_intrusion_that_blinks_with_missed_detections_is_one_incident() -> None:
    analytics, drafts = scene(
        {"type": "intrusion", "name": "door-watch", "zone": "door"}, hold_s={"intrusion": 3.0}, cooldown_s=30.0
    )
    for tenth in range(0, 200):  # 20 s in the zone, missed 1 s in every 3
        seen = [] if tenth % 30 >= 20 else [track(1, 0.6, 0.9)]
        analytics.update(seen, tenth / 10)
    for tenth in range(200, 240):  # gone
        analytics.update([], tenth / 10)
    assert states(drafts) == ["new", "end"]
    assert drafts[-1].detail == "zone door clear (for 3 s)"


def loiter(**rule: object) -> tuple[SceneAnalytics, list[AlertDraft]]:
    return scene({"type": "loitering", "name": "door-loiter", "zone": "door", "dwell_s": 30, **rule})


def test_a_track_lost_and_reidentified_in_the_zone_keeps_its_dwell() -> None:
    analytics, drafts = loiter()
    for tenth in range(0, 150):  # track 7 in the zone for 15 s
        analytics.update([track(7, 0.6, 0.9)], tenth / 10)
    for tenth in range(150, 160):  # lost for 1 s
        analytics.update([], tenth / 10)
    fired_at = None
    for tenth in range(160, 500):  # the tracker gives the same person a new id, a step away
        analytics.update([track(8, 0.62, 0.9)], tenth / 10)
        if drafts and fired_at is None:
            fired_at = tenth / 10
    assert fired_at == 30.0  # the same total dwell as an unbroken track
    new = drafts[0]
    assert new.state == "new"
    assert new.detection is not None and new.detection.track_ids == [8]
    assert new.measurements[0].quantity == "dwell" and new.measurements[0].value == 30.0


def test_a_new_track_elsewhere_in_the_zone_does_not_take_a_lost_tracks_dwell() -> None:
    analytics, drafts = loiter()
    for tenth in range(0, 150):
        analytics.update([track(7, 0.45, 0.9)], tenth / 10)
    for tenth in range(150, 440):  # someone else, across the zone, for 29 s
        analytics.update([track(8, 0.75, 0.5)], tenth / 10)
    assert drafts == []


def test_a_track_lost_for_longer_than_the_grace_loses_its_dwell() -> None:
    analytics, drafts = loiter(track_grace_s=5.0)
    for tenth in range(0, 150):
        analytics.update([track(7, 0.6, 0.9)], tenth / 10)
    for tenth in range(150, 210):  # lost for 6 s
        analytics.update([], tenth / 10)
    for tenth in range(210, 500):  # back where it was lost, 29 s
        analytics.update([track(8, 0.6, 0.9)], tenth / 10)
    assert drafts == []


def test_one_lost_dwell_goes_to_one_new_track_only() -> None:
    analytics, drafts = loiter()
    for tenth in range(0, 150):
        analytics.update([track(7, 0.6, 0.9)], tenth / 10)
    for tenth in range(150, 301):  # two new tracks appear side by side where 7 was lost
        analytics.update([track(8, 0.6, 0.9), track(9, 0.65, 0.9)], tenth / 10)
    (new,) = drafts  # at 30 s: only one of them has dwelt that long
    assert new.detection is not None and new.detection.track_ids == [8]


def bag(track_id: int, dx: float = 0.0) -> Track:
    return Track(track_id, 24, "backpack", (0.50 + dx, 0.80, 0.55 + dx, 0.88), 0.8, 0.0, 0.0, 5)


def bags(**book: object) -> tuple[SceneAnalytics, list[AlertDraft]]:
    drafts: list[AlertDraft] = []
    config = SceneConfig.model_validate({"rules": [{"type": "unattended_object", "name": "bags", "after_s": 20}]})
    return SceneAnalytics("cam0", config, IncidentBook(drafts.append, **book)), drafts  # type: ignore[arg-type]


def test_a_bag_whose_track_breaks_keeps_its_clock_and_its_incident() -> None:
    analytics, drafts = bags(update_interval_s=3600.0)
    for t in range(0, 10):  # left alone from the start
        analytics.update([bag(50)], float(t))
    analytics.update([], 10.0)  # hidden behind a passer-by
    for t in range(11, 22):  # the tracker sees it again as track 51, a hair off
        analytics.update([bag(51, dx=0.005)], float(t))
    (new,) = drafts  # unattended 20 s at t = 20, as if the track had never broken
    assert new.state == "new" and new.detection is not None and new.detection.track_ids == [51]
    analytics.update([], 22.0)
    for t in range(23, 30):  # and again, as track 52, with the incident open
        analytics.update([bag(52)], float(t))
    assert states(drafts) == ["new"]


def test_a_different_bag_put_down_elsewhere_starts_its_own_clock() -> None:
    analytics, drafts = bags()
    for t in range(0, 10):
        analytics.update([bag(50)], float(t))
    for t in range(10, 25):  # bag 50 is gone; another one lies 0.2 away
        analytics.update([bag(51, dx=0.2)], float(t))
    assert drafts == []


# --- the node config ------------------------------------------------------------------


def test_the_config_merges_hold_times_over_the_defaults() -> None:
    config = LifecycleConfig.model_validate({"hold_s": {"intrusion": 5, "gas": 2}, "cooldown_s": 10})
    assert config.hold_s == {**DEFAULT_HOLD_S, "intrusion": 5.0, "gas": 2.0}
    assert LifecycleConfig().cooldown_s == 30.0 and LifecycleConfig().hold_s == DEFAULT_HOLD_S


def test_a_hold_for_a_malformed_kind_or_a_negative_time_is_refused_naming_the_key() -> None:
    base = {"node_id": "n1", "site": "s1", "location": {"lat": 0, "lon": 0}, "mqtt": {"url": "mqtt://127.0.0.1:1883"}}
    with pytest.raises(ConfigError, match=r"alerts\.hold_s\.Intrusion"):
        parse_config({**base, "alerts": {"hold_s": {"Intrusion": 3}}})
    with pytest.raises(ConfigError, match=r"alerts\.hold_s\.crowd"):
        parse_config({**base, "alerts": {"hold_s": {"crowd": -1}}})
