"""SSD models whose graph ends in TFLite_Detection_PostProcess (already decoded and suppressed).

Outputs, in the manifest's order: boxes [1, N, 4] as ymin, xmin, ymax, xmax normalised,
classes [1, N], scores [1, N], and the valid count [1] (TensorFlow Lite's
detection_postprocess.cc).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from s4edge.edge.vision.decoders import Candidates, DecodeContext, DecoderOptions, Family


class Options(DecoderOptions):
    label_offset: int = 0  # added to the model's class index to index the labels file


def decode(outputs: Sequence[np.ndarray], options: Options, context: DecodeContext) -> Candidates:
    if len(outputs) != 4:
        raise ValueError(f"expected 4 outputs (boxes, classes, scores, count), got {len(outputs)}")
    boxes, classes, scores, count = (np.asarray(o) for o in outputs)
    valid = min(int(count.reshape(-1)[0]), boxes.shape[1])
    boxes, classes, scores = boxes[0, :valid], classes[0, :valid], scores[0, :valid]
    keep = scores > context.score_threshold
    xyxy = np.clip(boxes[keep][:, [1, 0, 3, 2]], 0, 1).astype(np.float32)
    class_ids = np.rint(classes[keep]).astype(np.int64) + options.label_offset
    return Candidates(xyxy, scores[keep].astype(np.float32), class_ids, suppressed=True)


FAMILY = Family(Options, decode)
