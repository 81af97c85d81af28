"""Static INT8 quantization of an ONNX model, calibrated on real images from the site.

onnxruntime's ``quantize_static`` writes a QDQ model with per-channel weights. The result
goes into the model cache with its own sha256 and a generated manifest (same input,
outputs and decoder), so it is pulled, verified and loaded like any other model.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from s4edge.edge.vision.catalogue import Catalogue, CatalogueError, sha256_file
from s4edge.edge.vision.detector import Detector
from s4edge.edge.vision.evaluate import EVAL_SCORE_THRESHOLD, IMAGE_SUFFIXES, Latency, evaluate, time_detector
from s4edge.edge.vision.manifest import MODEL_NAME, ModelEntry

MAX_CALIBRATION_IMAGES = 200


@dataclass(frozen=True)
class QuantizeReport:
    source: str
    quantized: str
    sha256: str
    calibration_images: int
    size_bytes: dict[str, int]
    latency: dict[str, Latency]
    speedup_infer_p50: float  # fp32 p50 / int8 p50, measured in the same run
    map50: dict[str, float] | None
    map50_95: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: one preprocessed tensor per image."""

    def __init__(self, detector: Detector, images: list[Path], input_name: str) -> None:
        self._tensors = self._load(detector, images, input_name)

    @staticmethod
    def _load(detector: Detector, images: list[Path], input_name: str) -> Iterator[dict[str, np.ndarray]]:
        for path in images:
            frame = cv2.imread(str(path))
            if frame is not None:
                yield {input_name: detector.preprocess(frame)[0]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._tensors, None)


def calibration_images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not images:
        raise CatalogueError(f"no calibration images under {folder}; give a folder of photos from the camera's scene")
    return images[:MAX_CALIBRATION_IMAGES]


def _at_least_opset13(weights: Path, work: Path) -> Path:
    """Per-channel QDQ needs DequantizeLinear's ``axis``, which arrived in ONNX opset 13."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(weights))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return weights
    converted = work / "opset13.onnx"
    onnx.save(version_converter.convert_version(model, 13), str(converted))
    return converted


def _loads(entry: ModelEntry, weights: Path) -> None:
    """The quantized model loads and runs once on a grey frame (``Detector`` does both), or is refused."""
    try:
        Detector(entry, weights)
    except Exception as exc:  # the runtime's own error types, or a ManifestError
        problem = " ".join(str(exc).split())[:300]
        raise CatalogueError(f"the quantized {entry.name} does not load, so it was not added: {problem}") from exc


def quantize_model(
    catalogue: Catalogue,
    name: str,
    calib: Path,
    out_name: str | None = None,
    data: Path | None = None,
    runs: int = 50,
    force: bool = False,
) -> QuantizeReport:
    """Quantize ``name`` into ``out_name`` (NAME-int8); a model of that name is replaced only when ``force``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    entry = catalogue.get(name)
    manifest = entry.manifest
    if manifest.runtime != "onnx":
        raise CatalogueError(f"{name} is a {manifest.runtime} model; static INT8 quantization here needs ONNX")
    if manifest.quantization != "none":  # a QDQ graph quantized again is one onnxruntime cannot load
        raise CatalogueError(
            f"{name} is already quantized ({manifest.quantization}); quantize the float32 model it was made from"
        )
    target = out_name or f"{name}-int8"
    if target == name:
        raise CatalogueError(f"--out-name {target} is the model being quantized; give the INT8 model another name")
    if not re.match(MODEL_NAME, target):
        raise CatalogueError(
            f"--out-name {target!r}: use lower-case letters, digits, '.', '_' and '-' (64 at most), "
            "starting with a letter or digit"
        )
    catalogue.ensure_addable(target, force, "--out-name")  # before minutes of calibration, not after
    weights = catalogue.weights(name)
    images = calibration_images(calib)
    frame = next((f for f in (cv2.imread(str(p)) for p in images) if f is not None), None)
    if frame is None:
        raise CatalogueError(f"none of the {len(images)} calibration images under {calib} is readable")
    fp32 = Detector(entry, weights)
    file = f"{Path(manifest.file).stem}_int8_qdq.onnx"
    catalogue.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=catalogue.cache_dir) as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph cleanup first, as onnxruntime's quantization guide advises.
        quant_pre_process(str(_at_least_opset13(weights, Path(work))), str(prepared), skip_symbolic_shape=True)
        output = Path(work) / file
        # The percentile calibrator prints its progress; stdout belongs to the CLI's report.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared),
                str(output),
                _Calibration(fp32, images, fp32.backend.inputs[0].name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                # Percentile clips activation outliers; on FastestDet/coco8 MinMax kept mAP@0.5 0.17, this 0.40.
                calibrate_method=CalibrationMethod.Percentile,
            )
        digest = sha256_file(output)
        generated = manifest.model_copy(
            update={
                "name": target,
                "version": f"{manifest.version}-int8",
                "description": f"{name} quantized to static INT8 (QDQ, per-channel) on {len(images)} images",
                "file": file,
                "sha256": digest,
                "url": None,
                "source": f"s4edge models quantize {name} ({manifest.sha256[:12]}) --calib {calib}",
                "quantization": "int8-static",
                "labels": entry.labels(),
            }
        )
        # built aside and loaded once, as `models add` does: one that does not load leaves no trace
        int8_entry = catalogue.add_model(generated, output, force=force, check=_loads)
    int8 = Detector(int8_entry, catalogue.weights(target))
    latency = {name: time_detector(fp32, frame, runs), target: time_detector(int8, frame, runs)}
    map50 = map50_95 = None
    if data is not None:
        before = evaluate(Detector(entry, weights, score_threshold=EVAL_SCORE_THRESHOLD), data)
        after = evaluate(Detector(int8_entry, catalogue.weights(target), score_threshold=EVAL_SCORE_THRESHOLD), data)
        map50 = {name: before.map50, target: after.map50}
        map50_95 = {name: before.map50_95, target: after.map50_95}
    return QuantizeReport(
        source=name,
        quantized=target,
        sha256=digest,
        calibration_images=len(images),
        size_bytes={name: weights.stat().st_size, target: catalogue.weights(target).stat().st_size},
        latency=latency,
        speedup_infer_p50=round(latency[name].infer_ms["p50"] / latency[target].infer_ms["p50"], 3),
        map50=map50,
        map50_95=map50_95,
    )
