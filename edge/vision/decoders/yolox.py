"""YOLOX anchor-free head: [1, N, 5 + classes] over the grids of each stride.

Raw exports (decode_in_inference=False) give per-cell offsets; the grid/stride decode
follows YOLOX's demo_postprocess (yolox/utils/demo_utils.py): centre = (xy + grid) ×
stride, size = exp(wh) × stride. Objectness and class scores are already sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from s4edge.edge.vision.decoders import Candidates, DecodeContext, DecoderOptions, Family, cxcywh_to_xyxy


class Options(DecoderOptions):
    strides: list[int] = Field(default=[8, 16, 32], min_length=1)
    decoded: bool = False  # the export already applied the grid/stride decode


def grids(strides: Sequence[int], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell (x, y) of every prediction row and its stride, in YOLOX's row order."""
    cells, steps = [], []
    for stride in strides:
        ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full(xs.size, stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode(outputs: Sequence[np.ndarray], options: Options, context: DecodeContext) -> Candidates:
    pred = outputs[0][0]
    if pred.ndim != 2 or pred.shape[1] < 6:
        raise ValueError(f"expected [1, N, 5 + classes], got {outputs[0].shape}")
    xywh = pred[:, :4]
    if not options.decoded:
        cells, steps = grids(options.strides, context.input_width, context.input_height)
        if len(cells) != len(pred):
            raise ValueError(
                f"strides {options.strides} on a {context.input_width}×{context.input_height} input give "
                f"{len(cells)} cells, the output has {len(pred)} rows"
            )
        xywh = np.concatenate([(xywh[:, :2] + cells) * steps[:, None], np.exp(xywh[:, 2:4]) * steps[:, None]], axis=1)
    cls_scores = pred[:, 5:] * pred[:, 4:5]
    class_ids = cls_scores.argmax(axis=1)
    best = cls_scores.max(axis=1)
    keep = np.nonzero(best > context.score_threshold)[0]
    if keep.size == 0:
        return Candidates.empty()
    w_in, h_in = context.input_width, context.input_height
    cx, cy, w, h = (xywh[keep, i] for i in range(4))
    boxes = cxcywh_to_xyxy(cx / w_in, cy / h_in, w / w_in, h / h_in)
    return Candidates(boxes, best[keep].astype(np.float32), class_ids[keep])


FAMILY = Family(Options, decode)
