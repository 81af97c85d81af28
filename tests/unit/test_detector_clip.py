"""The fast path sees what the plain one sees: FastestDet over the shared benchmark clip,
preprocessed into pooled tensors and decoded by the vectorised decoder and NMS, gives the
boxes, scores and alerts of the straightforward reference written here (resize, astype,
transpose; FastestDet's decoding cell by cell; box-by-box NMS), within 1e-4."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from s4edge.drivers.frames import ReplaySource
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.detector import Detector
from s4edge.edge.vision.pipeline import VisionPipeline
from s4edge.edge.vision.tracker import Tracker
from s4edge.edge.vision.types import Detection

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CLIP = SHARED / "data/video/bench_people_640x480_15fps.avi"
FRAMES = 150  # ten seconds of pans and zooms, and the start of the still stretch (113-172)
TOLERANCE = 1e-4
pytestmark = pytest.mark.skipif(not CLIP.is_file(), reason=f"{CLIP} is absent: the benchmark clip lives there")


@pytest.fixture(scope="module")
def fastestdet(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    catalogue = Catalogue(models_dir=REPO / "models", cache_dir=tmp_path_factory.mktemp("cache"))
    catalogue.pull("fastestdet", SHARED / "models")
    return Detector.from_catalogue(catalogue, "fastestdet")


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """The frames as plain OpenCV decodes them, one fresh array each."""
    video = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < FRAMES:
        ok, frame = video.read()
        assert ok, "the clip ended early"
        frames.append(frame)
    video.release()
    return frames


class ReferenceDetector:
    """The straightforward path, on the same model session: what the fast one must match."""

    def __init__(self, detector: Detector) -> None:
        self.model_ref = detector.model_ref
        self.backend = detector.backend
        self.labels = detector.labels
        self.spec = detector.manifest.input
        self.decoder = detector.manifest.decoder
        self.threshold = detector.score_threshold

    def tensor(self, frame: np.ndarray) -> np.ndarray:
        resized = cv2.resize(frame, (self.spec.width, self.spec.height))
        scaled = resized.astype(np.float32) * np.float32(self.spec.scale)
        normalised = (scaled - np.asarray(self.spec.mean, np.float32)) / np.asarray(self.spec.std, np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])  # HWC → NCHW, BGR kept

    def detect(self, frame: np.ndarray) -> list[Detection]:
        pred = self.backend.run(self.tensor(frame))[0][0]  # 85 × rows × cols
        _, rows, cols = pred.shape
        found: list[tuple[float, int, tuple[float, float, float, float]]] = []
        for y in range(rows):  # FastestDet's example/onnx-runtime/runtime.py, cell by cell
            for x in range(cols):
                obj = min(max(float(pred[0, y, x]), 0.0), 1.0)
                cls = min(max(float(pred[5:, y, x].max()), 0.0), 1.0)
                score = obj**0.6 * cls**0.4
                if score <= self.threshold:
                    continue
                cx = (x + math.tanh(float(pred[1, y, x]))) / cols
                cy = (y + math.tanh(float(pred[2, y, x]))) / rows
                w = 1 / (1 + math.exp(-float(pred[3, y, x])))
                h = 1 / (1 + math.exp(-float(pred[4, y, x])))
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                found.append((score, int(pred[5:, y, x].argmax()), box))
        kept: list[tuple[float, int, tuple[float, float, float, float]]] = []
        for candidate in sorted(found, key=lambda c: -c[0]):  # greedy, class by class
            if len(kept) < self.decoder.max_detections and all(
                k[1] != candidate[1] or iou(k[2], candidate[2]) <= self.decoder.nms_iou for k in kept
            ):
                kept.append(candidate)
        # stretched, so input-normalised is frame-normalised
        return [
            Detection(cid, self.labels[cid], score, tuple(min(max(v, 0.0), 1.0) for v in box))  # type: ignore[arg-type]
            for score, cid, box in kept
        ]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_same_detections(got: list[Detection], expected: list[Detection]) -> None:
    assert [d.class_id for d in got] == [d.class_id for d in expected]
    assert [d.label for d in got] == [d.label for d in expected]
    np.testing.assert_allclose([d.score for d in got], [d.score for d in expected], atol=TOLERANCE)
    np.testing.assert_allclose(
        np.reshape([d.box for d in got], (-1, 4)), np.reshape([d.box for d in expected], (-1, 4)), atol=TOLERANCE
    )


def test_replay_hands_over_the_frames_opencv_decodes(clip: list[np.ndarray]) -> None:
    """Frames read into reused buffers are the frames a plain read gives, and none is
    overwritten while it is still held."""
    replay = ReplaySource(CLIP, realtime=False)
    replay.open()
    held = []
    for expected in clip:
        ok, frame, _ = replay.read()
        assert ok and frame is not None
        np.testing.assert_array_equal(frame, expected)
        held.append(frame)
    replay.close()
    for frame, expected in zip(held, clip, strict=True):
        np.testing.assert_array_equal(frame, expected)


def test_preprocess_gives_the_reference_tensor_and_keeps_it_while_held(
    fastestdet: Detector, clip: list[np.ndarray]
) -> None:
    reference = ReferenceDetector(fastestdet)
    tensors = [fastestdet.preprocess(frame)[0] for frame in clip[:8]]  # all held at once
    assert len({id(t) for t in tensors}) == len(tensors)
    for tensor, frame in zip(tensors, clip[:8], strict=True):
        np.testing.assert_allclose(tensor, reference.tensor(frame), atol=1e-6)


def test_detections_on_the_clip_match_the_reference_path(fastestdet: Detector, clip: list[np.ndarray]) -> None:
    reference = ReferenceDetector(fastestdet)
    seen = 0
    for frame in clip:
        expected = reference.detect(frame)
        assert_same_detections(fastestdet.detect(frame), expected)
        seen += len(expected)
    assert seen > FRAMES  # people in most frames: the comparison is not vacuous


def run_pipeline(detector: Any, clip: list[np.ndarray]) -> list[AlertDraft]:
    drafts: list[AlertDraft] = []
    book = IncidentBook(drafts.append, update_interval_s=0.0)
    scene = SceneConfig.model_validate(
        {
            "zones": [{"name": "centre", "polygon": [[0.25, 0.3], [0.75, 0.3], [0.75, 1.0], [0.25, 1.0]]}],
            "lines": [{"name": "mid", "a": [0.5, 0.0], "b": [0.5, 1.0]}],
            "rules": [
                {"type": "intrusion", "name": "centre-intrusion", "zone": "centre"},
                {"type": "loitering", "name": "centre-loiter", "zone": "centre", "dwell_s": 3},
                {"type": "crowd", "name": "crowd", "levels": [{"on_at": 4, "severity": "Moderate"}]},
                {"type": "line_cross", "name": "mid-cross", "line": "mid"},
            ],
        }
    )
    pipeline = VisionPipeline("cam0", detector, Tracker(), SceneAnalytics("cam0", scene, book), book)
    for index, frame in enumerate(clip):
        pipeline.process(frame, index / 15)
    return drafts


def corners(boxes: list[Any]) -> np.ndarray:
    return np.reshape([(b.x1, b.y1, b.x2, b.y2) for b in boxes], (-1, 4))


def summary(drafts: list[AlertDraft]) -> list[tuple[Any, ...]]:
    """What each alert says, its incident told by order of first appearance (ids are random)."""
    incidents: dict[str, int] = {}
    return [
        (a.kind, a.severity, a.state, incidents.setdefault(a.incident, len(incidents)), a.title, a.detail, a.zone)
        for a in drafts
    ]


def test_the_alerts_on_the_clip_match_the_reference_path(fastestdet: Detector, clip: list[np.ndarray]) -> None:
    expected = run_pipeline(ReferenceDetector(fastestdet), clip)
    got = run_pipeline(fastestdet, clip)
    assert len(expected) >= 3  # intrusion, crowd, loitering or crossings: something to compare
    assert summary(got) == summary(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert (mine.detection is None) == (theirs.detection is None)
        if mine.detection is not None and theirs.detection is not None:
            assert mine.detection.count == theirs.detection.count
            assert mine.detection.track_ids == theirs.detection.track_ids
            np.testing.assert_allclose(corners(mine.detection.boxes), corners(theirs.detection.boxes), atol=TOLERANCE)


def test_the_replay_decodes_the_clip_as_plain_opencv_does(clip: list[np.ndarray]) -> None:
    """The replay's FFmpeg runs one decoding thread (``drivers.frames.open_video``): the same
    pixels, frame for frame."""
    replay = ReplaySource(CLIP, realtime=False)
    replay.open()
    try:
        for expected in clip:
            ok, frame, _ = replay.read()
            assert ok and frame is not None
            np.testing.assert_array_equal(frame, expected)
    finally:
        replay.close()
