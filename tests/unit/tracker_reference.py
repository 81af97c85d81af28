"""The tracker as it was before its Kalman states became rows of one array: one filter
object per track, predicted and updated one at a time. Kept as the reference the
batched tracker must match (tests/unit/test_tracker.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s4edge.edge.vision.assignment import linear_sum_assignment
from s4edge.edge.vision.tracker import Track, TrackerConfig, _xywh, iou_matrix  # unchanged by the batching
from s4edge.edge.vision.types import Detection

Box = tuple[float, float, float, float]


_EYE8 = np.eye(8)
_VEL = (np.arange(4), np.arange(4) + 4)  # position rows, velocity columns of the transition
_DIAG = np.diag_indices(8)


class _Kalman:
    """Constant velocity on (cx, cy, w, h); noise proportional to the box height, as
    ByteTrack's KalmanFilter does, per second rather than per frame."""

    POS_STD = 1.0 / 20
    VEL_STD = 1.0 / 160 * 15  # ByteTrack's per-frame weight at 15 fps, per second

    def __init__(self, box: Box) -> None:
        cx, cy, w, h = _xywh(box)
        self.x = np.array([cx, cy, w, h, 0.0, 0.0, 0.0, 0.0])
        s = max(h, 1e-3)
        self.P = np.diag(np.square([2 * self.POS_STD * s] * 4 + [10 * self.VEL_STD * s] * 4))

    def predict(self, dt: float) -> None:
        if dt <= 0:
            return
        f = _EYE8.copy()
        f[_VEL] = dt
        s = max(float(self.x[3]), 1e-3) * math.sqrt(15.0 * dt)  # ByteTrack's per-frame noise at 15 fps
        self.x = f @ self.x
        self.x[2:4] = np.maximum(self.x[2:4], 1e-4)
        self.P = f @ self.P @ f.T
        self.P[_DIAG] += np.square(_Q_WEIGHTS * s)

    def update(self, box: Box) -> None:
        z = np.array(_xywh(box))
        s = max(float(self.x[3]), 1e-3)
        # H selects (cx, cy, w, h): H·P·Hᵀ is P's top-left block, P·Hᵀ its left columns
        cov = self.P[:4, :4] + np.eye(4) * (self.POS_STD * s) ** 2
        gain = np.linalg.solve(cov, self.P[:4, :]).T
        self.x = self.x + gain @ (z - self.x[:4])
        self.P = self.P - gain @ self.P[:4, :]

    def box(self) -> Box:
        cx, cy, w, h = (float(v) for v in self.x[:4])
        return _clip((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))


_Q_WEIGHTS = np.array([_Kalman.POS_STD] * 4 + [_Kalman.VEL_STD] * 4)


def _clip(box: Box) -> Box:
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in box)
    return x1, y1, max(x1, x2), max(y1, y2)


def _associate(
    tracks: list[_TrackState], dets: list[Detection], min_iou: float
) -> tuple[list[tuple[_TrackState, Detection]], list[_TrackState], list[Detection]]:
    """Hungarian assignment on 1 − IoU; pairs under ``min_iou`` stay unmatched."""
    iou = iou_matrix([t.kalman.box() for t in tracks], [d.box for d in dets])
    pairs: list[tuple[_TrackState, Detection]] = []
    used_t: set[int] = set()
    used_d: set[int] = set()
    if iou.size:
        rows, cols = linear_sum_assignment(1.0 - iou)
        for r, c in zip(rows, cols, strict=True):
            if iou[r, c] >= min_iou:
                pairs.append((tracks[r], dets[c]))
                used_t.add(int(r))
                used_d.add(int(c))
    return (
        pairs,
        [t for i, t in enumerate(tracks) if i not in used_t],
        [d for i, d in enumerate(dets) if i not in used_d],
    )


@dataclass(eq=False)
class _TrackState:
    class_id: int
    label: str
    kalman: _Kalman
    score: float
    first_seen: float
    last_seen: float
    last_predicted: float
    hits: int = 1
    track_id: int | None = None

    def hit(self, det: Detection, now: float) -> None:
        self.kalman.update(det.box)
        self.score = det.score
        self.last_seen = now
        self.hits += 1


class ReferenceTracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_TrackState] = []
        self._next_id = 1

    def update(self, detections: Sequence[Detection], now: float) -> list[Track]:
        """Feed one frame's detections at time ``now``; returns the confirmed tracks
        seen in this frame."""
        cfg = self.config
        for track in self._tracks:
            track.kalman.predict(now - track.last_predicted)
            track.last_predicted = now
        seen: set[int] = set()
        for class_id in sorted({t.class_id for t in self._tracks} | {d.class_id for d in detections}):
            seen |= self._update_class(class_id, [d for d in detections if d.class_id == class_id], now)
        self._tracks = [t for t in self._tracks if now - t.last_seen <= cfg.max_age_s]
        return [self._public(t) for t in self._tracks if t.track_id is not None and id(t) in seen]

    def _update_class(self, class_id: int, dets: list[Detection], now: float) -> set[int]:
        cfg = self.config
        high = [d for d in dets if d.score >= cfg.high_score]
        low = [d for d in dets if cfg.low_score <= d.score < cfg.high_score]
        mine = [t for t in self._tracks if t.class_id == class_id]
        confirmed = [t for t in mine if t.track_id is not None]
        tentative = [t for t in mine if t.track_id is None]

        # ByteTrack §3: confident detections first, then low-score ones for the rest.
        pairs, left_tracks, left_high = _associate(confirmed, high, cfg.match_iou)
        low_pairs, _, _ = _associate(left_tracks, low, cfg.low_match_iou)
        new_pairs, _, unmatched = _associate(tentative, left_high, cfg.match_iou)

        seen: set[int] = set()
        for track, det in [*pairs, *low_pairs, *new_pairs]:
            track.hit(det, now)
            seen.add(id(track))
            if track.track_id is None and track.hits >= cfg.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
        # an unmatched tentative track was noise: ByteTrack removes it at once
        self._tracks = [t for t in self._tracks if t.class_id != class_id or t.track_id is not None or id(t) in seen]
        for det in unmatched:
            if det.score >= cfg.new_track_score:
                track = _TrackState(det.class_id, det.label, _Kalman(det.box), det.score, now, now, now)
                if cfg.min_hits <= 1:
                    track.track_id = self._next_id
                    self._next_id += 1
                self._tracks.append(track)
                seen.add(id(track))
        return seen

    @staticmethod
    def _public(t: _TrackState) -> Track:
        assert t.track_id is not None
        return Track(t.track_id, t.class_id, t.label, t.kalman.box(), t.score, t.first_seen, t.last_seen, t.hits)

    @property
    def active_count(self) -> int:
        return sum(1 for t in self._tracks if t.track_id is not None)
