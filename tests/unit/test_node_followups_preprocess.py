"""The detector's preprocessing writes the same tensor as the plain numpy expression it
replaced, for the real FastestDet on a real photo and for every layout/colour/resize/
normalisation combination a manifest can ask for."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.detector import Detector

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent: the reference model lives there")


def reference(spec: Any, frame: np.ndarray) -> np.ndarray:
    """The earlier implementation, written out plainly: resize, cvtColor, normalise, transpose."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    height, width = frame.shape[:2]
    in_w, in_h = spec.width, spec.height
    if spec.resize == "letterbox":
        ratio = min(in_w / width, in_h / height)
        new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
        canvas = np.full((in_h, in_w, 3), spec.pad_value, np.uint8)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(frame, (new_w, new_h))
    else:
        canvas = cv2.resize(frame, (in_w, in_h))
    if spec.colour == "RGB":
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    tensor = (canvas.astype(np.float32) * spec.scale - mean) / std
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None])


@pytest.fixture(scope="module")
def fastestdet(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    catalogue = Catalogue(models_dir=REPO / "models", cache_dir=tmp_path_factory.mktemp("cache"))
    catalogue.pull("fastestdet", SHARED / "models")
    return Detector.from_catalogue(catalogue, "fastestdet")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    frame = cv2.imread(str(SHARED / "data/images/fastestdet_2.jpg"))
    assert frame is not None
    return frame


def with_input(detector: Detector, **changes: Any) -> Detector:
    variant = copy.copy(detector)
    variant.manifest = detector.manifest.model_copy(
        update={"input": detector.manifest.input.model_copy(update=changes)}
    )
    return variant


def test_fastestdet_tensor_is_unchanged(fastestdet: Detector, photo: np.ndarray) -> None:
    tensor, geometry = fastestdet.preprocess(photo)
    expected = reference(fastestdet.manifest.input, photo)
    assert tensor.shape == expected.shape == (1, 3, 352, 352) and tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6)
    assert (geometry.scale_x, geometry.pad_x) == (352 / photo.shape[1], 0.0)


@pytest.mark.parametrize(
    "changes",
    [
        {"colour": "RGB", "mean": [0.1, 0.2, 0.3], "std": [0.2, 0.5, 0.9]},
        {"colour": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        {"resize": "letterbox", "pad_value": 114, "mean": [0.4, 0.2, 0.1], "std": [0.3, 0.3, 0.3]},
        {"layout": "NHWC", "shape": [1, 320, 256, 3], "colour": "RGB", "mean": [0.1, 0.2, 0.3], "std": [0.2, 0.5, 0.9]},
        {"layout": "NHWC", "shape": [1, 224, 224, 3], "resize": "letterbox", "colour": "RGB"},
        {"layout": "NHWC", "shape": [1, 352, 352, 3], "dtype": "int8"},  # the backend quantizes the float tensor
    ],
)
def test_every_input_spec_gives_the_reference_tensor(fastestdet: Detector, photo: np.ndarray, changes: dict) -> None:
    variant = with_input(fastestdet, **changes)
    spec = variant.manifest.input
    # a crop with odd sides and a grey frame exercise the stretch, the border and _as_bgr
    for frame in (photo, np.ascontiguousarray(photo[10:301, 7:500]), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)):
        tensor, _ = variant.preprocess(frame)
        expected = reference(spec, frame)
        assert tensor.shape == expected.shape and tensor.dtype == np.float32 and tensor.flags.c_contiguous
        np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6)


def test_each_call_returns_its_own_tensor(fastestdet: Detector, photo: np.ndarray) -> None:
    # the capture thread prepares the next frame while the last one is still being inferred
    first, _ = fastestdet.preprocess(photo)
    kept = first.copy()
    fastestdet.preprocess(np.zeros_like(photo))
    np.testing.assert_array_equal(first, kept)
