"""What a weight file says about itself: tensors, layout, quantization, sha256 (``s4edge models add``).

Shapes, dtypes and TFLite quantization come from the runtime that will run the model
(onnxruntime, LiteRT), so a manifest written from them passes the load check. The
ONNX graph's own nodes (QuantizeLinear/DequantizeLinear) need the ``onnx`` package
(``s4edge[research]``); without it the quantization is reported as not inspected.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from s4edge.edge.vision.backends import (
    FORMATS,
    TFLITE_IDENTIFIER,
    BackendOptions,
    Runtime,
    TensorInfo,
    open_model,
    weight_format,
)
from s4edge.edge.vision.catalogue import sha256_file
from s4edge.edge.vision.manifest import ManifestError

Quantization = Literal["none", "fp16", "int8-dynamic", "int8-static", "int8-full"]
RUNTIMES: dict[str, Runtime] = {".onnx": "onnx", ".tflite": "tflite"}
_INTEGER = ("int8", "uint8")


class InspectionError(ValueError):
    """The file is not a model this project can run; the message says what it is instead."""


@dataclass(frozen=True)
class ModelGraph:
    path: Path
    runtime: Runtime
    sha256: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    input_shape: list[int] | None  # the first input with its batch set to 1; None while a size is unknown
    quantization: Quantization
    quantization_evidence: str
    labels: list[str] | None = None  # class names the file carries (Ultralytics' ONNX metadata)
    postprocess: list[str] | None = None  # a TFLite_Detection_PostProcess op's outputs, in its order

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    @property
    def layout(self) -> Literal["NCHW", "NHWC"] | None:
        return layout_of(self.input_shape or self.input.shape)

    @property
    def size(self) -> tuple[int | None, int | None]:
        """(width, height) of the input, None where unknown."""
        shape: list[int | None] = list(self.input_shape or self.input.shape)
        if self.layout == "NCHW":
            return shape[3], shape[2]
        if self.layout == "NHWC":
            return shape[2], shape[1]
        return None, None


def layout_of(shape: Any) -> Literal["NCHW", "NHWC"] | None:
    """Channels first or last, told by which dimension holds the 3 colour channels."""
    if len(shape) != 4:
        return None
    first, last = shape[1] == 3, shape[3] == 3
    if first == last:
        return None
    return "NCHW" if first else "NHWC"


def runtime_of(path: Path) -> Runtime:
    runtime = RUNTIMES.get(path.suffix.lower())
    if runtime is None:
        raise InspectionError(
            f"{path}: unknown extension {path.suffix or '(none)'!r}; give an .onnx or .tflite file "
            "(export other formats to ONNX first)"
        )
    return runtime


def inspect_model(path: Path, input_shape: list[int] | None = None) -> ModelGraph:
    """Read a weight file's tensors and quantization; ``input_shape`` fixes a dynamic input."""
    runtime = runtime_of(path)
    if not path.is_file():
        raise InspectionError(f"{path}: no such file")
    found = weight_format(path)
    if found is not None and found != runtime:
        suffix = next(s for s, r in RUNTIMES.items() if r == found)
        raise InspectionError(f"{path}: {FORMATS[found]}, named {path.suffix}; rename it to {path.stem}{suffix}")
    if runtime == "tflite" and found is None:
        raise InspectionError(f"{path}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier in its header)")
    try:
        model = open_model(runtime, path, BackendOptions(threads=1))
    except ManifestError as exc:
        raise InspectionError(f"{path}: {' '.join(exc.problem.split())}") from exc
    inputs, outputs = list(model.inputs), list(model.outputs)
    labels = size = postprocess = None
    found_quantization, evidence = quantization_of(model, runtime, path)
    quantization: Quantization = found_quantization or "none"
    if runtime == "onnx":
        labels, size = _ultralytics_metadata(model.session)  # type: ignore[attr-defined]
    else:
        postprocess = _tflite_postprocess(model.interpreter)  # type: ignore[attr-defined]
    shape = input_shape or _static_input(inputs[0].shape, size)
    if shape is not None and any(d is None for o in outputs for d in o.shape):
        outputs = _run_for_shapes(model, shape, outputs)
    return ModelGraph(
        path, runtime, sha256_file(path), inputs, outputs, shape, quantization, evidence, labels, postprocess
    )


def _static_input(shape: tuple[int | None, ...], metadata_size: tuple[int, int] | None) -> list[int] | None:
    """The input shape with a dynamic batch set to 1, and a dynamic size taken from the file's metadata."""
    dims = [1 if i == 0 and d is None else d for i, d in enumerate(shape)]
    layout = layout_of(dims)
    if metadata_size is not None and layout is not None:
        rows, cols = (2, 3) if layout == "NCHW" else (1, 2)
        dims[rows] = dims[rows] or metadata_size[0]
        dims[cols] = dims[cols] or metadata_size[1]
    return None if any(d is None for d in dims) else [int(d) for d in dims if d is not None]


def _run_for_shapes(model: Any, shape: list[int], outputs: list[TensorInfo]) -> list[TensorInfo]:
    """Dynamic output sizes become concrete by running the model once on zeros."""
    try:
        results = model.run(np.zeros(shape, np.float32))
    except Exception:  # runtimes raise their own types; the shapes then stay unknown
        return outputs
    return [replace(o, shape=tuple(int(d) for d in r.shape)) for o, r in zip(outputs, results, strict=True)]


METADATA_MAX = 64 * 1024  # characters of one metadata value worth reading: 1000 names fit in 30 KB


def _ultralytics_metadata(session: Any) -> tuple[list[str] | None, tuple[int, int] | None]:
    """Ultralytics' ONNX export records ``names`` ({0: 'person', ...}) and ``imgsz`` ([h, w])."""
    meta = {k: v for k, v in session.get_modelmeta().custom_metadata_map.items() if len(v) <= METADATA_MAX}
    labels = size = None
    try:
        names = ast.literal_eval(meta["names"]) if "names" in meta else None
        if isinstance(names, dict) and sorted(names) == list(range(len(names))):
            labels = [str(names[i]) for i in range(len(names))]
        imgsz = ast.literal_eval(meta["imgsz"]) if "imgsz" in meta else None
        if isinstance(imgsz, list) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz):
            size = (imgsz[0], imgsz[1])
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        pass  # metadata someone else wrote: a hint, never a requirement
    return labels, size


def quantization_of(model: Any, runtime: Runtime, path: Path) -> tuple[Quantization | None, str]:
    """The quantization a loaded model's own tensors and ops show (the manifest's
    ``quantization:``), with the evidence; None where this install cannot read them (an
    ONNX graph without the onnx package)."""
    if runtime == "onnx":
        return _onnx_quantization(path, model.inputs[0])
    return _tflite_quantization(model.interpreter, model.inputs[0])


def _onnx_quantization(path: Path, first_input: TensorInfo) -> tuple[Quantization | None, str]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None, "not inspected: the onnx package is not installed (pip install 's4edge[research]')"
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    initializers = {i.name: i for i in graph.initializer}
    if ops["QuantizeLinear"] or ops["DequantizeLinear"] or any(op.startswith("QLinear") for op in ops):
        evidence = f"QDQ graph ({ops['QuantizeLinear']} QuantizeLinear, {ops['DequantizeLinear']} DequantizeLinear)"
        reads_input = next(
            (n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == first_input.name), None
        )
        if reads_input is not None and len(reads_input.input) >= 3 and set(reads_input.input[1:3]) <= set(initializers):
            scale, zero = (numpy_helper.to_array(initializers[n]).reshape(-1)[0] for n in reads_input.input[1:3])
            evidence += f"; the input is quantized with scale {float(scale):.6g}, zero point {int(zero)}"
        return "int8-static", evidence
    if ops["DynamicQuantizeLinear"] or ops["MatMulInteger"] or ops["ConvInteger"]:
        return "int8-dynamic", "int8 weights, activations quantized at run time (DynamicQuantizeLinear)"
    halves = sum(1 for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    if halves:
        return "fp16", f"{halves} float16 weight tensors"
    return "none", "float weights, no quantization nodes"


def _tflite_ops(interpreter: Any) -> list[dict[str, Any]]:
    try:
        ops: list[dict[str, Any]] = interpreter._get_ops_details()  # LiteRT's op list (also in tflite_runtime)
    except AttributeError:
        return []
    return ops


def _tflite_quantization(interpreter: Any, first_input: TensorInfo) -> tuple[Quantization, str]:
    dtypes = Counter(np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details())
    # an integer input with a scale is quantized (TFLite quantization spec); one without
    # (a uint8 image a float graph casts) says nothing about the weights
    if first_input.dtype in _INTEGER and first_input.scale:
        evidence = (
            f"{first_input.dtype} input with scale {first_input.scale:.6g}, zero point {first_input.zero_point}; "
            f"{dtypes[first_input.dtype]} {first_input.dtype} tensors"
        )
        return "int8-full", evidence
    if dtypes["int8"]:
        if any(op["op_name"] == "QUANTIZE" for op in _tflite_ops(interpreter)):
            return "int8-static", f"{dtypes['int8']} int8 tensors behind a float input (QUANTIZE ops)"
        return "int8-dynamic", f"{dtypes['int8']} int8 weight tensors, float activations"
    if dtypes["float16"]:
        return "fp16", f"{dtypes['float16']} float16 weight tensors, dequantized to float32 at load"
    if first_input.dtype in _INTEGER:
        return "none", f"a {first_input.dtype} input with no quantization, float32 weights"
    return "none", "float32 tensors only"


def _tflite_postprocess(interpreter: Any) -> list[str] | None:
    """A TFLite_Detection_PostProcess op's outputs, in its order."""
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return next(
        (
            [names[int(i)] for i in op["outputs"]]
            for op in _tflite_ops(interpreter)
            if op["op_name"] == "TFLite_Detection_PostProcess"
        ),
        None,
    )
