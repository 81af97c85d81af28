"""How good and how fast a detector is: COCO-style mAP on a labelled folder, and latency.

Accuracy is measured on a YOLO-format labelled folder, scored the COCO way (pycocotools).

The folder holds ``images/<split>/x.jpg`` and ``labels/<split>/x.txt`` (one ``class cx cy w h``
line per object, normalised), as Ultralytics data sets do; a label file beside its
image also works. mAP@0.5 and mAP@0.5:0.95 are COCOeval's, per class and overall.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from s4edge.edge.vision.detector import Detector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# Low enough to trace the whole precision/recall curve, as COCO evaluation expects.
EVAL_SCORE_THRESHOLD = 0.01


class DatasetError(ValueError):
    """The labelled folder is missing, empty or holds a malformed label line."""


@dataclass(frozen=True)
class LabelledImage:
    image: Path
    boxes: np.ndarray  # (n, 5): class, cx, cy, w, h normalised


@dataclass(frozen=True)
class ClassScore:
    class_id: int
    label: str
    instances: int
    ap50: float
    ap50_95: float


@dataclass(frozen=True)
class EvalReport:
    model: str
    images: int
    instances: int  # the labelled objects scored: those of classes the model has
    map50: float
    map50_95: float
    classes: list[ClassScore] = field(default_factory=list)
    # labelled objects of classes beyond the model's labels, by class id: a person detector is not
    # scored on the dogs of a COCO set, which would average a 0 into its mAP for each such class
    not_scored: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label_path(image: Path, root: Path) -> Path:
    images_dir = root / "images"
    if images_dir in image.parents:
        return root / "labels" / image.relative_to(images_dir).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        return np.zeros((0, 5), np.float64)  # an image without a label file has no objects
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            row = [float(p) for p in parts]
        except ValueError:
            row = []
        if len(row) != 5 or not row[0].is_integer() or not all(0 <= v <= 1 for v in row[1:]):
            raise DatasetError(f"{path}:{number}: expected 'class cx cy w h' with 0..1 values, got {line!r}")
        rows.append(row)
    return np.asarray(rows, np.float64).reshape(-1, 5)


def load_labelled_folder(root: Path) -> list[LabelledImage]:
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return [LabelledImage(image, _read_labels(_label_path(image, root))) for image in images]


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]  # COCOeval marks "no ground truth" as -1
    return float(valid.mean()) if valid.size else float("nan")


def evaluate(detector: Detector, root: Path) -> EvalReport:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    samples = load_labelled_folder(root)
    labels = detector.labels
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, sample in enumerate(samples, start=1):
        frame = cv2.imread(str(sample.image))
        if frame is None:
            raise DatasetError(f"{sample.image}: not a readable image")
        height, width = frame.shape[:2]
        images.append({"id": image_id, "width": width, "height": height})
        for cls, cx, cy, w, h in sample.boxes:
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        for det in detector.detect(frame):
            x1, y1, x2, y2 = det.box
            box = [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height]
            results.append({"image_id": image_id, "category_id": det.class_id, "bbox": box, "score": det.score})
    name = detector.manifest.name
    if not annotations:
        raise DatasetError(f"no labelled objects under {root}: nothing to score against")
    # Line k of a YOLO data set's names is class k, as line k of the model's labels is: a class the
    # model has no label for is one it was not trained on (its labels are unknown only when empty).
    not_scored: dict[int, int] = {}
    if labels:
        for a in annotations:
            if a["category_id"] >= len(labels):
                not_scored[a["category_id"]] = not_scored.get(a["category_id"], 0) + 1
        annotations = [a for a in annotations if a["category_id"] < len(labels)]
        if not annotations:
            found = ", ".join(str(c) for c in sorted(not_scored))
            raise DatasetError(
                f"the objects under {root} are of classes {found}, and {name} has {len(labels)} "
                f"({', '.join(labels[:5])}{', …' if len(labels) > 5 else ''}): nothing to score; its class k is line "
                "k of its labels, and so must be the data set's"
            )
    class_ids = sorted({a["category_id"] for a in annotations} | set(range(len(labels))))
    truth = COCO()
    truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": labels[c] if c < len(labels) else f"class_{c}"} for c in class_ids],
    }
    instances = {c: sum(1 for a in annotations if a["category_id"] == c) for c in class_ids}
    if not results:
        scores = [
            ClassScore(c, truth.dataset["categories"][i]["name"], n, 0.0, 0.0)
            for i, (c, n) in enumerate(instances.items())
            if n
        ]
        return EvalReport(name, len(samples), len(annotations), 0.0, 0.0, scores, not_scored)
    # pycocotools prints its progress; keep the CLI's stdout for our own output.
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        found = truth.loadRes(results)
        run = COCOeval(truth, found, "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
    precision = run.eval["precision"]  # [iou thresholds, recall, class, area, max dets]
    scores = []
    for k, class_id in enumerate(run.params.catIds):
        if instances.get(class_id, 0) == 0:
            continue
        label = truth.cats[class_id]["name"]
        ap50_95 = _mean_valid(precision[:, :, k, 0, -1])
        ap50 = _mean_valid(precision[0, :, k, 0, -1])
        scores.append(ClassScore(int(class_id), label, instances[class_id], _finite(ap50), _finite(ap50_95)))
    return EvalReport(
        name, len(samples), len(annotations), _finite(run.stats[1]), _finite(run.stats[0]), scores, not_scored
    )


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) or value < 0 else round(float(value), 4)


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call: the raw model run (``infer``) and the whole ``detect``."""

    runs: int
    infer_ms: dict[str, float]
    detect_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "mean": round(float(values.mean()), 3),
        "min": round(float(values.min()), 3),
    }


def time_detector(
    detector: Detector, frame: np.ndarray, runs: int, warmup: int = 3, on_run: Callable[[], None] | None = None
) -> Latency:
    """Time ``infer`` alone (one preprocessed tensor) and the full ``detect``, ``runs`` times each."""
    tensor, _ = detector.preprocess(frame)
    for _ in range(warmup):
        detector.detect(frame)
    infer_ms, detect_ms = [], []
    for _ in range(runs):
        start = time.perf_counter()
        detector.infer(tensor)
        middle = time.perf_counter()
        detector.detect(frame)
        end = time.perf_counter()
        infer_ms.append((middle - start) * 1000)
        detect_ms.append((end - middle) * 1000)
        if on_run is not None:
            on_run()
    return Latency(runs, percentiles(infer_ms), percentiles(detect_ms))
