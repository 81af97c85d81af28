"""Multi-object tracking in the style of ByteTrack (Zhang et al., ECCV 2022, §3):
a constant-velocity Kalman filter per track, then two association stages by IoU,
first with the confident detections and then, for the tracks still unmatched, with
the low-score ones (an occluded person scores low but is still there).

Tracks are per class: a detection only ever extends a track of its own class. A new
track is tentative until it has ``min_hits`` hits, then gets the next integer id;
a confirmed track that is not seen is kept (lost) for ``max_age_s`` and then dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from s4edge.edge.vision.assignment import linear_sum_assignment  # scipy.optimize would cost the node 37 MB
from s4edge.edge.vision.types import Detection

Box = tuple[float, float, float, float]


class TrackerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    high_score: float = Field(default=0.5, ge=0, le=1, description="First-stage detections score at least this")
    low_score: float = Field(default=0.1, ge=0, le=1, description="Detections below this are ignored")
    new_track_score: float = Field(default=0.55, ge=0, le=1, description="An unmatched detection starts a track")
    match_iou: float = Field(default=0.2, ge=0, le=1, description="Minimum IoU to match in the first stage")
    low_match_iou: float = Field(default=0.5, ge=0, le=1, description="Minimum IoU to match a low-score detection")
    min_hits: int = Field(default=2, ge=1, description="Hits before a tentative track is confirmed")
    max_age_s: float = Field(default=1.5, gt=0, description="A lost track is dropped after this long unseen")


# ByteTrack's KalmanFilter: constant velocity on (cx, cy, w, h), noise proportional to the
# box height, here with velocities per second rather than per frame. ByteTrack's process
# noise is per frame; here it is ByteTrack's at REFERENCE_FPS, its variance growing with
# the time between frames as a random walk's does (∝ dt, not dt²): the same filter at 5,
# 15 or 30 fps. Every track's state is a row of one array, so a frame's predictions and
# updates are a few array operations, whatever the number of tracks (``s4edge bench
# vision``, track).
REFERENCE_FPS = 15.0
POS_STD = 1.0 / 20
VEL_STD = 1.0 / 160 * REFERENCE_FPS  # ByteTrack's per-frame weight at 15 fps, per second
_Q_WEIGHTS = np.array([POS_STD] * 4 + [VEL_STD] * 4)
_DIAG = np.diag_indices(8)
_EYE4 = np.eye(4)


def _initial(box: Box) -> tuple[np.ndarray, np.ndarray]:
    """A new track's state (cx, cy, w, h and their velocities) and covariance."""
    cx, cy, w, h = _xywh(box)
    s = max(h, 1e-3)
    return np.array([cx, cy, w, h, 0.0, 0.0, 0.0, 0.0]), np.diag(
        np.square([2 * POS_STD * s] * 4 + [10 * VEL_STD * s] * 4)
    )


def _predict(x: np.ndarray, p: np.ndarray, dt: float) -> None:
    """x ← F·x, P ← F·P·Fᵀ + Q in place, F the identity with ``dt`` from each velocity to
    its position: F·P adds dt × the velocity rows to the position rows, and ·Fᵀ does the
    same to the columns."""
    s = np.maximum(x[:, 3], 1e-3) * math.sqrt(REFERENCE_FPS * dt)
    x[:, :4] += x[:, 4:] * dt
    np.maximum(x[:, 2:4], 1e-4, out=x[:, 2:4])
    p[:, :4, :] += dt * p[:, 4:, :]
    p[:, :, :4] += dt * p[:, :, 4:]
    p[:, _DIAG[0], _DIAG[1]] += np.square(_Q_WEIGHTS * s[:, None])


def _correct(x: np.ndarray, p: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Kalman update of states ``x`` (M×8), covariances ``p`` by measured boxes ``z``
    (M×4, cx cy w h). H selects (cx, cy, w, h): H·P·Hᵀ is P's top-left block, P·Hᵀ its
    left columns."""
    s = np.maximum(x[:, 3], 1e-3)
    cov = p[:, :4, :4] + _EYE4 * np.square(POS_STD * s)[:, None, None]
    gain = np.linalg.solve(cov, p[:, :4, :]).transpose(0, 2, 1)  # M × 8 × 4
    x = x + np.einsum("mij,mj->mi", gain, z - x[:, :4])
    return x, p - gain @ p[:, :4, :]


def _boxes(x: np.ndarray) -> np.ndarray:
    """States → x1, y1, x2, y2 clipped to the frame, x2 ≥ x1 and y2 ≥ y1."""
    half = x[:, 2:4] / 2
    boxes = np.concatenate([x[:, :2] - half, x[:, :2] + half], axis=1)
    np.minimum(np.maximum(boxes, 0.0, out=boxes), 1.0, out=boxes)  # np.clip's values, at a third of its cost
    np.maximum(boxes[:, 2:], boxes[:, :2], out=boxes[:, 2:])
    return boxes


def _xywh(box: Box) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1e-4), max(y2 - y1, 1e-4)


def iou_matrix(a: Sequence[Box] | np.ndarray, b: Sequence[Box] | np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    aa = np.asarray(a, dtype=float)[:, None, :]
    bb = np.asarray(b, dtype=float)[None, :, :]
    iw = np.maximum(np.minimum(aa[..., 2], bb[..., 2]) - np.maximum(aa[..., 0], bb[..., 0]), 0.0)
    ih = np.maximum(np.minimum(aa[..., 3], bb[..., 3]) - np.maximum(aa[..., 1], bb[..., 1]), 0.0)
    inter = iw * ih
    area_a = (aa[..., 2] - aa[..., 0]) * (aa[..., 3] - aa[..., 1])
    area_b = (bb[..., 2] - bb[..., 0]) * (bb[..., 3] - bb[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _associate(
    rows: list[int], cols: list[int], iou: np.ndarray, min_iou: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Hungarian assignment on 1 − IoU between the tracks at ``rows`` and the detections
    at ``cols`` of the frame's ``iou`` matrix; pairs under ``min_iou`` stay unmatched."""
    if not rows or not cols:
        return [], rows, cols
    sub = iou[rows][:, cols]
    pairs: list[tuple[int, int]] = []
    used_t: set[int] = set()
    used_d: set[int] = set()
    matched_rows, matched_cols = linear_sum_assignment(1.0 - sub)
    for r, c in zip(matched_rows.tolist(), matched_cols.tolist(), strict=True):
        if sub[r, c] >= min_iou:
            pairs.append((rows[r], cols[c]))
            used_t.add(r)
            used_d.add(c)
    return (
        pairs,
        [row for i, row in enumerate(rows) if i not in used_t],
        [col for i, col in enumerate(cols) if i not in used_d],
    )


@dataclass(frozen=True, slots=True)
class Track:
    """A confirmed track as the analytics see it; ``box`` is the filtered box."""

    track_id: int
    class_id: int
    label: str
    box: Box
    score: float
    first_seen: float
    last_seen: float
    hits: int

    @property
    def foot(self) -> tuple[float, float]:
        """Where the object touches the ground: the bottom centre of its box."""
        return (self.box[0] + self.box[2]) / 2, self.box[3]

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(eq=False, slots=True)
class _TrackState:
    """A track's bookkeeping; its Kalman state is the same row of ``Tracker._x``/``_p``."""

    class_id: int
    label: str
    score: float
    first_seen: float
    last_seen: float
    hits: int = 1
    track_id: int | None = None


class Tracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_TrackState] = []
        self._x = np.zeros((0, 8))  # row i: track i's (cx, cy, w, h, vcx, vcy, vw, vh)
        self._p = np.zeros((0, 8, 8))  # row i: its covariance
        self._predicted_at: float | None = None
        self._next_id = 1

    def update(self, detections: Sequence[Detection], now: float) -> list[Track]:
        """Feed one frame's detections at time ``now``; returns the confirmed tracks
        seen in this frame."""
        cfg = self.config
        if self._tracks and self._predicted_at is not None and now > self._predicted_at:
            _predict(self._x, self._p, now - self._predicted_at)
        self._predicted_at = now
        dets = list(detections)
        iou = iou_matrix(_boxes(self._x), [d.box for d in dets])
        hits: list[tuple[int, Detection]] = []
        dropped: set[int] = set()
        born: list[tuple[_TrackState, Detection]] = []
        for class_id in sorted({t.class_id for t in self._tracks} | {d.class_id for d in dets}):
            mine = [i for i, d in enumerate(dets) if d.class_id == class_id]
            self._update_class(class_id, dets, mine, iou, now, hits, dropped, born)
        if hits:
            rows = [row for row, _ in hits]
            z = np.array([_xywh(det.box) for _, det in hits])
            self._x[rows], self._p[rows] = _correct(self._x[rows], self._p[rows], z)
        seen = {row for row, _ in hits}
        keep = [i for i, t in enumerate(self._tracks) if i not in dropped and now - t.last_seen <= cfg.max_age_s]
        tracks, x, p = [self._tracks[i] for i in keep], self._x[keep], self._p[keep]
        seen = {j for j, i in enumerate(keep) if i in seen}
        if born:
            states = [_initial(det.box) for _, det in born]
            seen |= set(range(len(tracks), len(tracks) + len(born)))
            tracks += [track for track, _ in born]
            x = np.concatenate([x, np.stack([s[0] for s in states])])
            p = np.concatenate([p, np.stack([s[1] for s in states])])
        self._tracks, self._x, self._p = tracks, x, p
        shown = [i for i in sorted(seen) if tracks[i].track_id is not None]
        if not shown:
            return []
        out = _boxes(x[shown]).tolist()
        return [self._public(tracks[i], box) for i, box in zip(shown, out, strict=True)]

    def _update_class(
        self,
        class_id: int,
        dets: list[Detection],
        mine: list[int],
        iou: np.ndarray,
        now: float,
        hits: list[tuple[int, Detection]],
        dropped: set[int],
        born: list[tuple[_TrackState, Detection]],
    ) -> None:
        """Match one class's detections (``mine``, indices into ``dets``) to its tracks:
        the hits go to ``hits`` (their Kalman updates wait for the frame's end), the
        tentative tracks left unmatched to ``dropped``, the detections that start a track
        to ``born``. Ids are given here, in the order ByteTrack gives them."""
        cfg = self.config
        high = [i for i in mine if dets[i].score >= cfg.high_score]
        low = [i for i in mine if cfg.low_score <= dets[i].score < cfg.high_score]
        confirmed = [i for i, t in enumerate(self._tracks) if t.class_id == class_id and t.track_id is not None]
        tentative = [i for i, t in enumerate(self._tracks) if t.class_id == class_id and t.track_id is None]

        # ByteTrack §3: confident detections first, then low-score ones for the rest.
        pairs, left_tracks, left_high = _associate(confirmed, high, iou, cfg.match_iou)
        low_pairs, _, _ = _associate(left_tracks, low, iou, cfg.low_match_iou)
        new_pairs, _, unmatched = _associate(tentative, left_high, iou, cfg.match_iou)

        matched: set[int] = set()
        for row, col in [*pairs, *low_pairs, *new_pairs]:
            track, det = self._tracks[row], dets[col]
            track.score, track.last_seen = det.score, now
            track.hits += 1
            hits.append((row, det))
            matched.add(row)
            if track.track_id is None and track.hits >= cfg.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
        # an unmatched tentative track was noise: ByteTrack removes it at once
        dropped.update(row for row in tentative if row not in matched)
        for col in unmatched:
            det = dets[col]
            if det.score >= cfg.new_track_score:
                track = _TrackState(det.class_id, det.label, det.score, now, now)
                if cfg.min_hits <= 1:
                    track.track_id = self._next_id
                    self._next_id += 1
                born.append((track, det))

    @staticmethod
    def _public(t: _TrackState, box: list[float]) -> Track:
        assert t.track_id is not None
        x1, y1, x2, y2 = box
        return Track(t.track_id, t.class_id, t.label, (x1, y1, x2, y2), t.score, t.first_seen, t.last_seen, t.hits)

    @property
    def active_count(self) -> int:
        return sum(1 for t in self._tracks if t.track_id is not None)
