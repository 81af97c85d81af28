"""The tracker keeps ids through motion, crossings and short misses, and forgets lost tracks."""

from __future__ import annotations

import itertools

from s4edge.edge.vision.tracker import Tracker, TrackerConfig, iou_matrix
from s4edge.edge.vision.types import Detection

FPS = 15.0


def person(x: float, y: float = 0.3, score: float = 0.9, w: float = 0.1, h: float = 0.4) -> Detection:
    return Detection(0, "person", score, (x, y, x + w, y + h))


def bag(x: float, y: float = 0.7, score: float = 0.8) -> Detection:
    return Detection(24, "backpack", score, (x, y, x + 0.05, y + 0.08))


def ids_by_x(tracks: list) -> list[int]:
    return [t.track_id for t in sorted(tracks, key=lambda t: t.box[0])]


def test_a_walking_person_keeps_one_id() -> None:
    tracker = Tracker()
    seen: set[int] = set()
    for i in range(30):
        tracks = tracker.update([person(0.05 + 0.01 * i)], i / FPS)
        seen |= {t.track_id for t in tracks}
    assert seen == {1}


def test_a_track_is_confirmed_after_min_hits() -> None:
    tracker = Tracker(TrackerConfig(min_hits=3))
    assert tracker.update([person(0.1)], 0.0) == []
    assert tracker.update([person(0.1)], 1 / FPS) == []
    (track,) = tracker.update([person(0.1)], 2 / FPS)
    assert track.track_id == 1 and track.hits == 3


def test_a_single_false_detection_never_becomes_a_track() -> None:
    tracker = Tracker(TrackerConfig(min_hits=2))
    tracker.update([person(0.1), person(0.7)], 0.0)
    tracks = tracker.update([person(0.1)], 1 / FPS)
    tracks = tracker.update([person(0.1)], 2 / FPS)
    assert [t.track_id for t in tracks] == [1]
    assert tracker.active_count == 1


def test_two_people_crossing_keep_their_ids() -> None:
    tracker = Tracker()
    history: dict[int, list[float]] = {}
    for i in range(40):
        left = person(0.1 + 0.02 * i)  # walks right
        right = person(0.8 - 0.02 * i, y=0.32)  # walks left, a little lower
        for t in tracker.update([left, right], i / FPS):
            history.setdefault(t.track_id, []).append(t.box[0])
    assert set(history) == {1, 2}
    # each id kept moving in its own direction through the crossing at i ≈ 17
    for xs in history.values():
        steps = [b - a for a, b in itertools.pairwise(xs)]
        assert all(s > 0 for s in steps) or all(s < 0 for s in steps)
    assert history[1][-1] > history[2][-1]


def test_a_short_miss_keeps_the_id_and_a_long_one_expires() -> None:
    tracker = Tracker(TrackerConfig(max_age_s=1.0))
    for i in range(5):
        tracker.update([person(0.3)], i / FPS)
    assert tracker.update([], 5 / FPS) == []  # missed: not reported this frame...
    (back,) = tracker.update([person(0.3)], 6 / FPS)  # ...but still known
    assert back.track_id == 1
    tracker.update([], 7 / FPS)
    tracker.update([], 7 / FPS + 1.5)  # unseen for longer than max_age_s
    assert tracker.active_count == 0
    tracker.update([person(0.3)], 9.0)
    (new,) = tracker.update([person(0.3)], 9.0 + 1 / FPS)
    assert new.track_id == 2


def test_low_score_detections_extend_a_track_but_never_start_one() -> None:
    tracker = Tracker()
    for i in range(3):
        tracker.update([person(0.3)], i / FPS)
    # partly occluded: the detector is unsure, ByteTrack's second stage keeps the id
    (kept,) = tracker.update([person(0.3, score=0.3)], 3 / FPS)
    assert kept.track_id == 1
    fresh = Tracker()
    for i in range(5):
        assert fresh.update([person(0.3, score=0.3)], i / FPS) == []


def test_tracks_are_per_class() -> None:
    tracker = Tracker()
    for i in range(3):
        tracks = tracker.update([person(0.3, y=0.3), bag(0.3, y=0.3)], i / FPS)
    assert sorted((t.label, t.track_id) for t in tracks) == [("backpack", 2), ("person", 1)]


def test_iou_matrix() -> None:
    iou = iou_matrix([(0, 0, 1, 1)], [(0, 0, 1, 1), (0.5, 0, 1.5, 1), (2, 2, 3, 3)])
    assert iou[0].round(3).tolist() == [1.0, 0.333, 0.0]
