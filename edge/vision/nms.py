"""Non-maximum suppression in numpy: greedy (class-aware) and MediaPipe's weighted variant."""

from __future__ import annotations

import numpy as np


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1,y1,x2,y2 box against each row of ``boxes``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


MATRIX_MAX = 256


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every x1,y1,x2,y2 row against every other: ``iou`` for all rows at once,
    with the same operations in the same order, so the same values."""
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)  # np.clip's values, at a third of its cost
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas[:, None] + areas[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    class_ids: np.ndarray | None = None,
    max_detections: int | None = None,
) -> np.ndarray:
    """Indices of the kept boxes, best first. With ``class_ids``, boxes only suppress their own class.

    Greedy: the best box is kept and every box overlapping it by more than
    ``iou_threshold`` is dropped, then the best of the rest, and so on. Up to
    ``MATRIX_MAX`` candidates (a detector on a frame: tens), the overlaps are worked out
    at once, as a matrix, and the greedy pass walks its rows; beyond (an evaluation at a
    low threshold: thousands), box by box, as the matrix would not fit in memory.
    """
    if len(boxes) <= 1:
        return np.arange(len(boxes), dtype=np.int64)
    boxes = boxes.astype(np.float64)
    if class_ids is not None:
        # Shift each class into its own region so boxes of different classes never overlap.
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (class_ids.astype(np.float64) * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    if len(order) > MATRIX_MAX:
        return _nms_box_by_box(boxes, order, iou_threshold, max_detections)
    overlaps = (pairwise_iou(boxes[order]) > iou_threshold).tolist()
    limit = len(order) if max_detections is None else max_detections
    keep: list[int] = []
    dropped = [False] * len(order)
    for rank, row in enumerate(overlaps):
        if len(keep) >= limit:
            break
        if dropped[rank]:
            continue
        keep.append(rank)
        dropped = [d or o for d, o in zip(dropped, row, strict=True)]
    return order[keep].astype(np.int64)


def _nms_box_by_box(
    boxes: np.ndarray, order: np.ndarray, iou_threshold: float, max_detections: int | None
) -> np.ndarray:
    keep: list[int] = []
    while order.size and (max_detections is None or len(keep) < max_detections):
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, extra: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MediaPipe's WEIGHTED suppression: each cluster becomes its score-weighted mean box.

    The cluster keeps its best score (mediapipe/calculators/util/non_max_suppression_calculator.cc,
    WeightedNonMaxSuppression). ``extra`` (e.g. keypoints, one row per box) is averaged alike.
    """
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_scores, out_extra = [], [], []
    while order.size:
        in_cluster = iou(boxes[order[0]], boxes[order]) > iou_threshold
        in_cluster[0] = True  # a degenerate (zero-area) box still forms its own cluster
        cluster = order[in_cluster]
        total = scores[cluster].sum()
        weights = scores[cluster] / total if total > 0 else np.full(cluster.size, 1.0 / cluster.size)
        out_boxes.append(weights @ boxes[cluster])
        out_scores.append(scores[order[0]])
        if extra is not None:
            out_extra.append(weights @ extra[cluster])
        order = order[~in_cluster]
    if not out_boxes:
        empty_extra = None if extra is None else extra[:0]
        return boxes[:0], scores[:0], empty_extra
    return np.stack(out_boxes), np.asarray(out_scores), (np.stack(out_extra) if extra is not None else None)
