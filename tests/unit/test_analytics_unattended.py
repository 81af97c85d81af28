"""Unattended objects: the owner is whoever was nearest when the bag appeared."""

from __future__ import annotations

from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.tracker import Track
from s4edge.edge.vision.unattended import distance_to_box

BAG = Track(50, 24, "backpack", (0.50, 0.80, 0.55, 0.88), 0.8, 0.0, 0.0, 5)


def person(track_id: int, x: float) -> Track:
    return Track(track_id, 0, "person", (x, 0.40, x + 0.1, 0.90), 0.9, 0.0, 0.0, 5)


def scene(**rule: object) -> tuple[SceneAnalytics, list[AlertDraft]]:
    drafts: list[AlertDraft] = []
    config = SceneConfig.model_validate(
        {"rules": [{"type": "unattended_object", "name": "bags", "after_s": 20, "distance": 0.1, **rule}]}
    )
    return SceneAnalytics("cam0", config, IncidentBook(drafts.append)), drafts


def play(analytics: SceneAnalytics, frames: list[tuple[float, list[Track]]]) -> None:
    for t, tracks in frames:
        analytics.update(tracks, t)


def test_owner_present_no_alert() -> None:
    analytics, drafts = scene()
    owner = person(1, 0.56)  # standing beside the bag
    play(analytics, [(float(t), [owner, BAG]) for t in range(0, 60)])
    assert drafts == []


def test_owner_left_alert_after_the_unattended_time() -> None:
    analytics, drafts = scene()
    owner = person(1, 0.56)
    play(analytics, [(float(t), [owner, BAG]) for t in range(0, 5)])
    play(analytics, [(float(t), [person(1, 0.9), BAG]) for t in range(5, 25)])  # owner walked off
    assert drafts == []  # stationary 24 s, but unattended only 19 s < 20 s
    play(analytics, [(float(t), [person(1, 0.9), BAG]) for t in range(25, 28)])
    (new,) = drafts
    assert (new.kind, new.state, new.severity) == ("unattended_object", "new", "Severe")
    assert new.detection is not None and new.detection.label == "backpack" and new.detection.track_ids == [50]
    assert "owner left" in (new.detail or "")


def test_a_bag_long_stationary_beside_its_owner_waits_after_s_once_the_owner_steps_away() -> None:
    analytics, drafts = scene()
    play(analytics, [(float(t), [person(1, 0.56), BAG]) for t in range(0, 60)])  # 60 s beside its owner
    just_out = person(1, 0.56 + 0.1 + 0.001)  # one step past ``distance`` from the bag
    assert distance_to_box(BAG.centre, just_out.box) > 0.1
    play(analytics, [(float(t), [just_out, BAG]) for t in range(60, 80)])
    assert drafts == []  # unattended 19 s < after_s, though stationary for 79 s
    play(analytics, [(float(t), [just_out, BAG]) for t in range(80, 84)])
    (new,) = drafts
    assert new.state == "new"
    units = {m.quantity: m.value for m in new.measurements}
    assert units == {"stationary": 80.0, "unattended": 20.0}


def test_a_stranger_near_the_bag_does_not_count_as_its_owner() -> None:
    analytics, drafts = scene()
    play(analytics, [(0.0, [person(1, 0.56), BAG])])
    play(analytics, [(float(t), [person(2, 0.56), BAG]) for t in range(1, 25)])  # someone else stands there
    assert [d.state for d in drafts] == ["new"]


def test_the_owner_coming_back_ends_the_incident() -> None:
    analytics, drafts = scene()
    play(analytics, [(0.0, [person(1, 0.56), BAG])])
    play(analytics, [(float(t), [BAG]) for t in range(1, 25)])
    play(analytics, [(25.0, [person(1, 0.56), BAG])])
    assert [d.state for d in drafts] == ["new", "end"]


def test_a_bag_carried_along_is_not_stationary() -> None:
    analytics, drafts = scene()
    for t in range(0, 40):
        shift = 0.01 * t
        bag = Track(50, 24, "backpack", (0.1 + shift, 0.8, 0.15 + shift, 0.88), 0.8, 0.0, 0.0, 5)
        analytics.update([bag], float(t))
    assert drafts == []


def test_a_bag_with_no_one_near_when_it_appeared_is_unattended_when_left_alone() -> None:
    analytics, drafts = scene(classes=["suitcase"])
    case = Track(60, 28, "suitcase", (0.2, 0.7, 0.3, 0.9), 0.8, 0.0, 0.0, 5)
    play(analytics, [(float(t), [case, person(3, 0.8)]) for t in range(0, 21)])
    assert [d.state for d in drafts] == ["new"]
    assert "nobody with it" in (drafts[0].detail or "")


def test_distance_to_box() -> None:
    assert distance_to_box((0.5, 0.5), (0.4, 0.4, 0.6, 0.6)) == 0.0
    assert round(distance_to_box((0.0, 0.0), (0.3, 0.4, 0.5, 0.5)), 6) == 0.5
