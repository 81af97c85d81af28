"""Inference backends: onnxruntime and TFLite (LiteRT), behind one small ``Backend`` protocol.

A backend takes the float tensor made by preprocessing, quantizes it if the model's
input is int8/uint8 (using the tensor's own quantization parameters), runs the model
and returns float outputs in the manifest's order. At load it checks the manifest's
declared shapes against the real model, so a wrong manifest is refused, not obeyed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from s4edge.edge.vision.manifest import Manifest, ManifestError

_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
Runtime = Literal["onnx", "tflite"]
RUNTIME_NAMES: dict[Runtime, str] = {"onnx": "onnxruntime", "tflite": "LiteRT (TFLite)"}
FORMATS: dict[Runtime, str] = {
    "onnx": "an ONNX model (a protobuf ModelProto)",
    "tflite": "a TFLite model (TFL3 at bytes 4..8)",
}
TFLITE_IDENTIFIER = b"TFL3"  # FlatBuffers file identifier at bytes 4..8 (tensorflow/lite/schema/schema.fbs)
# onnx.proto, ModelProto: each top-level field number and its protobuf wire type (0 varint, 2 bytes);
# 26 is `configuration` (DeviceConfigurationProto, onnx 1.18)
_MODEL_PROTO_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_MODEL_PROTO_MAX_FIELDS = 100_000  # metadata_props repeat; a file past this many is no model we run


class BackendOptions(BaseModel):
    """The part of the node config an inference backend needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    providers: list[str] = Field(default=["CPUExecutionProvider"], description="onnxruntime execution providers")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Intra-op threads; by default every core this process may use but one, "
        "which capture, tracking and the other sources keep",
    )
    spin: bool = Field(
        default=False, description="Let idle onnxruntime threads busy-wait: lower latency on an otherwise idle CPU"
    )


class BackendError(RuntimeError):
    """The runtime is missing or misconfigured (not the model's fault)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # None: a dynamic dimension
    dtype: str
    scale: float = 0.0  # 0: not quantized
    zero_point: int = 0


class Backend(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]  # in the manifest's order

    def run(self, tensor: np.ndarray) -> list[np.ndarray]: ...


def default_threads() -> int:
    """Every core this process may run on but one. The model leaves that core to frame
    capture and to decoding, tracking and alerts on the last frame, which then overlap
    inference instead of waiting for it (``s4edge bench vision``: more frames per second
    than giving the model every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def quantize(tensor: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Float → the model's integer input; real = (q - zero_point) * scale (TFLite quantization spec)."""
    if info.dtype == "float32":
        return tensor.astype(np.float32, copy=False)
    limits = np.iinfo(np.dtype(info.dtype))
    values = tensor / info.scale + info.zero_point if info.scale else tensor
    return np.clip(np.rint(values), limits.min, limits.max).astype(info.dtype)


def _check_pixels_fit(spec: Any, dtype: str, source: str) -> None:
    """An integer input with no quantization in the file (an ONNX uint8 or int8 input) takes
    ``(pixel * scale - mean) / std`` as it is, rounded: it must fit the type and use most of
    it. With FastestDet's scale of 1/255 a uint8 model saw 0s and 1s: a black frame."""
    limits = np.iinfo(np.dtype(dtype))
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    low, high = (0 - mean) / std, (255 * spec.scale - mean) / std
    span = limits.max - limits.min
    if low.min() < limits.min - 0.5 or high.max() > limits.max + 0.5 or (high - low).min() < span / 2:
        fit = "scale: 1 and mean: [128, 128, 128]" if limits.min < 0 else "scale: 1 and mean: [0, 0, 0]"
        raise ManifestError(
            source,
            "input.scale",
            f"the model takes {dtype} values as they are (the file holds no quantization), and input.scale, "
            f"mean and std turn pixels 0..255 into {low.min():g}..{high.max():g}, not {limits.min}..{limits.max}; "
            f"set {fit}",
        )


def dequantize(tensor: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.scale and tensor.dtype != np.float32:
        return ((tensor.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)
    return tensor.astype(np.float32, copy=False)


def weight_format(path: Path) -> Runtime | None:
    """The runtime a weight file is for, told by its bytes, not its name; None for neither.

    TFLite is a FlatBuffer with the ``TFL3`` identifier at bytes 4..8. ONNX has no magic
    number: it is a protobuf ``ModelProto``, so its top-level fields are walked (their tags
    and lengths only, the weights are skipped) and must be ModelProto's, with ``ir_version``
    and ``graph`` among them, ending exactly at the end of the file."""
    with path.open("rb") as stream:
        if stream.read(8)[4:8] == TFLITE_IDENTIFIER:
            return "tflite"
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
        return "onnx" if _is_model_proto(stream, size) else None


def _is_model_proto(stream: IO[bytes], size: int) -> bool:
    seen: set[int] = set()
    for _ in range(_MODEL_PROTO_MAX_FIELDS):
        if stream.tell() == size:
            return {1, 7} <= seen  # ir_version and graph
        tag = _varint(stream)
        if tag is None or _MODEL_PROTO_FIELDS.get(tag >> 3) != tag & 7:
            return False
        value = _varint(stream)
        if value is None:
            return False
        if tag & 7 == 2:  # length-delimited: skip the bytes
            if stream.tell() + value > size:
                return False
            stream.seek(value, os.SEEK_CUR)
        seen.add(tag >> 3)
    return False


def _varint(stream: IO[bytes]) -> int | None:
    """A protobuf base-128 varint, at most 10 bytes; None where the file ends or it runs on."""
    value = 0
    for shift in range(0, 70, 7):
        byte = stream.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def check_runtime(manifest: Manifest, path: Path, source: str) -> Runtime | None:
    """Refuse a ``runtime:`` the weight file's own bytes contradict, naming the runtime that
    fits: the other runtime's loader would blame the file ("not a valid Flatbuffer",
    "Protobuf parsing failed") though the manifest is at fault. A file neither runtime's
    format is left to the loader, which says it is damaged."""
    found = weight_format(path)
    if found is not None and found != manifest.runtime:
        raise ManifestError(
            source,
            "runtime",
            f"says {manifest.runtime}, but {manifest.file} is {FORMATS[found]}, which {RUNTIME_NAMES[found]} runs; "
            f"set runtime: {found}",
        )
    return found


def open_model(runtime: Runtime, path: Path, options: BackendOptions | None = None) -> _Loaded:
    """A model with its real tensors, not yet checked against any manifest (``s4edge models add``
    reads them to write one). An unreadable file is a ``ManifestError`` on ``file``."""
    options = options or BackendOptions()
    return _OnnxBackend(path, options) if runtime == "onnx" else _TfliteBackend(path, options)


class _Loaded:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def check_input(self, manifest: Manifest, source: str) -> TensorInfo:
        """Refuse a model whose input differs from what its manifest declares; the input it takes."""
        spec = manifest.input
        real_in = self._input_named(spec.name, source)
        self.inputs = [real_in]
        if not _shape_matches(spec.shape, real_in.shape):
            raise ManifestError(source, "input.shape", f"declares {spec.shape}, the model takes {list(real_in.shape)}")
        if spec.dtype != real_in.dtype:
            raise ManifestError(source, "input.dtype", f"declares {spec.dtype}, the model takes {real_in.dtype}")
        declared_q = spec.quantization
        if declared_q is not None and (
            not np.isclose(declared_q.scale, real_in.scale, rtol=1e-4) or declared_q.zero_point != real_in.zero_point
        ):
            raise ManifestError(
                source,
                "input.quantization",
                f"declares scale {declared_q.scale} zero_point {declared_q.zero_point}, "
                f"the model has scale {real_in.scale} zero_point {real_in.zero_point}",
            )
        if real_in.dtype != "float32" and not real_in.scale:
            _check_pixels_fit(spec, real_in.dtype, source)
        return real_in

    def check_outputs(self, manifest: Manifest, source: str) -> list[TensorInfo]:
        """Refuse a model whose outputs differ from what its manifest declares; its outputs, in the manifest's order."""
        if len(manifest.outputs) != len(self.outputs):
            raise ManifestError(
                source, "outputs", f"declares {len(manifest.outputs)} outputs, the model has {len(self.outputs)}"
            )
        by_name = {info.name: info for info in self.outputs}
        ordered: list[TensorInfo] = []
        for index, declared in enumerate(manifest.outputs):
            if declared.name is not None and declared.name not in by_name:
                raise ManifestError(
                    source, f"outputs.{index}.name", f"no output {declared.name!r}; the model has {sorted(by_name)}"
                )
            real = by_name[declared.name] if declared.name is not None else self.outputs[index]
            if not _shape_matches(declared.shape, real.shape):
                raise ManifestError(
                    source, f"outputs.{index}.shape", f"declares {declared.shape}, the model gives {list(real.shape)}"
                )
            ordered.append(real)
        self.outputs = ordered
        return ordered

    def _input_named(self, name: str | None, source: str) -> TensorInfo:
        if name is None:
            return self.inputs[0]
        for info in self.inputs:
            if info.name == name:
                return info
        raise ManifestError(source, "input.name", f"no input {name!r}; the model has {[i.name for i in self.inputs]}")


def _shape_matches(declared: list[int], real: tuple[int | None, ...]) -> bool:
    return len(declared) == len(real) and all(r is None or d == r for d, r in zip(declared, real, strict=True))


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class _OnnxBackend(_Loaded):
    def __init__(self, path: Path, options: BackendOptions) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in options.providers if p not in available]
        if missing:
            raise BackendError(f"execution providers {missing} are not available here; available: {available}")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads or default_threads()
        # Spinning idle intra-op threads busy-wait between runs, taking the cores that
        # capture, video decoding and tracking need (measured: `s4edge bench vision`).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        # Arena and memory pattern stay on (`s4edge bench vision`, FastestDet): without the
        # arena each run's tensors come from malloc and the heap grows by some 20 MB of
        # fragments; without the pattern RSS is 5-6 MB lower but inference in the pipeline
        # takes about 6 % more CPU, its tensors no longer in one block that stays in cache.
        try:
            self.session = ort.InferenceSession(str(path), session_options, providers=options.providers)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise ManifestError(str(path), "file", f"not a loadable ONNX model: {exc}") from exc
        self.inputs = [
            TensorInfo(i.name, tuple(_dim(d) for d in i.shape), _ONNX_DTYPES.get(i.type, i.type))
            for i in self.session.get_inputs()
        ]
        self.outputs = [
            TensorInfo(o.name, tuple(_dim(d) for d in o.shape), _ONNX_DTYPES.get(o.type, o.type))
            for o in self.session.get_outputs()
        ]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        # InferenceSession.run is thread-safe, so a hot swap needs no lock here.
        feed = {self.inputs[0].name: quantize(tensor, self.inputs[0])}
        results = self.session.run([o.name for o in self.outputs], feed)
        return [dequantize(np.asarray(r), info) for r, info in zip(results, self.outputs, strict=True)]


def _tflite_interpreter() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise BackendError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from exc
    return Interpreter


def _tflite_info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero_point = detail["quantization"]
    return TensorInfo(
        name=detail["name"],
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


class _TfliteBackend(_Loaded):
    def __init__(self, path: Path, options: BackendOptions) -> None:
        interpreter_class = _tflite_interpreter()
        try:
            self.interpreter = interpreter_class(model_path=str(path), num_threads=options.threads or default_threads())
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ManifestError(str(path), "file", f"not a loadable TFLite model: {exc}") from exc
        self._index = {d["name"]: d["index"] for d in self.interpreter.get_input_details()}
        self._index.update({d["name"]: d["index"] for d in self.interpreter.get_output_details()})
        self.inputs = [_tflite_info(d) for d in self.interpreter.get_input_details()]
        self.outputs = [_tflite_info(d) for d in self.interpreter.get_output_details()]
        # A TFLite interpreter is not thread-safe: one invoke at a time.
        self._lock = threading.Lock()

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.interpreter.set_tensor(self._index[self.inputs[0].name], quantize(tensor, self.inputs[0]))
            self.interpreter.invoke()
            raw = [self.interpreter.get_tensor(self._index[info.name]) for info in self.outputs]
        return [dequantize(r, info) for r, info in zip(raw, self.outputs, strict=True)]
