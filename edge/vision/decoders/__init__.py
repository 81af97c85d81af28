"""Decoder families: raw model outputs → candidate boxes, before NMS.

Each family is a ``Family``: its own pydantic ``Options`` (``extra=forbid``, validated from
the manifest's ``decoder.options``) and a ``decode`` function. Families are ``s4edge.decoders``
entry points, the built-ins (pyproject.toml) and a researcher's package alike; a manifest
imports only the family it names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from s4edge.edge.vision.manifest import DecoderSpec, ManifestError, validation_problems


class DecoderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DecodeContext:
    input_width: int
    input_height: int
    score_threshold: float


@dataclass(frozen=True)
class Candidates:
    """Boxes as x1,y1,x2,y2 normalised to the model input (0..1), with score and class."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    # True when the family already suppressed overlaps its own way (e.g. weighted NMS).
    suppressed: bool = False
    keypoints: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


Decode = Callable[[Sequence[np.ndarray], Any, DecodeContext], Candidates]


@dataclass(frozen=True)
class Family:
    options: type[DecoderOptions]
    decode: Decode


def cxcywh_to_xyxy(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # float64: exp of a large negative logit overflows float32.
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _family(name: str, source: str) -> Family:
    """The family a manifest names, imported now; an unknown or broken one names the field."""
    from s4edge.plugins import DECODERS, MissingExtra, load, plugins

    found = plugins(DECODERS)
    if name not in found:
        known = ", ".join(sorted(found))
        raise ManifestError(source, "decoder.family", f"unknown decoder family {name!r}; known: {known}")
    try:
        family = load(found[name], f"decoder family {name!r}")
    except MissingExtra as exc:
        raise ManifestError(source, "decoder.family", str(exc)) from None
    except Exception as exc:  # a third-party family's bug: this model is refused, the node goes on
        raise ManifestError(source, "decoder.family", f"{found[name].value} failed to load: {exc!r}") from exc
    if not isinstance(family, Family):
        raise ManifestError(source, "decoder.family", f"{found[name].value} is not a decoders.Family (options, decode)")
    return family


def known_families() -> list[str]:
    from s4edge.plugins import DECODERS, plugins

    return sorted(plugins(DECODERS))


@dataclass(frozen=True)
class BoundDecoder:
    """A family with its validated options, ready to decode one model's outputs."""

    family: Family
    options: Any

    def __call__(self, outputs: Sequence[np.ndarray], context: DecodeContext) -> Candidates:
        return self.family.decode(outputs, self.options, context)


def bind(spec: DecoderSpec, source: str) -> BoundDecoder:
    """The decoder a manifest asks for; an unknown family or a bad option names the manifest field."""
    family = _family(spec.family, source)
    try:
        options = family.options.model_validate(spec.options)
    except ValidationError as exc:
        field, problem = validation_problems(exc, family.options, "decoder.options.")
        raise ManifestError(source, field.removesuffix(".(top level)"), problem) from exc
    return BoundDecoder(family, options)
