"""The object detector: a manifest, its verified weights and a backend, behind ``detect(frame)``.

``preprocess`` → ``infer`` → ``decode`` are separate so a benchmark can time the raw
model run on its own. A Detector holds no state between frames but reusable buffers,
so the pipeline hot-swaps a model by building a new Detector and switching its reference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from s4edge.cloud_sync.messages import ModelRef
from s4edge.drivers.frames import BufferPool
from s4edge.edge.vision.backends import (
    FORMATS,
    RUNTIME_NAMES,
    Backend,
    BackendOptions,
    TensorInfo,
    check_runtime,
    open_model,
)
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.decoders import Candidates, DecodeContext, bind
from s4edge.edge.vision.decoders.guess import guess_family
from s4edge.edge.vision.inspection import quantization_of
from s4edge.edge.vision.manifest import InputSpec, ManifestError, ModelEntry
from s4edge.edge.vision.nms import nms
from s4edge.edge.vision.types import Detection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """How a frame was fitted into the model input, to map boxes back onto the frame."""

    frame_width: int
    frame_height: int
    scale_x: float  # input pixels per frame pixel
    scale_y: float
    pad_x: float  # letterbox border, input pixels
    pad_y: float
    input_width: int
    input_height: int

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per column x1,y1,x2,y2: input size, letterbox border, input pixels per frame."""
        size = [self.input_width, self.input_height] * 2
        pad = [self.pad_x, self.pad_y] * 2
        span = [self.scale_x * self.frame_width, self.scale_y * self.frame_height] * 2
        return np.array(size, np.float64), np.array(pad, np.float64), np.array(span, np.float64)

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Input-normalised x1,y1,x2,y2 → frame-normalised, clipped to 0..1:
        ``(box × input size − border) / (scale × frame size)``, column by column, in the
        boxes' own precision (the constants are cast to it, as numpy casts a Python scalar)."""
        size, pad, span = (a.astype(boxes.dtype, copy=False) for a in self._affine)
        frame_boxes: np.ndarray = np.clip((boxes * size - pad) / span, 0.0, 1.0)
        return frame_boxes


# What loading a model checks, in this order; each needs the ones before it (``s4edge models verify``).
LOAD_CHECKS = ("runtime", "load", "input", "outputs", "quantization", "decoder", "labels", "inference")


@dataclass(frozen=True)
class ModelCheck:
    """One check of whether a model will run, as ``s4edge models verify`` reports it."""

    name: str  # "sha256" or one of LOAD_CHECKS
    status: Literal["pass", "fail", "skip"]  # skip: not run, or not checkable on this install
    detail: str
    remedy: str = ""


def _unheard(check: ModelCheck) -> None:
    """No one asked for the checks: a load that passes them says nothing."""


class _InputPlan:
    """An input spec's constants for preprocessing: the tensor's shape, scale, mean and std,
    and the geometry of each frame size met so far."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.shape = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
        self.scale = np.float32(spec.scale)
        self.mean = np.asarray(spec.mean, np.float32)
        self.std = np.asarray(spec.std, np.float32)
        self.geometries: dict[tuple[int, int], Geometry] = {}


class Detector:
    def __init__(
        self,
        entry: ModelEntry,
        weights: Path,
        options: BackendOptions | None = None,
        score_threshold: float | None = None,
        on_check: Callable[[ModelCheck], None] | None = None,
        audit: bool = False,
    ) -> None:
        """Load the model and check it fits its manifest and runs, in ``LOAD_CHECKS`` order: each
        check that passes goes to ``on_check``; the first that fails raises, a ``ManifestError``
        naming the manifest field at fault (``file`` where the weight file is). ``audit`` is how
        ``models verify`` and ``models add`` load: an ONNX model's graph is read for its
        quantization (the onnx package and a second copy of the graph would cost a node 12 MB),
        and a ``quantization:`` the model contradicts is refused; a node only warns of it, as
        the label changes nothing it runs, and a model that ran before must run on."""
        manifest = entry.manifest
        source = str(entry.folder / "manifest.yaml")
        passed = on_check or _unheard
        self.manifest = manifest
        self.score_threshold = manifest.decoder.score_threshold if score_threshold is None else score_threshold
        passed(self._check_runtime(weights, source))
        model = open_model(manifest.runtime, weights, options)
        passed(ModelCheck("load", "pass", f"{RUNTIME_NAMES[manifest.runtime]} opened it"))
        real_in = model.check_input(manifest, source)
        spec = manifest.input
        quantized = f", scale {real_in.scale:.6g}, zero point {real_in.zero_point}" if real_in.scale else ""
        passed(ModelCheck("input", "pass", f"{_tensor(real_in)}{quantized}: {spec.layout} {spec.width}×{spec.height}"))
        outputs = model.check_outputs(manifest, source)
        passed(ModelCheck("outputs", "pass", ", ".join(_tensor(o) for o in outputs)))
        self.backend: Backend = model
        passed(self._check_quantization(weights, source, audit))
        self._decoder = bind(manifest.decoder, source)
        self._context = DecodeContext(manifest.input.width, manifest.input.height, self.score_threshold)
        passed(self._check_decoder(source))
        self.labels = entry.labels()
        passed(self._check_labels(source))
        self._tensors = BufferPool(keep=4)  # being prepared, waiting, in inference, spare
        self._scratch = threading.local()  # per thread: the resized frame and its planes
        self._input: _InputPlan | None = None
        passed(self._check_runs(source))

    @classmethod
    def from_catalogue(
        cls,
        catalogue: Catalogue,
        name: str,
        options: BackendOptions | None = None,
        score_threshold: float | None = None,
    ) -> Detector:
        """Load a cached model after checking its sha256 against the manifest."""
        return cls(catalogue.get(name), catalogue.weights(name), options, score_threshold)

    @property
    def model_ref(self) -> ModelRef:
        return self.manifest.ref

    def _check_runtime(self, weights: Path, source: str) -> ModelCheck:
        runtime = self.manifest.runtime
        if check_runtime(self.manifest, weights, source) is None:
            detail = f"{weights.name} is neither ONNX nor TFLite by its first bytes; loading it tells more"
            return ModelCheck("runtime", "skip", detail)
        return ModelCheck("runtime", "pass", f"{weights.name} is {FORMATS[runtime]}, as runtime: {runtime} says")

    def _check_quantization(self, weights: Path, source: str, audit: bool) -> ModelCheck:
        """The manifest's ``quantization:`` must be what the model's own tensors show, as ``s4edge
        models add`` writes it: a model labelled int8 that is float (or float that is int8) would
        be chosen for an accelerator, or a comparison, it does not fit."""
        declared, first = self.manifest.quantization, self.backend.inputs[0]
        if self.manifest.runtime == "onnx" and not audit:
            found, evidence = None, "an ONNX graph is read by `s4edge models verify`, not at load"
        else:
            found, evidence = quantization_of(self.backend, self.manifest.runtime, weights)
        if found is None and declared == "int8-full" and first.dtype == "float32":  # full integer: its input too
            problem = (
                f"says int8-full, but the model takes a {first.dtype} input; set none, fp16, int8-dynamic "
                "or int8-static (pip install 's4edge[research]' and run `s4edge models verify` to tell which)"
            )
        elif found is None:
            remedy = "pip install 's4edge[research]' to check it against the graph"
            return ModelCheck("quantization", "skip", f"{declared}, not checked: {evidence}", remedy)
        elif found != declared:
            problem = f"says {declared}, but the model is {found} ({evidence}); set quantization: {found}"
        else:
            return ModelCheck("quantization", "pass", f"{found}: {evidence}")
        if audit:
            raise ManifestError(source, "quantization", problem)
        log.warning("%s: quantization: %s (the model runs; `s4edge models verify` refuses it)", source, problem)
        return ModelCheck("quantization", "skip", problem)

    def _check_labels(self, source: str) -> ModelCheck:
        """Line k of the labels names class k: a file a line short or long (a header, a lost first
        line) names every detection after it wrongly, a person reported as a bicycle. Where the
        output shapes tell the classes (decoders/guess.py), the labels must be as many."""
        manifest, spec = self.manifest, self.manifest.input
        family = manifest.decoder.family
        head = guess_family(self.backend.outputs, spec.width, spec.height, manifest.runtime, family=family)
        if head.family != family or not head.classes:
            detail = f"{len(self.labels)} labels; the outputs do not tell how many classes the model has"
            return ModelCheck("labels", "skip", detail)
        if len(self.labels) == head.classes:
            return ModelCheck("labels", "pass", f"{len(self.labels)} labels for the model's {head.classes} classes")
        where = f"{manifest.labels} has" if isinstance(manifest.labels, str) else "the list holds"
        raise ManifestError(
            source,
            "labels",
            f"{where} {len(self.labels)} labels for the model's {head.classes} classes ({head.evidence}); "
            "write one class name per line, line k for class k, with no header",
        )

    def _check_decoder(self, source: str) -> ModelCheck:
        """Decode a blank output once, so options that cannot fit this model fail at load, not per frame."""
        family = self.manifest.decoder.family
        if any(not d for info in self.backend.outputs for d in info.shape):
            # sizes known only once it runs: _check_runs decodes its real outputs
            return ModelCheck("decoder", "pass", f"{family}; the output sizes are known once it runs (inference)")
        blank = [np.zeros([d or 1 for d in info.shape], np.float32) for info in self.backend.outputs]  # all known
        try:
            found = self._decoder(blank, self._context)
        except Exception as exc:  # a researcher's family (an s4edge.decoders entry point) raises what it raises
            raise _decode_failure(source, family, exc) from exc
        if not isinstance(found, Candidates):
            raise DecoderFault(
                source, "decoder", f"{family}: decode returned {type(found).__name__}, not decoders.Candidates"
            )
        return ModelCheck("decoder", "pass", f"{family} reads outputs of these shapes")

    def _check_runs(self, source: str) -> ModelCheck:
        """Run the model once on a grey frame, so that one which loads but cannot run on what
        its manifest prepares (a grey or NHWC input declared NCHW, a size of -1) is refused
        at load or at a live swap, which then keeps the old model, not on every frame after."""
        spec = self.manifest.input
        try:
            tensor, geometry = self.preprocess(np.full((max(spec.height, 1), max(spec.width, 1), 3), 114, np.uint8))
            outputs = self.infer(tensor)
        except ManifestError:
            raise
        except Exception as exc:  # the runtime's own error types: the manifest misdescribes the model
            problem = " ".join(str(exc).split())[:300]
            raise ManifestError(source, "input", f"the model does not run on a frame prepared so: {problem}") from exc
        try:
            found = self.decode(outputs, geometry)
        except Exception as exc:  # as in _check_decoder: a family of any origin refuses the model, in one line
            raise _decode_failure(source, self.manifest.decoder.family, exc) from exc
        return ModelCheck(
            "inference", "pass", f"ran once on a grey {spec.width}×{spec.height} frame: {len(found)} detections"
        )

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → the model's float input: resize (stretch or letterbox), channel order,
        ``(pixel * scale - mean) / std``, layout. An int8/uint8 model's backend quantizes it.

        One resize into a per-thread canvas, one channel split into per-thread planes (NCHW),
        one conversion straight into the input tensor: no temporary copies. The tensor comes
        from a pool and is the caller's for as long as anything refers to it (it may be in
        inference while the next frame is prepared); once dropped, its memory holds a later
        frame. Same float32 operations in the same order as the plain numpy expression
        (``resize(frame).astype(float32) * scale``, transposed), so the same tensor.
        """
        spec = self.manifest.input
        plan = self._plan(spec)
        frame = _as_bgr(frame_bgr)
        height, width = frame.shape[:2]
        geometry = plan.geometries.get((height, width)) or self._geometry(height, width)
        canvas = self._canvas(frame, geometry)
        tensor = self._tensors.take(plan.shape, np.float32)
        if spec.layout == "NHWC":
            rgb = (
                cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB, dst=self._buffer("rgb", canvas.shape))
                if spec.colour == "RGB"
                else canvas
            )
            np.multiply(rgb, plan.scale, out=tensor[0], dtype=np.float32)
            if plan.mean.any():
                np.subtract(tensor, plan.mean, out=tensor)
            if (plan.std != 1).any():
                np.divide(tensor, plan.std, out=tensor)
            return tensor, geometry
        planes = self._buffer("planes", (3, geometry.input_height, geometry.input_width))
        # cv2.split writes frame channel k (B, G, R) into the k-th array it is given
        order = [planes[2], planes[1], planes[0]] if spec.colour == "RGB" else [planes[0], planes[1], planes[2]]
        cv2.split(canvas, order)
        np.multiply(planes, plan.scale, out=tensor[0], dtype=np.float32)
        for channel in range(3):
            plane = tensor[0, channel]
            if plan.mean[channel]:
                np.subtract(plane, plan.mean[channel], out=plane)
            if plan.std[channel] != 1:
                np.divide(plane, plan.std[channel], out=plane)
        return tensor, geometry

    def _plan(self, spec: InputSpec) -> _InputPlan:
        """What the input spec asks of every frame, worked out once per spec."""
        if self._input is None or self._input.spec is not spec:
            self._input = _InputPlan(spec)
        return self._input

    def _geometry(self, height: int, width: int) -> Geometry:
        """How a frame of this size fits the input; worked out once per frame size."""
        spec = self.manifest.input
        in_w, in_h = spec.width, spec.height
        if spec.resize == "letterbox":
            ratio = min(in_w / width, in_h / height)
            new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
            pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
            geometry = Geometry(width, height, new_w / width, new_h / height, pad_x, pad_y, in_w, in_h)
        else:
            geometry = Geometry(width, height, in_w / width, in_h / height, 0.0, 0.0, in_w, in_h)
        self._plan(spec).geometries[(height, width)] = geometry
        return geometry

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """This thread's scratch array ``name``: it lives only within one preprocess call."""
        buffer: np.ndarray | None = getattr(self._scratch, name, None)
        if buffer is None or buffer.shape != shape:
            buffer = np.empty(shape, np.uint8)
            setattr(self._scratch, name, buffer)
        return buffer

    def _canvas(self, frame: np.ndarray, geometry: Geometry) -> np.ndarray:
        """The frame resized into the input (bilinear, as cv2.resize does by default)."""
        spec = self.manifest.input
        canvas = self._buffer("canvas", (spec.height, spec.width, 3))
        if spec.resize != "letterbox":
            cv2.resize(frame, (spec.width, spec.height), dst=canvas)
            return canvas
        new_w = round(geometry.scale_x * geometry.frame_width)
        new_h = round(geometry.scale_y * geometry.frame_height)
        pad_x, pad_y = int(geometry.pad_x), int(geometry.pad_y)
        canvas.fill(spec.pad_value)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(frame, (new_w, new_h))
        return canvas

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.backend.run(tensor)

    def candidates(self, outputs: Sequence[np.ndarray], score_threshold: float | None = None) -> Candidates:
        context = self._context
        if score_threshold is not None:
            context = DecodeContext(context.input_width, context.input_height, score_threshold)
        found = self._decoder(outputs, context)
        if len(found.scores) == 0:
            return found
        finite = np.isfinite(found.boxes).all(axis=1) & np.isfinite(found.scores)
        if not finite.all():  # a NaN or inf from the model places nothing, and would void NMS's class offsets
            points = None if found.keypoints is None else found.keypoints[finite]
            found = Candidates(
                found.boxes[finite], found.scores[finite], found.class_ids[finite], found.suppressed, points
            )
        if found.suppressed or len(found.scores) == 0:
            return found
        spec = self.manifest.decoder
        keep = nms(found.boxes, found.scores, spec.nms_iou, found.class_ids, spec.max_detections)
        return Candidates(found.boxes[keep], found.scores[keep], found.class_ids[keep], suppressed=True)

    def decode(
        self, outputs: Sequence[np.ndarray], geometry: Geometry, score_threshold: float | None = None
    ) -> list[Detection]:
        """Detections at the manifest's score threshold, or at ``score_threshold`` (a
        snapshot's blur looks far below it: ``SnapshotConfig.blur_min_score``)."""
        found = self.candidates(outputs, score_threshold)
        if len(found.scores) == 0:
            return []
        order = np.argsort(-found.scores, kind="stable")[: self.manifest.decoder.max_detections]
        boxes = geometry.to_frame(found.boxes[order])
        # a box wholly inside the letterbox border collapses to a line on the frame's edge
        inside = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        labels, known = self.labels, len(self.labels)
        detections = []
        for box, score, cid, keep in zip(
            boxes.tolist(), found.scores[order].tolist(), found.class_ids[order].tolist(), inside, strict=True
        ):
            if keep:
                cid = int(cid)
                label = labels[cid] if 0 <= cid < known else f"class_{cid}"
                detections.append(Detection(cid, label, score, (box[0], box[1], box[2], box[3])))
        return detections

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        tensor, geometry = self.preprocess(frame_bgr)
        return self.decode(self.infer(tensor), geometry)


class DecoderFault(ManifestError):
    """A decoder family's code failed on the model's outputs (raised, or returned no ``Candidates``):
    the model is refused like one its manifest misdescribes, but the fix is in the family's package."""


def _decode_failure(source: str, family: str, exc: Exception) -> ManifestError:
    """A decoder's error as a manifest problem: a ValueError is a family's word on the outputs; anything
    else is a bug in the family's code, named with its type for its author."""
    problem = " ".join(str(exc).split())[:300]
    if isinstance(exc, ValueError):
        return ManifestError(source, "decoder", f"{family}: {problem}")
    return DecoderFault(
        source, "decoder", f"{family}'s decode raised {type(exc).__name__}: {problem}; the family's code is at fault"
    )


def _tensor(info: TensorInfo) -> str:
    shape = ", ".join("?" if d is None else str(d) for d in info.shape)
    return f"{info.name} [{shape}] {info.dtype}"


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise ValueError(f"expected a BGR frame (H×W×3), got shape {frame.shape}")
