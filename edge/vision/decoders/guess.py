"""Which decoder family reads a model's outputs, guessed from their shapes (``s4edge models add``).

A graph does not say how its outputs are meant to be read, so this goes by shape alone
and names the evidence that matched:
- ``fastestdet``: one (5 + C) × H/16 × W/16 map, channels first or last, or that map split
  in three (obj, box, cls) (github.com/dog-qiuqiu/FastestDet);
- ``yolov8`` (YOLO11 has the same head): [1, 4 + C, N], N the cells of strides 8, 16, 32
  (ultralytics/nn/modules/head.py, Detect);
- ``yolox``: [1, N, 5 + C] over the same cells (yolox/models/yolo_head.py);
- ``ssd``: the four outputs of TFLite_Detection_PostProcess, boxes [1, N, 4], classes and
  scores [1, N], count [1] (tensorflow/lite/kernels/detection_postprocess.cc);
- ``mediapipe_pose``: regressors [1, N, 4 + 2K] and scores [1, N, 1], N MediaPipe's SSD
  anchors (SsdAnchorsCalculator).
Options a shape cannot tell are listed as assumed; what no shape can tell, as missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from s4edge.edge.vision.backends import TensorInfo
from s4edge.edge.vision.decoders.mediapipe_pose import anchor_centres

Shape = tuple[int | None, ...]
YOLO_STRIDES = ((8, 16, 32), (8, 16, 32, 64))  # P5 and P6 heads
FASTESTDET_STRIDE = 16
# (strides, anchors per layer) of MediaPipe's detectors: pose_detection_cpu.pbtxt, then
# face_detection_short_range.pbtxt and palm_detection_cpu.pbtxt (the same four layers).
MEDIAPIPE_ANCHORS = {"pose": ((8, 16, 32, 32, 32), 2), "face or palm": ((8, 16, 16, 16), 2)}


@dataclass(frozen=True)
class Guess:
    family: str | None
    evidence: str  # what matched, or what was found that nothing reads
    options: dict[str, Any]
    order: tuple[int, ...]  # output indices, in the order the decoder reads them
    classes: int | None = None  # C, where the shapes tell it
    labels: tuple[str, ...] = ()  # the family's own labels (a person detector's)
    assumed: tuple[str, ...] = ()  # "field: why" for what was assumed, not read
    missing: tuple[str, ...] = ()  # manifest fields only the researcher can fill


@dataclass(frozen=True)
class _Graph:
    outputs: Sequence[TensorInfo]
    width: int | None
    height: int | None
    runtime: str
    postprocess: Sequence[str] | None  # TFLite_Detection_PostProcess outputs, in the op's order
    classes_hint: int | None  # from a labels file, to tell YOLOv8 [1, N, 4 + C] from YOLOX [1, N, 5 + C]

    @property
    def shapes(self) -> list[Shape]:
        return [o.shape for o in self.outputs]

    def cells(self, strides: Sequence[int]) -> int | None:
        if not self.width or not self.height:
            return None
        return sum((self.height // s) * (self.width // s) for s in strides)

    def stride(self, rows: int | None, cols: int | None) -> int | None:
        """The stride at which a rows × cols grid covers the input, if it does."""
        if not (rows and cols and self.width and self.height) or self.height % rows or self.width % cols:
            return None
        stride = self.height // rows
        return stride if stride == self.width // cols and stride > 1 else None


def describe(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def guess_family(
    outputs: Sequence[TensorInfo],
    width: int | None,
    height: int | None,
    runtime: str,
    postprocess: Sequence[str] | None = None,
    classes_hint: int | None = None,
    family: str | None = None,
) -> Guess:
    """The family whose decoder reads these outputs; ``family`` is the researcher's choice when named."""
    graph = _Graph(outputs, width, height, runtime, postprocess, classes_hint)
    found = next((g for g in (m(graph) for m in _MATCHERS) if g is not None), None)
    shapes = ", ".join(describe(s) for s in graph.shapes)
    if found is None:
        found = Guess(
            None,
            f"no family I know reads {len(outputs)} output(s) shaped {shapes}",
            {},
            tuple(range(len(outputs))),
            missing=("decoder.family", "decoder.options"),
        )
    if family is None or family == found.family:
        return found
    seen = f"they look like {found.family}" if found.family else "they match no family I know"
    return Guess(
        family,
        f"named by you; outputs {shapes} ({seen})",
        {},
        tuple(range(len(outputs))),
        assumed=(f"decoder.options: the {family} decoder's defaults, outputs in the file's order",),
    )


def _yolo(graph: _Graph) -> Guess | None:
    if len(graph.shapes) != 1 or len(graph.shapes[0]) != 3:
        return None
    _, rows, cols = graph.shapes[0]
    if rows is None or cols is None:
        return None
    size = f"{graph.width}×{graph.height}"
    if 5 <= rows < cols:  # [1, 4 + C, N]
        classes = rows - 4
        cells = graph.cells(YOLO_STRIDES[0])
        assumed: tuple[str, ...] = ()
        if cols == cells:
            fits = f"{cols} = the cells of strides 8, 16, 32 on {size}"
        elif cells is None:
            fits = f"{cols} boxes (the input size is unknown)"
        else:
            fits = f"{cols} is not the {cells} cells of strides 8, 16, 32 on {size}"
            assumed = ("decoder.family: the box count does not fit YOLOv8's strides",)
        options: dict[str, Any] = {}
        if graph.runtime == "tflite":
            options["normalized"] = True
            assumed += (
                "decoder.options.normalized: true, as Ultralytics' TFLite export divides boxes by the input size",
            )
        return Guess(
            "yolov8", f"one output [1, 4 + {classes}, {cols}]; {fits}", options, (0,), classes, assumed=assumed
        )
    if 6 <= cols < rows:  # [1, N, 5 + C] or [1, N, 4 + C]
        for strides in YOLO_STRIDES:
            if rows != graph.cells(strides):
                continue
            if graph.classes_hint is not None and cols == 4 + graph.classes_hint:
                return Guess(
                    None,
                    f"one output [1, {rows}, 4 + {graph.classes_hint}]: a YOLOv8 head transposed; the yolov8 "
                    "decoder reads [1, 4 + C, N], so export the model without the transpose",
                    {},
                    (0,),
                    missing=("decoder.family",),
                )
            options = {} if strides == YOLO_STRIDES[0] else {"strides": list(strides)}
            return Guess(
                "yolox",
                f"one output [1, {rows}, 5 + {cols - 5}]; {rows} = the cells of strides "
                f"{', '.join(map(str, strides))} on {size}",
                options,
                (0,),
                cols - 5,
                assumed=(
                    "decoder.options.decoded: false (a raw export; true if exported with decode_in_inference)",
                    "decoder.family: a YOLOv8 head transposed to [1, N, 4 + C] has this shape too; "
                    "--labels tells them apart",
                ),
            )
        if rows == 3 * (graph.cells(YOLO_STRIDES[0]) or -1):
            return Guess(
                None,
                f"one output [1, {rows}, {cols}]: a YOLOv5-style head, 3 anchors per cell of strides 8, 16, 32; "
                "no decoder family here reads anchored YOLO heads",
                {},
                (0,),
                missing=("decoder.family",),
            )
    return None


def _grid(graph: _Graph, shape: Shape) -> tuple[str, int, int | None] | None:
    """(layout, stride, channels) of a rank-4 map on a grid that covers the input."""
    if len(shape) != 4:
        return None
    # TFLite keeps its channels last; try that order first there.
    layouts = [("NCHW", shape[2], shape[3], shape[1]), ("NHWC", shape[1], shape[2], shape[3])]
    for layout, rows, cols, channels in layouts[:: -1 if graph.runtime == "tflite" else 1]:
        stride = graph.stride(rows, cols)
        if stride is not None:
            return layout, stride, channels
    return None


def _fastestdet(graph: _Graph) -> Guess | None:
    maps = [_grid(graph, s) for s in graph.shapes]
    if not maps or None in maps or len(maps) not in (1, 3):
        return None
    layouts = {m[0] for m in maps if m}
    strides = {m[1] for m in maps if m}
    if len(layouts) != 1 or len(strides) != 1:
        return None
    layout, stride = layouts.pop(), strides.pop()
    channels = [m[2] for m in maps if m]
    assumed = (
        () if stride == FASTESTDET_STRIDE else (f"decoder.family: FastestDet's map has stride 16, this one {stride}",)
    )
    if len(maps) == 1:
        if channels[0] is None or channels[0] < 6:
            return None
        classes = channels[0] - 5
        evidence = (
            f"one output {describe(graph.shapes[0])}: 5 + {classes} channels ({layout}) on a stride-{stride} grid"
        )
        return Guess("fastestdet", evidence, {"layout": layout}, (0,), classes, assumed=assumed)
    # Split head: objectness (1 channel), box (4), classes (C), ordered as the decoder concatenates them.
    by_channels = {c: i for i, c in enumerate(channels)}
    if len(by_channels) != 3 or 1 not in by_channels or 4 not in by_channels:
        return None
    cls_index = next(i for c, i in by_channels.items() if c not in (1, 4))
    split_classes = channels[cls_index]
    if split_classes is None:
        return None
    evidence = f"three outputs, 1 + 4 + {split_classes} channels ({layout}) on one stride-{stride} grid: obj, box, cls"
    return Guess(
        "fastestdet",
        evidence,
        {"layout": layout},
        (by_channels[1], by_channels[4], cls_index),
        split_classes,
        assumed=assumed,
    )


_POSTPROCESS_NAME = re.compile(r"^TFLite_Detection_PostProcess(?::(\d))?$")


def _ssd(graph: _Graph) -> Guess | None:
    if len(graph.shapes) != 4:
        return None
    boxes = [i for i, s in enumerate(graph.shapes) if len(s) == 3 and s[2] == 4]
    count = [i for i, s in enumerate(graph.shapes) if len(s) <= 1]
    pairs = [i for i, s in enumerate(graph.shapes) if len(s) == 2]
    if len(boxes) != 1 or len(count) != 1 or len(pairs) != 2:
        return None
    names = [o.name for o in graph.outputs]
    assumed = ["decoder.options.label_offset: 0; 1 if the labels file starts with a background entry"]
    if graph.postprocess is not None and sorted(graph.postprocess) == sorted(names):
        order = tuple(names.index(n) for n in graph.postprocess)
        how = "written by a TFLite_Detection_PostProcess op, read in its order (boxes, classes, scores, count)"
    elif all(_POSTPROCESS_NAME.match(n) for n in names):
        order = tuple(sorted(range(4), key=lambda i: int(_POSTPROCESS_NAME.match(names[i]).group(1) or 0)))  # type: ignore[union-attr]
        how = "named TFLite_Detection_PostProcess, :1, :2, :3 (boxes, classes, scores, count)"
    else:
        order = (boxes[0], pairs[0], pairs[1], count[0])
        how = "classes and scores have the same shape, so they are taken in the file's order"
        assumed.append("outputs: outputs.1 is read as the classes, outputs.2 as the scores; swap their names if not")
    shapes = ", ".join(describe(graph.shapes[i]) for i in order)
    return Guess("ssd", f"four outputs {shapes}, {how}", {}, order, assumed=tuple(assumed))


def _mediapipe(graph: _Graph) -> Guess | None:
    shapes = graph.shapes
    if len(shapes) != 2 or any(len(s) != 3 for s in shapes):
        return None
    scores = [i for i, s in enumerate(shapes) if s[2] == 1]
    if len(scores) != 1:
        return None
    regress = 1 - scores[0]
    anchors, values = shapes[regress][1], shapes[regress][2]
    if anchors is None or anchors != shapes[scores[0]][1] or values is None or values < 4 or (values - 4) % 2:
        return None
    keypoints = (values - 4) // 2
    order = (regress, scores[0])
    head = f"regressors [1, {anchors}, 4 + 2×{keypoints}] and scores [1, {anchors}, 1]"
    if graph.width and graph.height:
        for detector, (strides, per_layer) in MEDIAPIPE_ANCHORS.items():
            if len(anchor_centres(strides, graph.width, graph.height, per_layer, 0.5)) != anchors:
                continue
            body = detector == "pose" and keypoints >= 2
            options = {
                "strides": list(strides),
                "anchors_per_layer": per_layer,
                "coordinate_scale": float(graph.width),
                "keypoints": keypoints,
                "box": "body" if body else "face",
            }
            size = f"{graph.width}×{graph.height}"
            evidence = f"{head}: {anchors} = the SSD anchors of MediaPipe's {detector} detector on {size}"
            why = "the body circle from BlazePose's hip and radius keypoints" if body else "the regressed box"
            assumed = (f"decoder.options.box: {options['box']}, {why}",)
            labels = ("person",) if body else ()
            return Guess("mediapipe_pose", evidence, options, order, 1, labels, assumed)
    return Guess(
        "mediapipe_pose",
        f"{head}, like MediaPipe's anchor heads, but {anchors} anchors match no anchor layout I know",
        {"coordinate_scale": float(graph.width or 1), "keypoints": keypoints, "box": "face"},
        order,
        1,
        missing=("decoder.options.strides", "decoder.options.anchors_per_layer"),
    )


_MATCHERS: tuple[Callable[[_Graph], Guess | None], ...] = (_ssd, _mediapipe, _fastestdet, _yolo)
