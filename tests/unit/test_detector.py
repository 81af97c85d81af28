"""Real models on real photos: people are found where there are people, and nowhere else."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from s4edge.edge.vision.backends import BackendOptions
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.detector import Detector, Geometry
from s4edge.edge.vision.evaluate import EVAL_SCORE_THRESHOLD, evaluate

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
TFLITE_FASTESTDET = ("fastestdet-tflite", "fastestdet-tflite-int8", "fastestdet-tflite-int8-3out")
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent: the reference models live there")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    catalogue = Catalogue(models_dir=REPO / "models", cache_dir=tmp_path_factory.mktemp("cache"))
    for name in ("fastestdet", "mediapipe-pose", *TFLITE_FASTESTDET):
        catalogue.pull(name, SHARED / "models")
    return catalogue


@pytest.fixture(scope="module")
def fastestdet(catalogue: Catalogue) -> Detector:
    return Detector.from_catalogue(catalogue, "fastestdet")


@pytest.fixture(scope="module")
def pose(catalogue: Catalogue) -> Detector:
    return Detector.from_catalogue(catalogue, "mediapipe-pose")


def photo(name: str) -> np.ndarray:
    frame = cv2.imread(str(SHARED / "data/images" / name))
    assert frame is not None
    return frame


def people(detections) -> list:
    return [d for d in detections if d.label == "person"]


@pytest.mark.parametrize(("image", "count"), [("fastestdet_2.jpg", 3), ("coral_squat.bmp", 1), ("fastestdet_3.jpg", 4)])
def test_fastestdet_finds_the_people_in_a_photo(fastestdet: Detector, image: str, count: int) -> None:
    found = people(fastestdet.detect(photo(image)))
    assert len(found) == count
    for det in found:
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        assert det.score >= fastestdet.score_threshold


def test_fastestdet_box_lands_on_the_person(fastestdet: Detector) -> None:
    # coral_squat.bmp: one person filling the middle of a 500×610 portrait frame.
    (person,) = people(fastestdet.detect(photo("coral_squat.bmp")))
    x1, y1, x2, y2 = person.box
    assert 0.15 < x1 < 0.35 and 0.6 < x2 < 0.8 and 0.1 < y1 < 0.3 and y2 > 0.85


def test_fastestdet_sees_no_person_where_there_is_none(fastestdet: Detector) -> None:
    assert fastestdet.detect(np.zeros((480, 640, 3), np.uint8)) == []
    bus = fastestdet.detect(photo("fastestdet_1.jpg"))  # a bus, no one in view
    assert people(bus) == [] and [d.label for d in bus] == ["bus"]


def test_grayscale_and_bgra_frames_are_accepted(fastestdet: Detector) -> None:
    frame = photo("coral_squat.bmp")
    assert people(fastestdet.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)))
    with pytest.raises(ValueError, match="BGR frame"):
        fastestdet.detect(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("variant", TFLITE_FASTESTDET)
def test_tflite_fastestdet_variants_agree_with_onnx(catalogue: Catalogue, fastestdet: Detector, variant: str) -> None:
    converted = Detector.from_catalogue(catalogue, variant)
    for image in ("fastestdet_2.jpg", "coral_squat.bmp"):
        reference = people(fastestdet.detect(photo(image)))
        found = people(converted.detect(photo(image)))
        assert len(found) == len(reference)
        for det, ref in zip(sorted(found, key=lambda d: d.box), sorted(reference, key=lambda d: d.box), strict=True):
            np.testing.assert_allclose(det.box, ref.box, atol=0.05)


@pytest.mark.parametrize("image", ["coral_squat.bmp", "coral_grace_hopper.bmp", "coral_posenet_test_image.bmp"])
def test_mediapipe_pose_finds_a_person(pose: Detector, image: str) -> None:
    found = pose.detect(photo(image))
    assert len(found) >= 1
    assert {d.label for d in found} == {"person"}
    assert max(d.score for d in found) > 0.7


def test_mediapipe_pose_finds_no_one_in_an_empty_frame(pose: Detector) -> None:
    assert pose.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert pose.detect(np.full((480, 640, 3), 200, np.uint8)) == []
    assert pose.detect(photo("fastestdet_1.jpg")) == []  # the bus


def test_letterbox_boxes_map_back_onto_the_frame() -> None:
    # A 640×320 frame letterboxed into 224×224: scale 0.35, 56 px bars above and below.
    geometry = Geometry(640, 320, 0.35, 0.35, 0.0, 56.0, 224, 224)
    frame_box = np.array([[0.25, 0.5, 0.75, 1.0]])  # in frame-normalised coordinates
    # x: 160 px → 56, 480 px → 168; y: 160 px → 160 × 0.35 + 56 = 112, 320 px → 168.
    in_input = np.array([[56, 112, 168, 168]]) / 224
    np.testing.assert_allclose(geometry.to_frame(in_input), frame_box, atol=1e-9)


def test_letterbox_detection_matches_a_padded_copy(pose: Detector) -> None:
    """The same person, with the frame padded on the right, keeps its pixel box."""
    frame = photo("coral_squat.bmp")
    height, width = frame.shape[:2]
    padded = cv2.copyMakeBorder(frame, 0, 0, 0, width, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    (plain,) = pose.detect(frame)
    (wide,) = pose.detect(padded)
    np.testing.assert_allclose(
        np.array(wide.box) * [2 * width, height, 2 * width, height],
        np.array(plain.box) * [width, height, width, height],
        atol=0.05 * width,
    )


def test_model_ref_names_the_model_for_alerts(fastestdet: Detector) -> None:
    ref = fastestdet.model_ref
    assert ref.name == "fastestdet"
    assert ref.sha256 == "31cb14c017fce347cb4c846ec62fdf00d76bb3beecdf4be21e7116ac67feb880"


def test_threads_can_share_one_detector(pose: Detector) -> None:
    frame = photo("coral_squat.bmp")
    expected = pose.detect(frame)
    results: list = []

    def worker() -> None:
        results.extend(pose.detect(frame) == expected for _ in range(5))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [True] * 15


def test_eval_on_coco8_gives_a_sane_map(catalogue: Catalogue) -> None:
    detector = Detector.from_catalogue(catalogue, "fastestdet", score_threshold=EVAL_SCORE_THRESHOLD)
    report = evaluate(detector, SHARED / "data/coco8")
    assert report.images == 8 and report.instances == 30
    assert 0.3 < report.map50 <= 1.0
    assert 0 < report.map50_95 < report.map50
    person = next(c for c in report.classes if c.label == "person")
    assert person.instances == 10 and person.ap50 > 0


@pytest.mark.parametrize(("spin", "entry"), [(False, "0"), (True, "1")])
def test_idle_onnxruntime_threads_busy_wait_only_when_asked(catalogue: Catalogue, spin: bool, entry: str) -> None:
    detector = Detector.from_catalogue(catalogue, "fastestdet", BackendOptions(threads=2, spin=spin))
    options = detector.backend.session.get_session_options()  # type: ignore[attr-defined]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry


def test_a_nan_box_from_the_model_leaves_the_other_detections_as_they_were(fastestdet: Detector) -> None:
    # NMS keeps classes apart by an offset from the boxes' span: one NaN made it NaN, no box
    # suppressed another, and every duplicate reached the tracker (a crowd out of nothing)
    frame = photo("fastestdet_0.jpg")
    tensor, geometry = fastestdet.preprocess(frame)
    clean = fastestdet.decode(fastestdet.infer(tensor), geometry)
    outputs = [o.copy() for o in fastestdet.infer(tensor)]
    outputs[0][0, 0, 0, 0] = 10.0  # a far cell, sure of itself (objectness)
    outputs[0][0, 5 + 10, 0, 0] = 10.0  # and of its class
    outputs[0][0, 3, 0, 0] = np.nan  # with a width that is no number
    assert fastestdet.decode(outputs, geometry) == clean
