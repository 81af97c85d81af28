"""A researcher's own model into the catalogue: ``s4edge models add FILE --name NAME``.

The file is inspected (inspection.py), its decoder family guessed from the output shapes
(decoders/guess.py), and a manifest drafted from both. What the graph says is taken from
it; the preprocessing no graph records comes from the family's reference code and is
listed as assumed; what neither can tell is listed as missing, each with the
``--set FIELD=VALUE`` that fills it. A complete draft is loaded and run once on a blank
frame before the model joins the user's catalogue (the model cache), so a model that was
added is one that runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from s4edge.edge.vision.backends import BackendOptions
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.decoders import known_families
from s4edge.edge.vision.decoders.guess import Guess, guess_family
from s4edge.edge.vision.inspection import ModelGraph, inspect_model
from s4edge.edge.vision.manifest import Manifest, ManifestError, ModelEntry, label_lines, parse_manifest
from s4edge.yaml_text import load_yaml

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # Manifest.name
COMPUTED = {"name": "--name", "file": "the file", "sha256": "the file", "labels": "--labels"}


class IntakeError(ValueError):
    """The model cannot be added as asked; the message says what to change."""


@dataclass(frozen=True)
class Preprocessing:
    """How a family's reference code feeds its model: (pixel × scale − mean) / std after resizing."""

    colour: str
    resize: str
    scale: float
    pad_value: int = 0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""


HALF = (0.5, 0.5, 0.5)
CONVENTIONS = {
    "fastestdet": Preprocessing("BGR", "stretch", 1 / 255, source="FastestDet example/onnx-runtime/runtime.py"),
    "yolov8": Preprocessing("RGB", "letterbox", 1 / 255, 114, source="ultralytics/data/augment.py LetterBox"),
    "yolox": Preprocessing("BGR", "letterbox", 1.0, 114, source="yolox/data/data_augment.py preproc, 0..255"),
    "ssd": Preprocessing("RGB", "stretch", 1 / 255, 0, HALF, HALF, "TF Object Detection API SSD, -1..1"),
    "mediapipe_pose": Preprocessing("RGB", "letterbox", 1 / 255, 0, HALF, HALF, "MediaPipe ImageToTensor, -1..1"),
}
DEFAULT_CONVENTION = Preprocessing("RGB", "stretch", 1 / 255, source="a guess: no family")
# Per family: score threshold and NMS IoU of its reference code's defaults.
THRESHOLDS = {
    "fastestdet": (0.65, 0.45),  # FastestDet runtime.py
    "yolov8": (0.25, 0.7),  # ultralytics predict: conf 0.25, iou 0.7
    "yolox": (0.3, 0.45),  # YOLOX tools/demo.py
    "ssd": (0.5, 0.45),
    "mediapipe_pose": (0.5, 0.3),  # pose_detection_cpu.pbtxt
}


@dataclass
class Intake:
    graph: ModelGraph
    guess: Guess
    name: str
    draft: dict[str, Any]  # the manifest, as manifest.yaml will hold it
    labels: list[str]
    labels_from: str
    assumed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def manifest(self) -> Manifest:
        return parse_manifest(self.draft, f"the drafted manifest of {self.name}")


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs, the value read as YAML (``input.shape=[1,3,640,640]``)."""
    sets: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise IntakeError(f"--set {pair!r}: write FIELD=VALUE, e.g. --set input.colour=BGR")
        root = key.split(".")[0]
        if root in COMPUTED:
            raise IntakeError(f"--set {key}: {root} comes from {COMPUTED[root]}, not --set")
        try:
            sets[key] = load_yaml(text)
        except yaml.YAMLError as exc:
            raise IntakeError(f"--set {key}: {text!r} is not a YAML value ({' '.join(str(exc).split())})") from exc
    return sets


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise IntakeError(f"--labels {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IntakeError(f"--labels {path}: cannot read it ({exc.__class__.__name__}: {exc})") from exc
    labels = label_lines(text)
    if not labels:
        raise IntakeError(f"--labels {path}: no labels in it; write one class name per line")
    return labels


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise IntakeError(
            f"--name {name!r}: use lower-case letters, digits, '.', '_' and '-' (64 at most), "
            "starting with a letter or digit"
        )


def draft(path: Path, name: str, labels_file: Path | None = None, sets: dict[str, Any] | None = None) -> Intake:
    """Inspect ``path`` and draft its manifest; ``sets`` are the researcher's own field values."""
    sets = sets or {}
    check_name(name)
    given = read_labels(labels_file) if labels_file is not None else None
    family = sets.get("decoder.family")
    if family is not None and family not in known_families():
        raise IntakeError(f"--set decoder.family={family}: unknown family; known: {', '.join(known_families())}")
    shape = sets.get("input.shape")
    if shape is not None and not (
        isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape)
    ):
        raise IntakeError(f"--set input.shape={shape}: give four integers, e.g. [1,3,640,640]")
    graph = inspect_model(path, shape)
    fixed = graph.input.shape
    if shape is not None and (len(fixed) != 4 or any(d not in (None, s) for d, s in zip(fixed, shape, strict=True))):
        dims = "[" + ", ".join("?" if d is None else str(d) for d in fixed) + "]"
        raise IntakeError(
            f"--set input.shape={shape}: {path.name}'s input {graph.input.name} is {dims}; only the sizes shown "
            "as ? are the model's to choose, the others are fixed in the graph (export it again for another size)"
        )
    if graph.input.dtype not in ("float32", "int8", "uint8"):  # no --set can make the model take another
        raise IntakeError(
            f"{path.name}: its input {graph.input.name} takes {graph.input.dtype}, and s4edge feeds float32, int8 "
            "or uint8; export it again with float32 inputs (a float16 model: keep_io_types=True in "
            "onnxconverter-common's convert_float_to_float16)"
        )
    width, height = graph.size
    hint = len(given) if given else len(graph.labels) if graph.labels else None
    guess = guess_family(graph.outputs, width, height, graph.runtime, graph.postprocess, hint, family)
    labels, labels_from = _labels(given, labels_file, graph, guess)
    if graph.input_shape is None and guess.family is None:
        # a head's grid is matched against the input size: with none, the family waits for input.shape
        guess = replace(
            guess,
            evidence=f"{guess.evidence}, with the input size unknown; it is guessed again once input.shape is set",
            missing=(),
        )
    intake = Intake(graph, guess, name, {}, labels, labels_from, list(guess.assumed), list(guess.missing))
    intake.draft = _manifest_data(intake)
    for key, value in sets.items():
        _set(intake.draft, key, value)
    intake.missing = [m for m in intake.missing if not any(_covers(k, m) for k in sets)]
    intake.assumed = [a for a in (_unset(note, sets) for note in intake.assumed) if a]
    return intake


def _covers(key: str, field_name: str) -> bool:
    return key == field_name or key.startswith(field_name + ".") or field_name.startswith(key + ".")


def _unset(note: str, sets: dict[str, Any]) -> str:
    """An assumption ("input.colour, input.resize: why") less the fields the researcher set."""
    fields, _, why = note.partition(": ")
    left = [f for f in fields.split(", ") if not any(_covers(k, f) for k in sets)]
    return f"{', '.join(left)}: {why}" if left else ""


def _labels(
    given: list[str] | None, labels_file: Path | None, graph: ModelGraph, guess: Guess
) -> tuple[list[str], str]:
    if given is not None:
        return given, str(labels_file)
    if graph.labels:
        return graph.labels, "the file's metadata"
    if guess.labels:
        return list(guess.labels), f"the {guess.family} family"
    if guess.classes:
        return [f"class_{i}" for i in range(guess.classes)], "numbers: no --labels given"
    return [], "none: no --labels given"


def _manifest_data(intake: Intake) -> dict[str, Any]:
    graph, guess = intake.graph, intake.guess
    first = graph.input
    layout = graph.layout
    if layout is None:
        intake.missing.append("input.layout")
    if graph.input_shape is None:
        intake.missing.append("input.shape")
    if len(graph.inputs) > 1:
        intake.assumed.append(f"input.name: {first.name}, the first of {len(graph.inputs)} inputs")
    convention = CONVENTIONS.get(guess.family or "", DEFAULT_CONVENTION)
    spec: dict[str, Any] = {
        "name": first.name,
        "shape": graph.input_shape or [d if d is not None else -1 for d in first.shape],
        "layout": layout or "NCHW",
        "colour": convention.colour,
        "dtype": first.dtype,
        "resize": convention.resize,
        "pad_value": convention.pad_value,
        "scale": convention.scale,
        "mean": list(convention.mean),
        "std": list(convention.std),
    }
    preprocessing = ["input.colour", "input.resize", "input.scale", "input.mean", "input.std"]
    if first.dtype in ("int8", "uint8") and first.scale:
        # The input quantization bounds the real values the model takes; map pixels 0..255 onto them.
        limits = np.iinfo(np.dtype(first.dtype))
        low = (int(limits.min) - first.zero_point) * first.scale
        high = (int(limits.max) - first.zero_point) * first.scale
        spec.update(scale=(high - low) / 255, mean=[0.0 - low] * 3, std=[1.0] * 3)
        spec["quantization"] = {"scale": first.scale, "zero_point": first.zero_point}
        preprocessing = preprocessing[:2]
    elif first.dtype in ("int8", "uint8"):
        # onnxruntime takes the pixels as they are: int8's range is 0..255 less 128 (more than
        # 127 clipped to it once), and what the model was trained on is not in the file
        spec.update(scale=1.0, mean=[128.0 if first.dtype == "int8" else 0.0] * 3, std=[1.0] * 3)
    intake.assumed.append(f"{', '.join(preprocessing)}: {convention.source}")
    if intake.labels_from.startswith(("numbers", "none")):
        intake.assumed.append("labels: no --labels given")
    elif guess.classes and len(intake.labels) != guess.classes:
        intake.assumed.append(f"labels: {len(intake.labels)} labels for {guess.classes} classes")
    score, iou = THRESHOLDS.get(guess.family or "", (0.5, 0.45))
    return {
        "name": intake.name,
        "version": f"local-{graph.sha256[:12]}",
        "description": f"{guess.family or 'undecided'} model added from {graph.path.name}",
        "runtime": graph.runtime,
        "file": graph.path.name,
        "sha256": graph.sha256,
        "licence": "unknown",
        "source": f"s4edge models add {graph.path.resolve()}",
        "quantization": graph.quantization,
        "labels": "labels.txt",
        "input": spec,
        "outputs": [
            {"name": o.name, "shape": [d if d is not None else -1 for d in o.shape]} for o in _ordered(graph, guess)
        ],
        "decoder": {
            "family": guess.family or "FILL-IN",
            "score_threshold": score,
            "nms_iou": iou,
            "options": dict(guess.options),
        },
    }


def _ordered(graph: ModelGraph, guess: Guess) -> list[Any]:
    order = guess.order if sorted(guess.order) == list(range(len(graph.outputs))) else range(len(graph.outputs))
    return [graph.outputs[i] for i in order]


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted field (``decoder.options.decoded``); a list is indexed by number (``outputs.1.name``)."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise IntakeError(
                    f"--set {key}: {'.'.join(parts[:depth])} has {len(node)} entries; {part!r} is not one"
                )
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise IntakeError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a group of fields")


def add(catalogue: Catalogue, intake: Intake, force: bool = False) -> ModelEntry:
    """Add the drafted model to the user's catalogue once it loads and runs on a blank frame."""
    if intake.missing:
        raise IntakeError(f"cannot add {intake.name}: fill in {', '.join(intake.missing)}")
    manifest = intake.manifest()
    return catalogue.add_model(manifest, intake.graph.path, intake.labels, force, _runs_on_a_blank_frame)


def _runs_on_a_blank_frame(entry: ModelEntry, weights: Path) -> None:
    from s4edge.edge.vision.detector import Detector

    source = f"the drafted manifest of {entry.name}"
    try:
        Detector(entry, weights, BackendOptions(threads=1), audit=True)  # which runs it once on a grey frame
    except ManifestError as exc:  # raised against the staging folder, which is about to vanish
        remedy = {"decoder": "check decoder.family and decoder.options", "labels": "correct the --labels file"}.get(
            exc.field, f"--set {exc.field}=…"
        )
        if exc.problem.startswith("unknown key"):  # a --set of a misspelt key: setting it again cannot help
            remedy = f"drop --set {exc.field}"
        raise IntakeError(f"{source}: {exc.field}: {exc.problem}; {remedy}") from exc
    except Exception as exc:  # runtimes raise their own types; the draft is at fault either way
        raise IntakeError(f"{source} does not run the model: {' '.join(str(exc).split())}") from exc
