"""Unattended objects: a bag that stays put while the person who brought it is gone.

When an object track first appears, its owner is the nearest person within
``distance`` (or nobody). The object is stationary while its centre stays within
``still_tolerance`` of where it settled. It raises once it has been both stationary
and without its owner within ``distance`` for ``after_s`` (the clock starts when the
owner steps away, not when the bag was put down); an object that came with no owner
counts as attended while anyone is within ``distance``.

Tracks break; the bag stays. An object track that appears within ``still_tolerance`` of
where an object lost less than ``GRACE_S`` ago had settled is that object re-identified:
it keeps its owner, its clocks and its incident.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from s4edge.cloud_sync.messages import Detection, Measurement, ModelRef, Severity
from s4edge.edge.alerts import Content, IncidentBook
from s4edge.edge.vision.tracker import Track

Describe = Callable[[Sequence[Track], str, str, str], Detection]


class UnattendedObjectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["unattended_object"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    classes: list[str] = Field(default_factory=lambda: ["backpack", "suitcase", "handbag"], min_length=1)
    owner_classes: list[str] = Field(default_factory=lambda: ["person"], min_length=1)
    after_s: float = Field(default=60.0, gt=0, description="Stationary and unattended this long raises")
    distance: float = Field(default=0.15, gt=0, le=1.5, description="Owner within this (normalised) is with it")
    still_tolerance: float = Field(default=0.03, ge=0, le=1, description="Centre movement still counted as still")
    severity: Severity = "Severe"


def distance_to_box(point: tuple[float, float], box: tuple[float, float, float, float]) -> float:
    """Euclidean distance from a point to the nearest point of a box (0 inside it)."""
    dx = max(box[0] - point[0], 0.0, point[0] - box[2])
    dy = max(box[1] - point[1], 0.0, point[1] - box[3])
    return math.hypot(dx, dy)


@dataclass
class _Object:
    ident: int  # the track id it was first seen with: names its incident through re-identifications
    owner: int | None
    anchor: tuple[float, float]
    still_since: float
    last_seen: float
    unattended_since: float | None = None  # stationary and alone since; None while attended


class UnattendedObjects:
    GRACE_S = 3.0  # a bag hidden behind a passer-by for a moment is the same bag

    def __init__(self, config: UnattendedObjectConfig, camera: str, book: IncidentBook, describe: Describe) -> None:
        self.config = config
        self.camera = camera
        self.book = book
        self._describe = describe
        self._objects: dict[int, _Object] = {}

    def key(self, track_id: int) -> str:
        return f"unattended_object:{self.camera}:{self.config.name}:{track_id}"

    def _nearest_owner(self, obj: Track, people: Sequence[Track]) -> int | None:
        near = [(distance_to_box(obj.centre, p.box), p.track_id) for p in people]
        near = [n for n in near if n[0] <= self.config.distance]
        return min(near)[1] if near else None

    def _lost_at(self, centre: tuple[float, float], present: set[int]) -> int | None:
        """The lost object that had settled nearest to ``centre``, within ``still_tolerance``."""
        near = [
            (math.dist(centre, state.anchor), track_id)
            for track_id, state in self._objects.items()
            if track_id not in present
        ]
        near = [n for n in near if n[0] <= self.config.still_tolerance]
        return min(near)[1] if near else None

    def update(self, tracks: Sequence[Track], now: float, model: ModelRef | None) -> None:
        cfg = self.config
        people = [t for t in tracks if t.label in cfg.owner_classes]
        objects = [t for t in tracks if t.label in cfg.classes]
        present = {t.track_id for t in objects}
        for obj in objects:
            state = self._objects.get(obj.track_id)
            if state is None:
                lost = self._lost_at(obj.centre, present)
                if lost is not None:  # the same bag under a new track id
                    state = self._objects.pop(lost)
                else:
                    state = _Object(obj.track_id, self._nearest_owner(obj, people), obj.centre, now, now)
                self._objects[obj.track_id] = state
            state.last_seen = now
            moved = math.dist(obj.centre, state.anchor) > cfg.still_tolerance
            if moved:
                state.anchor, state.still_since = obj.centre, now
            near = [p for p in people if distance_to_box(obj.centre, p.box) <= cfg.distance]
            attended = any(p.track_id == state.owner for p in near) if state.owner is not None else bool(near)
            if attended:
                state.unattended_since = None
            elif moved or state.unattended_since is None:
                state.unattended_since = now
            key = self.key(state.ident)
            alone_s = now - state.unattended_since if state.unattended_since is not None else 0.0
            if not attended and alone_s >= cfg.after_s:
                still_s = now - state.still_since
                content = Content(
                    title=f"unattended {obj.label}",
                    detail=f"stationary for {still_s:.0f} s, unattended for {alone_s:.0f} s; "
                    + ("its owner left" if state.owner is not None else "nobody with it"),
                    measurements=(
                        Measurement(quantity="stationary", value=round(still_s, 1), unit="s"),
                        Measurement(quantity="unattended", value=round(alone_s, 1), unit="s"),
                    ),
                    detection=self._describe([obj], obj.label, self.camera, cfg.name),
                    model=model,
                )
                self.book.raise_(key, "unattended_object", cfg.severity, now, content)
            elif self.book.is_open(key):
                self.book.clear(key, now, detail="attended again or moved")
        for track_id, state in list(self._objects.items()):
            if now - state.last_seen > self.GRACE_S:
                del self._objects[track_id]
                self.book.clear(self.key(state.ident), now, detail="object gone")
