"""Types shared by the vision stages: detector → NMS → tracker → scene analytics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object. The box is normalised to the frame: 0..1, (x1, y1, x2, y2)."""

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
