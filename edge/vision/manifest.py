"""A model's manifest: everything needed to run and trust one weight file (docs/architecture.md, "Models").

A researcher adds a model by adding ``models/<name>/manifest.yaml``. Unknown keys are
refused, and every error names the manifest field, so a typo never becomes a model
that silently detects nothing.
"""

from __future__ import annotations

import difflib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from s4edge.cloud_sync.messages import ModelRef
from s4edge.yaml_text import load_yaml

MODEL_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"  # a model's name, and its folder's in the catalogue


def label_lines(text: str) -> list[str]:
    """One class name per line, line k for class k: a blank line is an unused class (``class_k``),
    never skipped, or every later class would take the next one's name. Blank lines at the end
    are no classes."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return [line or f"class_{k}" for k, line in enumerate(lines)]


class ManifestError(ValueError):
    """A manifest (or the model it describes) is unusable; ``field`` is the manifest key at fault."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: {field}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorQuantization(_Strict):
    """Affine int8/uint8 quantization of a tensor: real = (q - zero_point) * scale."""

    scale: float = Field(gt=0)
    zero_point: int


class InputSpec(_Strict):
    name: str | None = Field(default=None, description="Input tensor name; the model's first input when absent")
    shape: list[int] = Field(min_length=4, max_length=4, description="e.g. [1, 3, 352, 352]")
    layout: Literal["NCHW", "NHWC"]
    colour: Literal["BGR", "RGB"]
    dtype: Literal["float32", "int8", "uint8"] = "float32"
    resize: Literal["stretch", "letterbox"] = "stretch"
    pad_value: int = Field(default=0, ge=0, le=255, description="Pixel value of the letterbox border")
    scale: float = Field(default=1.0 / 255.0, gt=0, description="Pixels are multiplied by this first")
    mean: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)
    std: list[float] = Field(default=[1.0, 1.0, 1.0], min_length=3, max_length=3)
    quantization: TensorQuantization | None = Field(
        default=None, description="Expected quantization of an int8/uint8 input; checked against the model"
    )

    @field_validator("layout")
    @classmethod
    def _channels_where_the_layout_puts_them(cls, value: str, info: ValidationInfo) -> str:
        # frames are prepared with three channels, second (NCHW) or last (NHWC): a layout the
        # shape contradicts was only refused at the first run, against the decoder's options
        shape = info.data.get("shape")
        if not shape:
            return value
        axis, other = (1, "NHWC") if value == "NCHW" else (3, "NCHW")
        if shape[axis] != 3:
            where = "second" if value == "NCHW" else "last"
            fix = (
                f"layout: {other}"
                if shape[4 - axis] == 3
                else "frames go in as 3 colour channels: export the model with a 3-channel input"
            )
            raise ValueError(f"{value} puts the 3 colour channels {where}; {shape} has {shape[axis]} there; {fix}")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: list[float]) -> list[float]:
        if any(v == 0 for v in value):
            raise ValueError("std values must be non-zero")
        return value

    @model_validator(mode="after")
    def _quantization_needs_integer_input(self) -> InputSpec:
        if self.dtype == "float32" and self.quantization is not None:
            raise ValueError("quantization is only meaningful for an int8/uint8 dtype")
        return self

    @property
    def height(self) -> int:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[3] if self.layout == "NCHW" else self.shape[2]


class OutputSpec(_Strict):
    name: str | None = Field(default=None, description="Output tensor name; matched by position when absent")
    shape: list[int] = Field(min_length=1, description="Expected shape; checked against the model at load")


class DecoderSpec(_Strict):
    family: str = Field(description="fastestdet, yolox, yolov8, ssd or mediapipe_pose")
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    nms_iou: float = Field(default=0.45, gt=0, le=1)
    max_detections: int = Field(default=100, ge=1)
    options: dict[str, Any] = Field(default_factory=dict, description="Family-specific options")


class Manifest(_Strict):
    name: str = Field(pattern=MODEL_NAME)
    version: str = Field(min_length=1, max_length=64)
    description: str = ""
    runtime: Literal["onnx", "tflite"]
    file: str = Field(min_length=1, description="Weight file name inside the cache folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex digest; upper case is read as lower")
    url: str | None = Field(default=None, description="Where `models pull` downloads from when there is no mirror")
    licence: str
    source: str = Field(default="", description="Provenance: repository, commit, conversion")
    quantization: Literal["none", "fp16", "int8-dynamic", "int8-static", "int8-full"] = "none"
    labels: str | list[str] = Field(description="A labels file beside the manifest, or the list of labels")
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    decoder: DecoderSpec

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        # Windows' Get-FileHash and certutil print the digest upper case
        return value.lower() if isinstance(value, str) else value

    @field_validator("file")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        if Path(value).name != value or value in {".", ".."}:
            raise ValueError("must be a bare file name, without folders")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_in_models_folder(cls, value: str | list[str]) -> str | list[str]:
        # beside the manifest, or beside a sibling model's (the LiteRT variants share
        # fastestdet's labels): any other path could read a file outside the models folder
        if isinstance(value, list):
            return value
        parts = PurePosixPath(value).parts
        sibling = len(parts) == 3 and parts[0] == ".."
        named = parts[1:] if sibling else parts  # the folder and file, or the file alone
        if not (sibling or len(parts) == 1) or {"..", "/"} & set(named):
            raise ValueError(
                "must name a file beside the manifest (labels.txt) or in a sibling model's folder "
                "(../fastestdet/labels.txt)"
            )
        return value

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, sha256=self.sha256)


class ModelEntry(BaseModel):
    """A manifest together with the folder it was read from (for its labels file)."""

    model_config = ConfigDict(frozen=True)

    manifest: Manifest
    folder: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    def labels(self) -> list[str]:
        labels = self.manifest.labels
        if isinstance(labels, list):
            return labels
        path = self.folder / labels
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError(str(self.folder / "manifest.yaml"), "labels", f"cannot read {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ManifestError(
                str(self.folder / "manifest.yaml"),
                "labels",
                f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8",
            ) from None
        return label_lines(text)


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _problem(error: Any, model: type[BaseModel]) -> str:
    """One validation error in the manifest's words: an unknown key names the key it was
    probably meant to be, and the keys that group takes."""
    if error["type"] == "value_error":  # a validator's own words, without pydantic's "Value error, "
        return str(error["ctx"]["error"])
    if error["type"] != "extra_forbidden":
        return str(error["msg"])
    *group, key = error["loc"]
    for part in group:  # down to the model that refused the key (a list's index is no field)
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        inner = field.annotation if field is not None else None
        inner = next((a for a in getattr(inner, "__args__", ()) if isinstance(a, type)), inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(key), known, n=1)
    meant = f"did you mean {close[0]}? " if close else ""
    return f"unknown key; {meant}the keys here are {', '.join(known)}"


def validation_problems(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> tuple[str, str]:
    """The first error's field, and every error: the first's problem, then the others' fields and problems."""
    errors = exc.errors()
    fields = [prefix + _field_path(e["loc"]) for e in errors]
    problems = [_problem(e, model) for e in errors]
    rest = [f"{f}: {p}" for f, p in zip(fields[1:], problems[1:], strict=True)]
    return fields[0], "; ".join([problems[0], *rest])


def parse_manifest(data: Any, source: str) -> Manifest:
    """Validate a manifest mapping; the first error raised names its field."""
    if not isinstance(data, dict):
        raise ManifestError(source, "(top level)", "a manifest must be a YAML mapping")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(source, *validation_problems(exc, Manifest)) from exc


def load_manifest(path: Path) -> ModelEntry:
    """Read ``<folder>/manifest.yaml``; the model's name must be its folder's name."""
    source = str(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(source, "(file)", f"cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(source, "(file)", f"not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(source, "(file)", f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, nesting past Python's stack
        raise ManifestError(source, "(file)", f"YAML this node cannot read ({type(exc).__name__})") from None
    manifest = parse_manifest(data, source)
    if manifest.name != path.parent.name:
        raise ManifestError(source, "name", f"{manifest.name!r} differs from its folder {path.parent.name!r}")
    return ModelEntry(manifest=manifest, folder=path.parent)
