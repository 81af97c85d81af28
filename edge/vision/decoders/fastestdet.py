"""FastestDet (github.com/dog-qiuqiu/FastestDet): one 85-channel map on a 22×22 grid.

Per cell, channel 0 is objectness, 1–2 the box centre offsets (tanh), 3–4 width and
height (sigmoid, relative to the image), 5–84 the class scores; the score is
obj^0.6 × cls^0.4 (the repo's example/onnx-runtime/runtime.py). TFLite conversions
put the channels last, and the 3-output variant splits them into obj, box and cls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from s4edge.edge.vision.decoders import Candidates, DecodeContext, DecoderOptions, Family, cxcywh_to_xyxy, sigmoid


class Options(DecoderOptions):
    layout: Literal["NCHW", "NHWC"] = "NCHW"


def decode(outputs: Sequence[np.ndarray], options: Options, context: DecodeContext) -> Candidates:
    channel_axis = 0 if options.layout == "NCHW" else 2
    if len(outputs) not in (1, 3):
        raise ValueError(f"expected one (5 + classes)-channel map or three (obj, box, cls), got {len(outputs)} outputs")
    if len(outputs) == 3:  # the manifest lists obj, box, cls in that order
        channels = [o.shape[channel_axis + 1] if o.ndim == 4 else None for o in outputs]
        if channels[:2] != [1, 4]:
            raise ValueError(f"expected obj, box, cls maps of 1, 4 and C channels in that order, got {channels}")
    pred = np.concatenate([o[0] for o in outputs], axis=channel_axis) if len(outputs) > 1 else outputs[0][0]
    if options.layout == "NHWC":
        pred = pred.transpose(2, 0, 1)
    if pred.ndim != 3 or pred.shape[0] < 6:
        raise ValueError(f"expected a (5 + classes) × H × W map, got {pred.shape}")
    _, rows, cols = pred.shape
    # one cell per stride × stride pixels of the input, the same stride both ways: a map read
    # in the wrong layout has channels for rows, and gave confident boxes in the wrong places
    stride_y, stride_x = context.input_height / rows, context.input_width / cols
    if abs(stride_y - stride_x) > 0.1 * max(stride_y, stride_x):
        raise ValueError(
            f"a {rows} × {cols} grid does not tile the {context.input_height} × {context.input_width} input "
            f"(check decoder.options.layout, now {options.layout})"
        )
    cls = pred[5:]
    # np.clip(v, 0, 1)'s values, at a third of its cost on arrays this small
    cls_score = np.minimum(np.maximum(cls.max(axis=0), 0), 1)
    score = np.minimum(np.maximum(pred[0], 0), 1) ** 0.6 * cls_score**0.4
    ys, xs = np.nonzero(score > context.score_threshold)
    if ys.size == 0:
        return Candidates.empty()
    cell = pred[1:5, ys, xs]  # centre offsets, width and height of the cells that passed
    offset, size = np.tanh(cell[:2]), sigmoid(cell[2:])
    cx, cy = (xs + offset[0]) / cols, (ys + offset[1]) / rows
    return Candidates(
        cxcywh_to_xyxy(cx, cy, size[0], size[1]), score[ys, xs].astype(np.float32), cls[:, ys, xs].argmax(axis=0)
    )


FAMILY = Family(Options, decode)
