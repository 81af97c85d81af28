"""Ultralytics YOLOv8-style anchor-free head: [1, 4 + classes, N], boxes cx,cy,w,h in input pixels.

The class scores are already sigmoid-activated and there is no objectness channel
(ultralytics/nn/modules/head.py, Detect._inference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from s4edge.edge.vision.decoders import Candidates, DecodeContext, DecoderOptions, Family, cxcywh_to_xyxy


class Options(DecoderOptions):
    normalized: bool = False  # some TFLite exports emit boxes already divided by the input size


def decode(outputs: Sequence[np.ndarray], options: Options, context: DecodeContext) -> Candidates:
    pred = outputs[0][0]
    if pred.ndim != 2 or pred.shape[0] < 5:
        raise ValueError(f"expected [1, 4 + classes, N], got {outputs[0].shape}")
    scores = pred[4:]
    class_ids = scores.argmax(axis=0)
    best = scores.max(axis=0)
    keep = np.nonzero(best > context.score_threshold)[0]
    if keep.size == 0:
        return Candidates.empty()
    sx, sy = (1.0, 1.0) if options.normalized else (context.input_width, context.input_height)
    cx, cy, w, h = (pred[i, keep] for i in range(4))
    boxes = cxcywh_to_xyxy(cx / sx, cy / sy, w / sx, h / sy)
    return Candidates(boxes, best[keep].astype(np.float32), class_ids[keep])


FAMILY = Family(Options, decode)
