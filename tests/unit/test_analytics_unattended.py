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
    play(analytics, [(float(t), [person(1, 0.9), BAG]) for t in range(1, 4)])  # the owner walks off, seen
    play(analytics, [(float(t), [person(2, 0.56), BAG]) for t in range(4, 25)])  # someone else stands there
    assert [d.state for d in drafts] == ["new"]


def test_an_owner_hidden_for_a_moment_and_back_under_a_new_track_id_is_still_the_owner() -> None:
    """A passer-by hides the owner for 2 s; the tracker gives them a new id when they are
    seen again where they stood. No alarm (it was Severe "its owner left" at 80 s)."""
    analytics, drafts = scene()
    play(analytics, [(t / 5, [person(1, 0.56), BAG]) for t in range(0, 50)])
    play(analytics, [(t / 5, [person(7, 0.3), BAG]) for t in range(50, 60)])  # hidden behind passer-by 7
    play(analytics, [(t / 5, [person(9, 0.565), BAG]) for t in range(60, 600)])  # back, as track 9
    assert drafts == []


def test_people_coming_in_where_the_owner_walked_out_do_not_become_the_owner() -> None:
    """The owner walks off and out of view; a second later someone comes in right there,
    passes the bag and leaves by the other side, where the next comes in, and so on: taken
    for the owner back under a new id, each passer-by in turn reset the bag's clock, and
    it never alarmed."""
    analytics, drafts = scene()
    play(analytics, [(t / 5, [person(1, 0.56), BAG]) for t in range(0, 10)])
    play(analytics, [(2 + t / 5, [person(1, 0.56 - 0.02 * t), BAG]) for t in range(0, 25)])  # out at x = 0.08
    t0 = 7.0
    for k in range(12):
        path = [0.08 + 0.02 * t for t in range(40)]  # across the view, past the bag, in 8 s
        path = path if k % 2 == 0 else path[::-1]  # in where the one before went out
        play(analytics, [(t0 + t / 5, [person(100 + k, x), BAG]) for t, x in enumerate(path)])
        play(analytics, [(t0 + 8 + t / 5, [BAG]) for t in range(0, 5)])
        t0 += 9
    assert "new" in [d.state for d in drafts]


def test_an_owner_missed_in_the_frame_the_bag_appears_is_its_owner_all_the_same() -> None:
    """The detector misses the traveller in the bag's first frame, and a stranger stands a
    little further off: the stranger walking away must not leave the bag "unattended"."""
    analytics, drafts = scene()
    stranger, traveller = person(2, 0.62), person(1, 0.56)
    play(analytics, [(0.0, [stranger, BAG])])
    play(analytics, [(t / 5, [stranger, traveller, BAG]) for t in range(1, 10)])
    play(analytics, [(t / 5, [person(2, 0.95), traveller, BAG]) for t in range(10, 300)])  # the stranger leaves
    assert drafts == []


def test_a_bag_hidden_for_a_few_seconds_keeps_its_incident() -> None:
    """People stand in front of an alarmed bag for 4 s: one incident, still open (it ended
    as "object gone" and came back as a new incident a minute later)."""
    analytics, drafts = scene()
    play(analytics, [(0.0, [person(1, 0.56), BAG])])
    play(analytics, [(float(t), [person(1, 0.9), BAG]) for t in range(1, 30)])
    assert [d.state for d in drafts if d.state != "update"] == ["new"]
    play(analytics, [(float(t), [person(5, 0.45), person(6, 0.5)]) for t in range(30, 34)])  # the bag hidden
    play(analytics, [(float(t), [BAG]) for t in range(34, 40)])
    assert {d.state for d in drafts} <= {"new", "update"} and len({d.incident for d in drafts}) == 1


def test_people_walking_past_a_bag_nobody_brought_do_not_restart_its_clock() -> None:
    """A busy concourse: someone passes the bag for 2 s every 10 s. It alarms after after_s
    (it never did: every passer-by made it "attended")."""
    analytics, drafts = scene(classes=["suitcase"])
    case = Track(60, 28, "suitcase", (0.2, 0.7, 0.3, 0.9), 0.8, 0.0, 0.0, 5)
    for t in range(0, 30):
        passing = [person(100 + t // 10, 0.25)] if t % 10 in (5, 6) else []
        analytics.update([case, *passing], float(t))
    assert [d.state for d in drafts if d.state != "update"] == ["new"]
    assert "nobody with it" in (drafts[0].detail or "")


def test_someone_staying_with_a_bag_nobody_brought_attends_it() -> None:
    analytics, drafts = scene(classes=["suitcase"], attend_s=5)
    case = Track(60, 28, "suitcase", (0.2, 0.7, 0.3, 0.9), 0.8, 0.0, 0.0, 5)
    play(analytics, [(float(t), [case]) for t in range(0, 15)])
    play(analytics, [(float(t), [case, person(4, 0.25)]) for t in range(15, 60)])  # sits down beside it
    assert [d.state for d in drafts] == []


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
