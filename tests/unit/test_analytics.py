"""Scene rules fed scripted tracks and an injected clock: intrusion, loitering, line
crossing and crowd, each through a real IncidentBook."""

from __future__ import annotations

import random
from datetime import time

import pytest
from pydantic import ValidationError

from s4edge.cloud_sync.messages import ModelRef
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.tracker import Track
from s4edge.yaml_text import load_yaml

MODEL = ModelRef(name="fastestdet", version="1.0.0", sha256="a" * 64)
ZONE = {"name": "door", "polygon": [[0.4, 0.4], [0.8, 0.4], [0.8, 1.0], [0.4, 1.0]]}


def track(track_id: int, foot_x: float, foot_y: float, label: str = "person", w: float = 0.1, h: float = 0.3) -> Track:
    box = (foot_x - w / 2, foot_y - h, foot_x + w / 2, foot_y)
    return Track(track_id, 0, label, box, 0.9, 0.0, 0.0, 5)


def scene(rules: list[dict], **extra: list) -> tuple[SceneAnalytics, list[AlertDraft]]:
    drafts: list[AlertDraft] = []
    config = SceneConfig.model_validate({"zones": [ZONE], "rules": rules, **extra})
    analytics = SceneAnalytics("cam0", config, IncidentBook(drafts.append, update_interval_s=5.0))
    analytics.model = MODEL
    return analytics, drafts


def states(drafts: list[AlertDraft], kind: str) -> list[str]:
    return [d.state for d in drafts if d.kind == kind]


# --- intrusion ------------------------------------------------------------------------


def test_intrusion_fires_when_a_person_steps_into_the_zone_and_ends_when_they_leave() -> None:
    analytics, drafts = scene([{"type": "intrusion", "name": "door-watch", "zone": "door"}])
    analytics.update([track(1, 0.2, 0.9)], 0.0)
    assert drafts == []
    analytics.update([track(1, 0.5, 0.9)], 1.0)
    (new,) = drafts
    assert (new.kind, new.state, new.severity, new.zone) == ("intrusion", "new", "Severe", "door")
    assert new.detection is not None and new.detection.track_ids == [1] and new.detection.count == 1
    assert new.detection.camera == "cam0" and new.detection.rule == "door-watch"
    box = new.detection.boxes[0]
    assert (box.x1, box.y2) == pytest.approx((0.45, 0.9))
    assert new.model == MODEL
    analytics.update([track(1, 0.2, 0.9)], 2.0)
    assert states(drafts, "intrusion") == ["new", "end"]
    assert drafts[1].incident == new.incident


def test_intrusion_ignores_other_classes() -> None:
    analytics, drafts = scene([{"type": "intrusion", "name": "door-watch", "zone": "door"}])
    analytics.update([track(1, 0.5, 0.9, label="dog")], 0.0)
    assert drafts == []


@pytest.mark.parametrize(
    ("clock", "fires"),
    [(time(23, 30), True), (time(3, 0), True), (time(6, 0), False), (time(12, 0), False), (time(21, 59), False)],
)
def test_intrusion_with_a_night_window_fires_only_at_night(clock: time, fires: bool) -> None:
    window = {"start": "22:00", "end": "06:00"}
    analytics, drafts = scene([{"type": "intrusion", "name": "night", "zone": "door", "window": window}])
    analytics.update([track(1, 0.5, 0.9)], 0.0, local_time=clock)
    assert states(drafts, "intrusion") == (["new"] if fires else [])


def test_an_open_intrusion_ends_when_the_window_closes() -> None:
    window = {"start": "09:00", "end": "17:00"}
    analytics, drafts = scene([{"type": "intrusion", "name": "office", "zone": "door", "window": window}])
    analytics.update([track(1, 0.5, 0.9)], 0.0, local_time=time(16, 59, 59))
    analytics.update([track(1, 0.5, 0.9)], 1.0, local_time=time(17, 0, 0))
    assert states(drafts, "intrusion") == ["new", "end"]


# --- loitering ------------------------------------------------------------------------


def loiter_scene() -> tuple[SceneAnalytics, list[AlertDraft]]:
    return scene([{"type": "loitering", "name": "door-loiter", "zone": "door", "dwell_s": 30}])


def test_a_track_that_stays_31_s_in_a_30_s_zone_fires_once() -> None:
    analytics, drafts = loiter_scene()
    for second in range(0, 32):  # 0 .. 31 s inside
        analytics.update([track(7, 0.6, 0.9)], float(second))
    analytics.update([track(7, 0.1, 0.9)], 32.0)  # walks away
    assert states(drafts, "loitering") == ["new"]  # within track_grace_s (5 s) they may be back
    analytics.update([track(7, 0.1, 0.9)], 37.5)
    assert states(drafts, "loitering") == ["new", "end"]
    new = drafts[0]
    assert new.detection is not None and new.detection.track_ids == [7]
    assert new.measurements[0].quantity == "dwell" and new.measurements[0].value == 30.0


def test_a_track_that_leaves_at_29_s_does_not_fire() -> None:
    analytics, drafts = loiter_scene()
    for second in range(0, 30):  # 0 .. 29 s inside
        analytics.update([track(7, 0.6, 0.9)], float(second))
    for second in range(30, 60):
        analytics.update([track(7, 0.1, 0.9)], float(second))
    assert drafts == []


def test_leaving_for_longer_than_the_grace_and_coming_back_restarts_the_dwell() -> None:
    analytics, drafts = loiter_scene()
    for second in range(0, 20):
        analytics.update([track(7, 0.6, 0.9)], float(second))
    for second in range(20, 27):  # seen outside for 6 s, past track_grace_s (5 s)
        analytics.update([track(7, 0.1, 0.9)], float(second))
    for second in range(27, 56):  # 28 s more inside
        analytics.update([track(7, 0.6, 0.9)], float(second))
    assert drafts == []


@pytest.mark.parametrize("fps", [5, 15, 30])
def test_a_foot_wobbling_across_the_zone_edge_keeps_its_dwell_at_any_frame_rate(fps: int) -> None:
    """Someone standing on the zone's edge: every third frame their foot is read just
    outside it. The dwell ran from the first frame, whatever the frame rate (one frame
    outside used to restart it: never alerted at 5 fps, at 45 s at 15 fps)."""
    analytics, drafts = loiter_scene()
    for frame in range(0, 31 * fps):
        outside = frame % 3 == 1
        analytics.update([track(7, 0.39 if outside else 0.41, 0.9)], frame / fps)
    assert states(drafts, "loitering") == ["new"]
    (dwell,) = drafts[0].measurements
    assert dwell.value == pytest.approx(30.0, abs=0.5)


def test_a_missed_detection_does_not_reset_the_dwell() -> None:
    analytics, drafts = loiter_scene()
    for tenth in range(0, 320):
        seen = [] if 150 <= tenth < 160 else [track(7, 0.6, 0.9)]  # 1 s unseen mid-way
        analytics.update(seen, tenth / 10)
    assert states(drafts, "loitering") == ["new"]


# --- line crossing --------------------------------------------------------------------

LINE = {"name": "gate", "a": [0.0, 0.5], "b": [1.0, 0.5]}  # left to right: side A above it


def line_scene(**rule: object) -> tuple[SceneAnalytics, list[AlertDraft]]:
    return scene([{"type": "line_cross", "name": "gate-count", "line": "gate", **rule}], lines=[LINE])


def walk(analytics: SceneAnalytics, track_id: int, ys: list[float], t0: float, x: float = 0.5) -> float:
    t = t0
    for y in ys:
        analytics.update([track(track_id, x, y)], t)
        t += 0.1
    return t


def test_line_crossing_direction_and_counts() -> None:
    analytics, drafts = line_scene()
    rule = analytics.rules[0]
    t = walk(analytics, 1, [0.3, 0.4, 0.45, 0.55, 0.7], 0.0)  # downwards: A → B
    assert rule.counts == {"a_to_b": 1, "b_to_a": 0}
    (new,) = drafts
    assert (new.kind, new.state) == ("line_cross", "new")
    assert new.detection is not None and new.detection.direction == "a_to_b" and new.detection.track_ids == [1]
    t = walk(analytics, 2, [0.8, 0.6, 0.4], t)  # upwards: B → A
    t = walk(analytics, 3, [0.2, 0.6], t + 6.0)  # A → B again, after the update interval
    assert rule.counts == {"a_to_b": 2, "b_to_a": 1}
    analytics.update([], t + 5.0)  # the book sends a changed count at most every update_interval_s
    update = drafts[-1]
    assert update.state == "update"
    assert {m.quantity: m.value for m in update.measurements} == {"crossings_a_to_b": 2, "crossings_b_to_a": 1}
    analytics.update([], t + 11.0)  # quiet for longer than quiet_s since the last crossing
    assert drafts[-1].state == "end"


def test_walking_along_the_line_or_past_its_end_is_not_a_crossing() -> None:
    analytics, drafts = scene(
        [{"type": "line_cross", "name": "short", "line": "half"}],
        lines=[{"name": "half", "a": [0, 0.5], "b": [0.4, 0.5]}],
    )
    walk(analytics, 1, [0.3, 0.7], 0.0, x=0.8)  # crosses y=0.5 right of the segment's end
    walk(analytics, 2, [0.45, 0.48, 0.49], 1.0, x=0.2)  # approaches, never crosses
    assert analytics.rules[0].counts == {"a_to_b": 0, "b_to_a": 0}
    assert drafts == []


def test_only_the_configured_direction_counts() -> None:
    analytics, drafts = line_scene(directions=["b_to_a"])
    walk(analytics, 1, [0.3, 0.7], 0.0)
    assert drafts == []
    walk(analytics, 2, [0.7, 0.3], 1.0)
    assert [d.detection.direction for d in drafts if d.detection] == ["b_to_a"]


def test_someone_standing_on_the_line_is_counted_once() -> None:
    """A person walks onto the line, stands on it for 20 s while their box wobbles by a few
    pixels (σ = 0.004 of the frame), then walks on: one crossing, not one per wobble (it
    was 12 one way and 11 the other)."""
    analytics, _ = line_scene()
    wobble = random.Random(7)
    ys = [0.3 + 0.02 * i for i in range(10)]
    ys += [0.5 + wobble.gauss(0, 0.004) for _ in range(20 * 15)]
    ys += [0.52 + 0.02 * i for i in range(10)]
    t = 0.0
    for y in ys:
        analytics.update([track(1, 0.5, y)], t)
        t += 1 / 15
    assert analytics.rules[0].counts == {"a_to_b": 1, "b_to_a": 0}


# --- crowd ----------------------------------------------------------------------------


def crowd_scene() -> tuple[SceneAnalytics, list[AlertDraft]]:
    levels = [{"on_at": 5, "severity": "Moderate", "hysteresis": 2}, {"on_at": 10, "severity": "Severe"}]
    rule = {
        "type": "crowd",
        "name": "door-crowd",
        "zone": "door",
        "levels": levels,
        "raise_after_s": 1.0,
        "clear_after_s": 2.0,
    }
    return scene([rule])


def people(n: int) -> list[Track]:
    return [track(i + 1, 0.45 + 0.03 * (i % 10), 0.9) for i in range(n)]


def test_crowd_raises_after_the_debounce_and_does_not_flap_at_the_threshold() -> None:
    analytics, drafts = crowd_scene()
    analytics.update(people(6), 0.0)
    assert drafts == []  # not yet: raise_after_s
    analytics.update(people(6), 1.0)
    assert states(drafts, "crowd") == ["new"]
    assert drafts[0].detection is not None and drafts[0].detection.count == 6
    assert drafts[0].measurements[0].quantity == "people" and drafts[0].measurements[0].value == 6
    # hovering at 4..5 stays inside the hysteresis band: no end, no new
    for i, n in enumerate([4, 5, 4, 5, 4, 4, 5] * 3):
        analytics.update(people(n), 2.0 + i * 0.5)
    lifecycle = [s for s in states(drafts, "crowd") if s != "update"]  # count updates are fine
    assert lifecycle == ["new"]
    # below on_at − hysteresis for clear_after_s: ends once
    for i in range(6):
        analytics.update(people(2), 20.0 + i * 0.5)
    assert [s for s in states(drafts, "crowd") if s != "update"] == ["new", "end"]
    assert len({d.incident for d in drafts}) == 1


def test_crowd_escalates_to_the_higher_level() -> None:
    analytics, drafts = crowd_scene()
    for t in (0.0, 1.0):
        analytics.update(people(12), t)
    assert drafts[-1].severity == "Severe"


def test_people_outside_the_zone_do_not_count() -> None:
    analytics, drafts = crowd_scene()
    for t in (0.0, 1.0, 2.0):
        analytics.update([track(i + 1, 0.1, 0.9) for i in range(8)], t)
    assert drafts == []


@pytest.mark.parametrize("fps", [5, 15, 30])
def test_a_crowd_with_a_few_missed_people_raises_after_the_debounce_at_any_frame_rate(fps: int) -> None:
    """12 people and a level at 10; the detector misses each person in 10 % of frames, so a
    frame now and then shows 9. Raised about raise_after_s (2 s) in, at any frame rate (it
    was 7 s at 5 fps, 16 s at 15 fps, never at 30 fps: one frame under 10 restarted it)."""
    rule = {"type": "crowd", "name": "hall", "levels": [{"on_at": 10, "severity": "Moderate"}]}
    analytics, drafts = scene([rule])
    misses = random.Random(fps)
    crowd = people(12)
    for frame in range(10 * fps):
        analytics.update([p for p in crowd if misses.random() >= 0.1], frame / fps)
        if drafts:
            break
    assert states(drafts, "crowd") == ["new"]
    assert frame / fps <= 2.5


def test_a_crowd_that_leaves_ends_after_the_hold_and_the_debounce() -> None:
    rule = {"type": "crowd", "name": "hall", "levels": [{"on_at": 3, "severity": "Moderate"}], "clear_after_s": 1.0}
    analytics, drafts = scene([rule])
    for t in (0.0, 1.0, 2.0):
        analytics.update(people(4), t)
    assert states(drafts, "crowd") == ["new"]
    analytics.update([], 2.5)
    analytics.update([], 3.5)  # the four unseen for 1.5 s: past hold_s, no longer counted
    analytics.update([], 4.6)
    assert states(drafts, "crowd")[-1] == "end"


def test_a_crowd_waiting_to_clear_sends_no_update_with_the_count_that_no_longer_makes_it() -> None:
    """Five people raise the level at 5 (Moderate, clear below 3), then leave. During the
    clear debounce (clear_after_s, 5 s) the level is still in force: the incident keeps its
    last raised content, and the next message is the end. It used to get a Moderate update
    "0 × person in view" first."""
    rule = {"type": "crowd", "name": "hall", "levels": [{"on_at": 5, "severity": "Moderate", "hysteresis": 2}]}
    analytics, drafts = scene([rule])
    frames = [(people(5), frame / 10) for frame in range(100)]  # 10 s at 10 fps
    frames += [([], 10.0 + frame / 10) for frame in range(80)]  # empty for 8 s
    for tracks, now in frames:
        analytics.update(tracks, now)
    assert states(drafts, "crowd") == ["new", "end"]
    assert all(d.title == "5 × person in view" and d.measurements[0].value == 5 for d in drafts)
    assert drafts[-1].detail == "people back to 0 count"


@pytest.mark.parametrize(
    ("level", "problem"),
    [
        ({"on_at": 0, "severity": "Minor"}, "starts at 1"),
        ({"on_at": 2, "severity": "Minor", "hysteresis": 2}, "never end"),
    ],
)
def test_a_crowd_level_that_an_empty_view_would_raise_or_hold_is_refused(level: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SceneConfig.model_validate({"rules": [{"type": "crowd", "name": "c", "levels": [level]}]})


def test_a_rule_that_fails_does_not_silence_the_rules_after_it() -> None:
    analytics, drafts = scene(
        [{"type": "loitering", "name": "broken", "zone": "door"}, {"type": "intrusion", "name": "door", "zone": "door"}]
    )
    broken = analytics.rules[0]

    def fail(*_: object) -> None:
        raise RuntimeError("rule bug")

    broken.update = fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="rule bug"):  # raised again, for the pipeline to count
        analytics.update([track(1, 0.5, 0.9)], 0.0)
    assert states(drafts, "intrusion") == ["new"]


# --- time windows ---------------------------------------------------------------------


def test_a_night_window_written_without_quotes_in_yaml_is_the_night() -> None:
    """YAML 1.1 reads an unquoted 22:00 as the number 1320, which pydantic took for 00:22 UTC;
    every frame then failed comparing it with local time, and no rule of the camera ran."""
    text = """
zones: [{name: door, polygon: [[0.4, 0.4], [0.8, 0.4], [0.8, 1.0], [0.4, 1.0]]}]
rules:
  - {type: intrusion, name: night, zone: door, window: {start: 22:00, end: 06:00}}
"""
    config = SceneConfig.model_validate(load_yaml(text))
    window = config.rules[0].window  # type: ignore[union-attr]
    assert (window.start, window.end) == (time(22, 0), time(6, 0))
    drafts: list[AlertDraft] = []
    analytics = SceneAnalytics("cam0", config, IncidentBook(drafts.append))
    analytics.update([track(1, 0.5, 0.9)], 0.0, local_time=time(23, 30))
    assert states(drafts, "intrusion") == ["new"]


@pytest.mark.parametrize(
    ("start", "problem"),
    [(1320, "a number, not a time of day: write it as text, e.g. '22:00'"), ("22:00+01:00", "names a time zone")],
)
def test_a_time_window_given_as_a_number_or_with_a_zone_is_refused(start: object, problem: str) -> None:
    rule = {"type": "intrusion", "name": "x", "zone": "door", "window": {"start": start, "end": "06:00"}}
    with pytest.raises(ValidationError, match=problem):
        SceneConfig.model_validate({"zones": [ZONE], "rules": [rule]})


# --- config ---------------------------------------------------------------------------


def test_a_rule_naming_an_unknown_zone_is_refused_with_the_names_known() -> None:
    with pytest.raises(ValidationError, match=r"no zone 'lobby' \(zones: \['door'\]\)"):
        SceneConfig.model_validate({"zones": [ZONE], "rules": [{"type": "intrusion", "name": "x", "zone": "lobby"}]})


def test_a_zone_without_area_or_outside_the_frame_is_refused() -> None:
    with pytest.raises(ValidationError, match="no area"):
        SceneConfig.model_validate({"zones": [{"name": "flat", "polygon": [[0, 0], [0.5, 0.5], [1, 1]]}]})
    with pytest.raises(ValidationError):
        SceneConfig.model_validate({"zones": [{"name": "big", "polygon": [[0, 0], [2, 0], [0, 1]]}]})


def test_a_time_window_that_starts_where_it_ends_is_refused_naming_the_field() -> None:
    rule = {"type": "intrusion", "name": "x", "zone": "door", "window": {"start": "07:00", "end": "07:00"}}
    with pytest.raises(ValidationError, match="empty window") as caught:
        SceneConfig.model_validate({"zones": [ZONE], "rules": [rule]})
    (error,) = caught.value.errors()
    assert error["loc"][0] == "rules" and error["loc"][-2:] == ("window", "end")
