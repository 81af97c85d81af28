"""The tracker keeps ids through motion, crossings and short misses, and forgets lost tracks."""

from __future__ import annotations

import itertools
import random

import pytest
from tracker_reference import ReferenceTracker

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


@pytest.mark.parametrize("fps", [5, 15, 30])
def test_a_person_who_walks_then_stops_keeps_one_id_at_any_frame_rate(fps: int) -> None:
    """Three box widths a second for 3 s, then a dead stop. The process noise was ByteTrack's
    scaled by dt² instead of dt: 15 times too small at 15 fps, so the velocity adapted too
    slowly, the prediction overshot the stopped person, and they got a new id at 3.4 s."""
    tracker = Tracker()
    seen: set[int] = set()
    for frame in range(6 * fps + 1):
        t = frame / fps
        x = 0.2 + 0.15 * min(t, 3.0)
        seen |= {track.track_id for track in tracker.update([person(x, 0.6, w=0.05, h=0.2)], t)}
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


def _scene(seed: int, frames: int = 200) -> list[tuple[float, list[Detection]]]:
    """People and bags walking, with jitter, misses, low scores, clutter and repeated
    timestamps: every branch of the tracker, frame after frame."""
    rng = random.Random(seed)
    walkers = []  # class, x, y, x step, y step
    for _ in range(rng.randint(1, 7)):
        start = [rng.uniform(0, 0.8), rng.uniform(0.1, 0.6)]
        walkers.append([rng.choice([0, 24]), *start, rng.gauss(0, 0.01), rng.gauss(0, 0.005)])
    scenes, now = [], 0.0
    for _ in range(frames):
        now += rng.choice([1 / FPS, 1 / FPS, 1 / FPS, 2 / FPS, 0.0, 0.9])
        dets = []
        for walker in walkers:
            walker[1] += walker[3]
            walker[2] += walker[4]
            if rng.random() < 0.15:
                continue  # missed this frame
            x, y = walker[1] + rng.gauss(0, 0.004), walker[2] + rng.gauss(0, 0.004)
            score = rng.choice([0.9, 0.8, 0.6, 0.45, 0.3, 0.05])
            label = "person" if walker[0] == 0 else "backpack"
            dets.append(Detection(walker[0], label, score, (x, y, x + 0.1, y + 0.3)))
        if rng.random() < 0.2:  # clutter
            x, y = rng.random(), rng.random()
            dets.append(Detection(0, "person", rng.uniform(0.5, 0.9), (x, y, x + 0.05, y + 0.1)))
        rng.shuffle(dets)
        scenes.append((now, dets))
    return scenes


@pytest.mark.parametrize("min_hits", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_the_batched_filters_track_as_one_filter_per_track_did(seed: int, min_hits: int) -> None:
    """Every track's Kalman state is a row of one array now; the ids, hits, scores and
    boxes are those of one filter object per track, predicted and updated one by one."""
    config = TrackerConfig(min_hits=min_hits)
    tracker, reference = Tracker(config), ReferenceTracker(config)
    reported = 0
    for now, dets in _scene(seed):
        got, want = tracker.update(dets, now), reference.update(dets, now)
        assert [(t.track_id, t.label, t.hits, t.score, t.first_seen, t.last_seen) for t in got] == [
            (t.track_id, t.label, t.hits, t.score, t.first_seen, t.last_seen) for t in want
        ]
        for a, b in zip(got, want, strict=True):
            assert a.box == pytest.approx(b.box, abs=1e-9)
        assert tracker.active_count == reference.active_count
        reported += len(got)
    assert reported > 50  # the scene did make tracks
