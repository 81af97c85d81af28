"""The incident lifecycle and threshold rules, with time injected (no sleeps)."""

from __future__ import annotations

import itertools

import pytest

from s4edge.edge.alerts import AlertDraft, Content, IncidentBook, Level, ThresholdRule, ValueAlarm


def make_book(**kwargs) -> tuple[IncidentBook, list[AlertDraft]]:
    sent: list[AlertDraft] = []
    counter = itertools.count()
    book = IncidentBook(sent.append, new_id=lambda: f"incident-{next(counter):04d}", **kwargs)
    return book, sent


def test_hovering_at_a_threshold_does_not_flap() -> None:
    rule = ThresholdRule([Level(10.0, "Moderate", hysteresis=2.0)], raise_after_s=2.0, clear_after_s=3.0)
    # jitter around 10 for 10 s: never 2 s continuously above, so never raised
    for step in range(20):
        assert rule.observe(10.5 if step % 2 else 9.5, now=step * 0.5) is None
    # now held above for 2 s: raised once
    seen = [rule.observe(11.0, now=10.0 + t * 0.5) for t in range(5)]
    assert seen[-1] == "Moderate"
    # dips below on_at but inside the hysteresis band: stays on
    assert all(rule.observe(8.5, now=13.0 + t) == "Moderate" for t in range(10))
    # below on_at - hysteresis, but only for 2 s (< clear_after_s 3 s): stays on
    assert rule.observe(7.0, now=30.0) == "Moderate"
    assert rule.observe(7.0, now=32.0) == "Moderate"
    assert rule.observe(9.0, now=32.5) == "Moderate"
    # held below for 3 s: off
    assert rule.observe(7.0, now=40.0) == "Moderate"
    assert rule.observe(7.0, now=43.0) is None


def test_below_direction_and_highest_level_wins() -> None:
    rule = ThresholdRule([Level(19.5, "Moderate"), Level(17.0, "Severe")], direction="below")
    assert rule.observe(20.9, now=0) is None
    assert rule.observe(19.0, now=1) == "Moderate"
    assert rule.observe(16.0, now=2) == "Severe"


def test_new_update_end_share_one_incident_id() -> None:
    book, sent = make_book(update_interval_s=5.0)
    alarm = ValueAlarm(
        "gas:mq4", "gas", ThresholdRule([Level(10, "Moderate"), Level(40, "Severe")]), book, "methane", "%LEL"
    )
    alarm.observe(12, now=0)
    alarm.observe(13, now=1)  # content changed, but within update_interval_s: no message
    alarm.observe(45, now=2)  # escalation is sent at once
    alarm.observe(46, now=8)  # content changed and interval passed: update
    alarm.observe(2, now=9)
    assert [d.state for d in sent] == ["new", "update", "update", "end"]
    assert [d.severity for d in sent] == ["Moderate", "Severe", "Severe", "Severe"]
    assert len({d.incident for d in sent}) == 1
    assert sent[0].measurements[0].value == 12 and sent[-1].detail == "methane back to 2 %LEL"
    alarm.observe(20, now=20)  # a new episode is a new incident
    assert sent[-1].state == "new" and sent[-1].incident != sent[0].incident


def test_a_level_waiting_to_clear_keeps_what_its_incident_said() -> None:
    """A reading back past a level's clear threshold holds the incident as it was for
    clear_after_s; readings within the level's band, rising or falling, update it."""
    book, sent = make_book(update_interval_s=0.0)
    levels = [Level(10, "Moderate", hysteresis=2), Level(40, "Severe", hysteresis=5)]
    alarm = ValueAlarm("gas:mq4", "gas", ThresholdRule(levels, clear_after_s=3.0), book, "methane", "%LEL")
    readings = [(0, 45), (1, 46), (2, 38), (3, 30), (4, 30), (5, 30), (6, 30), (7, 5), (8, 7), (10, 5)]
    for now, value in readings:
        alarm.observe(value, float(now), Content(title=f"methane {value} %LEL"))
    # 30 is past the Severe level's clear (35) at 3 to 5 s: no Severe "30 %LEL"; Moderate from 6 s.
    # 5 and 7 are past the Moderate level's clear (8) at 7 to 9 s: no Moderate "5 %LEL"; the end at 10 s.
    assert [(d.state, d.severity, d.title) for d in sent] == [
        ("new", "Severe", "methane 45 %LEL"),
        ("update", "Severe", "methane 46 %LEL"),
        ("update", "Severe", "methane 38 %LEL"),
        ("update", "Moderate", "methane 30 %LEL"),
        ("end", "Moderate", "methane 30 %LEL"),
    ]
    assert sent[-1].detail == "methane back to 5 %LEL"


def test_a_reading_back_within_the_band_during_the_clear_debounce_updates_again() -> None:
    book, sent = make_book(update_interval_s=0.0)
    rule = ThresholdRule([Level(10, "Moderate", hysteresis=2)], clear_after_s=3.0)
    alarm = ValueAlarm("gas:mq4", "gas", rule, book, "methane", "%LEL")
    for now, value in [(0, 12), (1, 5), (2, 14), (3, 14)]:
        alarm.observe(value, float(now))
    assert [(d.state, d.measurements[0].value) for d in sent] == [("new", 12), ("update", 14)]


def test_content_is_built_only_while_the_rule_is_raised() -> None:
    """A camera counts people on every frame; below the threshold no alert content is built."""
    book, sent = make_book()
    alarm = ValueAlarm("crowd:cam0:c", "crowd", ThresholdRule([Level(4, "Moderate")]), book, "people", "count")
    built: list[float] = []

    def content(count: float) -> Content:
        built.append(count)
        return Content(title=f"{count:g} people")

    for now, count in enumerate([1, 2, 3, 5, 6, 2, 1]):
        alarm.observe(count, now, lambda count=count: content(count))
    assert built == [5, 6]
    assert [d.state for d in sent] == ["new", "end"] and sent[0].title == "5 people"


def test_unchanged_content_sends_no_update() -> None:
    book, sent = make_book(update_interval_s=0.0)
    for now in range(5):
        book.raise_("k", "crowd", "Minor", now, Content(title="same"))
    assert [d.state for d in sent] == ["new"]


def test_stale_incident_is_ended() -> None:
    book, sent = make_book(stale_after_s=30.0)
    book.raise_("cam0:loiter", "loitering", "Minor", now=0)
    book.expire(now=29)
    assert book.is_open("cam0:loiter")
    book.expire(now=31)
    assert not book.is_open("cam0:loiter")
    assert sent[-1].state == "end" and "stale" in (sent[-1].detail or "")


def test_incident_is_ended_after_max_duration_even_when_still_raised() -> None:
    book, sent = make_book(stale_after_s=30.0, max_duration_s=100.0)
    for now in range(0, 101, 10):
        book.raise_("smoke", "smoke", "Severe", now)
        book.expire(now)
    assert book.is_open("smoke")
    book.raise_("smoke", "smoke", "Severe", 110)
    book.expire(110)
    assert sent[-1].state == "end" and "maximum" in (sent[-1].detail or "")
    assert len({d.incident for d in sent}) == 1


def test_exercise_status_is_carried_on_every_draft() -> None:
    book, sent = make_book(status="Exercise")
    book.raise_("k", "gas", "Minor", 0)
    book.clear("k", 1)
    assert {d.status for d in sent} == {"Exercise"}


class FlakyStore:
    """An emit that fails while ``broken`` is set, as a full disk or a closed outbox would."""

    def __init__(self) -> None:
        self.broken = False
        self.stored: list[AlertDraft] = []

    def __call__(self, draft: AlertDraft) -> None:
        if self.broken:
            raise OSError("disk full")
        self.stored.append(draft)


def test_an_alert_that_could_not_be_stored_is_raised_again_not_skipped() -> None:
    store = FlakyStore()
    book = IncidentBook(store, update_interval_s=0)
    store.broken = True
    with pytest.raises(OSError):
        book.raise_("gas", "gas", "Severe", now=0.0)
    assert not book.is_open("gas")
    store.broken = False
    book.raise_("gas", "gas", "Severe", now=1.0)
    assert [d.state for d in store.stored] == ["new"]

    store.broken = True
    with pytest.raises(OSError):
        book.clear("gas", now=2.0)
    assert book.is_open("gas"), "the end was not stored, so the incident stays open"
    store.broken = False
    book.clear("gas", now=3.0)
    assert [d.state for d in store.stored] == ["new", "end"]
    assert len({d.incident for d in store.stored}) == 1
