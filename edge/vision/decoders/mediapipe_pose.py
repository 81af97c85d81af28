"""MediaPipe's BlazePose person detector (pose_detection.tflite): SSD anchors, 12 values per anchor.

Anchors follow SsdAnchorsCalculator with the options of
mediapipe/modules/pose_detection/pose_detection_cpu.pbtxt: 5 layers, strides
8, 16, 32, 32, 32, offset 0.5, fixed anchor size, aspect ratio 1 plus the interpolated
scale (2 anchors per layer per cell) → 2254 anchors on a 224×224 input. Layers that share
a stride share one grid. Each anchor regresses a box (x, y, w, h) and 4 keypoints, all
divided by 224 (TensorsToDetectionsCalculator, reverse_output_order). Keypoint 0 is the
hip centre and keypoint 1 sets the radius of a circle around the whole body
(AlignmentPointsRectsCalculator in pose_detection_to_roi.pbtxt); ``box: body`` reports
that circle's square, ``box: face`` the regressed box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from s4edge.edge.vision.decoders import Candidates, DecodeContext, DecoderOptions, Family, cxcywh_to_xyxy, sigmoid
from s4edge.edge.vision.nms import weighted_nms


class Options(DecoderOptions):
    strides: list[int] = Field(default=[8, 16, 32, 32, 32], min_length=1)
    anchors_per_layer: int = Field(default=2, ge=1)
    anchor_offset: float = 0.5
    coordinate_scale: float = Field(default=224.0, gt=0)
    score_clip: float = Field(default=100.0, gt=0)
    keypoints: int = Field(default=4, ge=0)
    box: Literal["body", "face"] = "body"
    weighted_nms_iou: float = Field(default=0.3, gt=0, le=1)

    @model_validator(mode="after")
    def _body_needs_keypoints(self) -> Options:
        if self.box == "body" and self.keypoints < 2:
            raise ValueError("box: body needs the hip-centre and body-radius keypoints (keypoints >= 2)")
        return self


@lru_cache(maxsize=8)
def anchor_centres(strides: tuple[int, ...], width: int, height: int, per_layer: int, offset: float) -> np.ndarray:
    """(N, 2) anchor centres, normalised, in SsdAnchorsCalculator's order."""
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        stride, repeats = strides[layer], 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += per_layer
            layer += 1
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        for y in range(rows):
            for x in range(cols):
                centres.extend([((x + offset) / cols, (y + offset) / rows)] * repeats)
    return np.asarray(centres, dtype=np.float32)


def decode(outputs: Sequence[np.ndarray], options: Options, context: DecodeContext) -> Candidates:
    if len(outputs) != 2:
        raise ValueError(f"expected 2 outputs (regressors, scores), got {len(outputs)}")
    raw, logits = outputs[0][0], outputs[1][0].reshape(-1)
    anchors = anchor_centres(
        tuple(options.strides),
        context.input_width,
        context.input_height,
        options.anchors_per_layer,
        options.anchor_offset,
    )
    if len(anchors) != len(raw) or len(logits) != len(raw):
        raise ValueError(f"the anchor options give {len(anchors)} anchors, the model has {len(raw)} rows")
    scores = sigmoid(np.clip(logits, -options.score_clip, options.score_clip))
    keep = np.nonzero(scores > context.score_threshold)[0]
    if keep.size == 0:
        return Candidates.empty()
    values = raw[keep] / options.coordinate_scale
    centre = anchors[keep]
    keypoints = values[:, 4 : 4 + 2 * options.keypoints].reshape(len(keep), -1, 2) + centre[:, None, :]
    face = cxcywh_to_xyxy(values[:, 0] + centre[:, 0], values[:, 1] + centre[:, 1], values[:, 2], values[:, 3])
    # Suppress on the regressed box as MediaPipe does: two people side by side have overlapping
    # body circles but separate boxes. The keypoints are averaged over each cluster alike.
    face, kept_scores, flat = weighted_nms(
        face, scores[keep], options.weighted_nms_iou, keypoints.reshape(len(keep), -1)
    )
    assert flat is not None
    points = flat.reshape(len(face), -1, 2)
    if options.box == "body":
        radius = np.linalg.norm(points[:, 1] - points[:, 0], axis=1)
        boxes = cxcywh_to_xyxy(points[:, 0, 0], points[:, 0, 1], 2 * radius, 2 * radius)
    else:
        boxes = face
    return Candidates(
        boxes.astype(np.float32),
        kept_scores.astype(np.float32),
        np.zeros(len(boxes), np.int64),
        suppressed=True,
        keypoints=points,
    )


FAMILY = Family(Options, decode)
