"""Decoders recover known boxes from output tensors built by hand; NMS keeps the right ones."""

from __future__ import annotations

import re
import shutil
import sys

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.vision.catalogue import Catalogue, default_models_dir
from s4edge.edge.vision.decoders import DecodeContext, bind
from s4edge.edge.vision.decoders.mediapipe_pose import anchor_centres
from s4edge.edge.vision.decoders.yolox import grids
from s4edge.edge.vision.detector import Detector
from s4edge.edge.vision.manifest import DecoderSpec, ManifestError
from s4edge.edge.vision.nms import MATRIX_MAX, iou, nms, pairwise_iou, weighted_nms


def decoder(family: str, **options):
    return bind(DecoderSpec(family=family, options=options), "test")


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_yolov8_recovers_boxes_in_input_pixels() -> None:
    width, height, anchors, classes = 640, 480, 100, 3
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[0, :4, 7] = [320, 240, 64, 48]  # cx, cy, w, h in pixels
    out[0, 4 + 2, 7] = 0.9
    out[0, :4, 42] = [100, 100, 20, 40]
    out[0, 4 + 0, 42] = 0.6
    out[0, 4 + 1, 50] = 0.2  # below the threshold
    found = decoder("yolov8")([out], DecodeContext(width, height, 0.5))
    order = np.argsort(-found.scores)
    np.testing.assert_allclose(
        found.boxes[order], [[0.45, 0.45, 0.55, 0.55], [90 / 640, 80 / 480, 110 / 640, 120 / 480]], atol=1e-6
    )
    assert found.class_ids[order].tolist() == [2, 0]
    np.testing.assert_allclose(found.scores[order], [0.9, 0.6], atol=1e-6)


def test_yolox_decodes_grid_offsets_and_strides() -> None:
    size, strides = 64, [8, 16, 32]
    cells, steps = grids(strides, size, size)
    assert len(cells) == 8 * 8 + 4 * 4 + 2 * 2
    out = np.zeros((1, len(cells), 5 + 2), np.float32)
    # Row 64 is the first cell of stride 16: grid (0, 0). Box centre (0.5+0)*16 = 8, size exp(ln 2)*16 = 32.
    row = 64
    assert tuple(cells[row]) == (0, 0) and steps[row] == 16
    out[0, row, :4] = [0.5, 0.5, np.log(2), np.log(2)]
    out[0, row, 4] = 0.9  # objectness
    out[0, row, 5 + 1] = 0.8
    # Row 9 is stride 8, grid (1, 1): centre (0 + 1) × 8 = 8, size exp(0) × 8 = 8.
    assert tuple(cells[9]) == (1, 1)
    out[0, 9, :4] = [0.0, 0.0, 0.0, 0.0]
    out[0, 9, 4], out[0, 9, 5] = 1.0, 0.7
    found = decoder("yolox")([out], DecodeContext(size, size, 0.5))
    order = np.argsort(-found.scores)
    np.testing.assert_allclose(found.scores[order], [0.72, 0.7], atol=1e-6)
    np.testing.assert_allclose(found.boxes[order][0], np.array([8 - 16, 8 - 16, 8 + 16, 8 + 16]) / 64, atol=1e-6)
    np.testing.assert_allclose(found.boxes[order][1], np.array([4, 4, 12, 12]) / 64, atol=1e-6)
    assert found.class_ids[order].tolist() == [1, 0]


def test_yolox_refuses_strides_that_do_not_fit_the_output() -> None:
    out = np.zeros((1, 10, 7), np.float32)
    with pytest.raises(ValueError, match="cells"):
        decoder("yolox")([out], DecodeContext(64, 64, 0.5))


def test_ssd_postprocess_outputs_become_xyxy() -> None:
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]  # ymin, xmin, ymax, xmax
    boxes[0, 1] = [0.0, 0.0, 1.0, 1.0]
    boxes[0, 2] = [0.3, 0.3, 0.4, 0.4]  # beyond count: ignored
    classes = np.array([[0, 5, 0] + [0] * 7], np.float32)
    scores = np.array([[0.9, 0.3, 0.99] + [0] * 7], np.float32)
    count = np.array([2], np.float32)
    found = decoder("ssd", label_offset=1)([boxes, classes, scores, count], DecodeContext(300, 300, 0.5))
    np.testing.assert_allclose(found.boxes, [[0.2, 0.1, 0.6, 0.5]])
    assert found.class_ids.tolist() == [1]
    assert found.suppressed


def test_fastestdet_decodes_one_cell() -> None:
    out = np.zeros((1, 85, 22, 22), np.float32)
    row, col = 10, 5
    out[0, 0, row, col] = 0.9  # objectness
    out[0, 1, row, col] = np.arctanh(0.5)  # x offset → +0.5 cell
    out[0, 2, row, col] = 0.0
    out[0, 3, row, col] = logit(0.2)  # width, relative to the image
    out[0, 4, row, col] = logit(0.4)
    out[0, 5 + 0, row, col] = 0.8  # person
    found = decoder("fastestdet")([out], DecodeContext(352, 352, 0.5))
    cx, cy = (col + 0.5) / 22, row / 22
    np.testing.assert_allclose(found.boxes, [[cx - 0.1, cy - 0.2, cx + 0.1, cy + 0.2]], atol=1e-5)
    np.testing.assert_allclose(found.scores, [0.9**0.6 * 0.8**0.4], rtol=1e-5)
    assert found.class_ids.tolist() == [0]


def test_fastestdet_nhwc_three_outputs_match_nchw() -> None:
    rng = np.random.default_rng(1)
    nchw = rng.uniform(-2, 2, (1, 85, 22, 22)).astype(np.float32)
    nchw[:, 0] = rng.uniform(0, 1, (1, 22, 22))
    nchw[:, 5:] = rng.uniform(0, 1, (1, 80, 22, 22))
    nhwc = nchw.transpose(0, 2, 3, 1)
    split = [nhwc[..., :1], nhwc[..., 1:5], nhwc[..., 5:]]
    context = DecodeContext(352, 352, 0.7)
    expected = decoder("fastestdet")([nchw], context)
    got = decoder("fastestdet", layout="NHWC")(split, context)
    assert len(expected.scores) > 0
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-6)
    np.testing.assert_array_equal(got.class_ids, expected.class_ids)


@pytest.mark.parametrize(
    ("outputs", "layout", "says"),
    [
        # an auxiliary map before the head: its channel was read as objectness ("bicycle 0.87")
        ([np.zeros((1, 1, 22, 22)), np.zeros((1, 85, 22, 22))], "NCHW", "got 2 outputs"),
        ([np.zeros((1, 4, 22, 22)), np.zeros((1, 1, 22, 22)), np.zeros((1, 80, 22, 22))], "NCHW", "[4, 1, 80]"),
        # an NCHW map read as NHWC: rows of channels, and boxes in the wrong places
        ([np.zeros((1, 85, 22, 22))], "NHWC", "a 85 × 22 grid does not tile the 352 × 352 input"),
    ],
)
def test_fastestdet_refuses_outputs_it_cannot_read(outputs: list[np.ndarray], layout: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        decoder("fastestdet", layout=layout)([o.astype(np.float32) for o in outputs], DecodeContext(352, 352, 0.5))


def test_fastestdet_takes_a_grid_that_rounds_up_on_one_side() -> None:
    # 640 × 360 at stride 16: 40 × 22.5, which a network rounds up to 23 rows
    found = decoder("fastestdet")([np.zeros((1, 85, 23, 40), np.float32)], DecodeContext(640, 360, 0.5))
    assert len(found.scores) == 0


def test_mediapipe_pose_anchor_count_matches_the_model() -> None:
    anchors = anchor_centres((8, 16, 32, 32, 32), 224, 224, 2, 0.5)
    assert anchors.shape == (2254, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 28, 0.5 / 28])
    np.testing.assert_allclose(anchors[-1], [6.5 / 7, 6.5 / 7])


def test_mediapipe_pose_decodes_body_and_face_boxes() -> None:
    raw = np.zeros((1, 2254, 12), np.float32)
    logits = np.full((1, 2254, 1), -10.0, np.float32)
    index = 2 * (14 * 28 + 14)  # the stride-8 cell (14, 14): centre (14.5/28, 14.5/28)
    centre = 14.5 / 28
    raw[0, index, :4] = [22.4, 0, 44.8, 67.2]  # face box: +0.1 in x, 0.2 × 0.3
    raw[0, index, 4:6] = [0, 22.4]  # hip centre: +0.1 in y
    raw[0, index, 6:8] = [0, 22.4 + 44.8]  # radius point 0.2 below the hip
    logits[0, index, 0] = 3.0
    context = DecodeContext(224, 224, 0.5)
    body = decoder("mediapipe_pose")([raw, logits], context)
    hip_y = centre + 0.1
    np.testing.assert_allclose(body.boxes, [[centre - 0.2, hip_y - 0.2, centre + 0.2, hip_y + 0.2]], atol=1e-5)
    np.testing.assert_allclose(body.scores, [1 / (1 + np.exp(-3.0))], rtol=1e-5)
    face = decoder("mediapipe_pose", box="face")([raw, logits], context)
    np.testing.assert_allclose(face.boxes, [[centre, centre - 0.15, centre + 0.2, centre + 0.15]], atol=1e-5)
    assert face.keypoints is not None and face.keypoints.shape == (1, 4, 2)


def test_unknown_family_and_bad_options_name_the_field() -> None:
    with pytest.raises(ManifestError) as caught:
        decoder("yolov99")
    assert caught.value.field == "decoder.family"
    with pytest.raises(ManifestError) as caught:
        decoder("yolox", strides="eight")
    assert caught.value.field == "decoder.options.strides"
    with pytest.raises(ManifestError) as caught:
        decoder("ssd", colour="red")
    assert caught.value.field == "decoder.options.colour"


def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, 0.5, classes).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]
    assert nms(boxes, scores, 0.5, classes, max_detections=2).tolist() == [0, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, classes: np.ndarray, limit: int) -> list[int]:
    """The plain greedy loop, one box against the rest at a time."""
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order and len(keep) < limit:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = [i for i in order if classes[i] != classes[best] or iou(boxes[best], boxes[i : i + 1])[0] <= threshold]
    return keep


def test_nms_over_the_overlap_matrix_keeps_what_the_greedy_loop_keeps() -> None:
    rng = np.random.default_rng(7)
    for count in (1, 2, 5, 17, 40, MATRIX_MAX, MATRIX_MAX + 30):  # the last one goes box by box
        for _ in range(10):
            corner = rng.random((count, 2)) * 0.8
            boxes = np.hstack([corner, corner + rng.random((count, 2)) * 0.3 + 0.01]).astype(np.float32)
            boxes[rng.random(count) < 0.2] = boxes[0]  # exact duplicates: IoU 1
            scores = rng.choice([0.5, 0.7, 0.9], count).astype(np.float32)  # many ties: order is by index
            classes = rng.integers(0, 3, count)
            for threshold, limit in ((0.45, 100), (0.3, 3), (0.0, 100)):
                assert nms(boxes, scores, threshold, classes, limit).tolist() == greedy_nms(
                    boxes, scores, threshold, classes, limit
                )


def test_the_overlap_matrix_holds_the_same_values_as_one_box_against_the_rest() -> None:
    boxes = np.random.default_rng(3).random((30, 4)) * [1, 1, 0.5, 0.5] + [0, 0, 0.5, 0.5]
    matrix = pairwise_iou(boxes)
    for row in range(len(boxes)):
        np.testing.assert_array_equal(matrix[row], iou(boxes[row], boxes))


def test_weighted_nms_averages_each_cluster() -> None:
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110]], np.float64)
    scores = np.array([0.75, 0.25, 0.5])
    merged, kept, _ = weighted_nms(boxes, scores, 0.3)
    np.testing.assert_allclose(merged, [[0.5, 0, 10.5, 10], [100, 100, 110, 110]])
    np.testing.assert_allclose(kept, [0.75, 0.5])


def researchers_family(root, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution beside s4edge adding the decoder family 'centre' (s4edge.decoders)."""
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "centre_family", raising=False)  # each test's own module
    info = root / "centre_family-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: centre-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[s4edge.decoders]\ncentre = centre_family:FAMILY\n")
    (root / "centre_family.py").write_text(body)


CENTRE = """
import numpy as np
from s4edge.edge.vision.decoders import Candidates, DecoderOptions, Family

class Options(DecoderOptions):
    half: float = 0.1

def decode(outputs, options, context):
    h = options.half
    return Candidates(np.array([[0.5 - h, 0.5 - h, 0.5 + h, 0.5 + h]], np.float32), np.array([0.9], np.float32),
                      np.array([0]))

FAMILY = Family(Options, decode)
"""


def test_a_researchers_package_adds_a_decoder_family(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    researchers_family(tmp_path, CENTRE, monkeypatch)
    from s4edge.edge.vision.decoders import known_families

    assert "centre" in known_families()
    found = bind(DecoderSpec(family="centre", options={"half": 0.25}), "m.yaml")([], DecodeContext(64, 64, 0.5))
    np.testing.assert_allclose(found.boxes, [[0.25, 0.25, 0.75, 0.75]])
    with pytest.raises(ManifestError) as refused:
        bind(DecoderSpec(family="centre", options={"halve": 1}), "m.yaml")
    assert refused.value.field == "decoder.options.halve"


@pytest.mark.parametrize(
    ("body", "says"),
    [("raise RuntimeError('not ready')\n", "failed to load: RuntimeError('not ready')"), ("FAMILY = 3\n", "is not a")],
)
def test_a_broken_decoder_family_refuses_the_model_that_names_it(tmp_path, monkeypatch, body: str, says: str) -> None:
    researchers_family(tmp_path, body, monkeypatch)
    with pytest.raises(ManifestError) as refused:
        bind(DecoderSpec(family="centre"), "m.yaml")
    assert refused.value.field == "decoder.family" and says in refused.value.problem
    assert bind(DecoderSpec(family="fastestdet"), "m.yaml")  # the others load as before


BUGGY = """
from s4edge.edge.vision.decoders import DecoderOptions, Family

class Options(DecoderOptions):
    pass

def decode(outputs, options, context):
    {body}

FAMILY = Family(Options, decode)
"""


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("raise RuntimeError('my bug')", "centre's decode raised RuntimeError: my bug; the family's code is at fault"),
        ("return outputs[7]", "centre's decode raised IndexError"),
        ("return None", "centre: decode returned NoneType, not decoders.Candidates"),
    ],
)
def test_a_decoder_family_that_fails_on_outputs_refuses_its_model_in_one_line(
    tmp_path, monkeypatch: pytest.MonkeyPatch, body: str, says: str
) -> None:
    # only a ValueError was caught: any other error of a researcher's decode came out of
    # `s4edge detect` and `s4edge models verify` as a traceback
    (tmp_path / "site").mkdir()
    researchers_family(tmp_path / "site", BUGGY.format(body=body), monkeypatch)
    folder = tmp_path / "cache" / "own"
    shutil.copytree(default_models_dir() / "fastestdet", folder)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest.update(name="own", decoder={"family": "centre"})
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    catalogue = Catalogue(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    with pytest.raises(ManifestError) as refused:
        Detector.from_catalogue(catalogue, "own")
    assert refused.value.field == "decoder" and says in refused.value.problem

    monkeypatch.setenv("S4EDGE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 114, np.uint8))
    detected = runner.invoke(app, ["detect", str(image), "--model", "own"])
    assert detected.exit_code == 1 and isinstance(detected.exception, SystemExit), detected.exception
    assert says in detected.stderr and len(detected.stderr.strip().splitlines()) == 1
    verified = runner.invoke(app, ["models", "verify", "own"])
    assert verified.exit_code == 1 and isinstance(verified.exception, SystemExit), verified.exception
    assert "FAIL  decoder" in verified.stdout and says in verified.stdout
    assert "fix: fix or update the package of decoder family centre" in verified.stdout
