"""Unattended objects: a bag that stays put while the person who brought it is gone.

An object's owner is the person nearest to it within ``distance`` in its first
``OWNER_SETTLE_S`` (a detector that misses the owner in the frame the bag appears must
not make a passer-by its owner), or nobody. The object is stationary while its centre
stays within ``still_tolerance`` of where it settled. It raises once it has been both
stationary and without its owner within ``distance`` for ``after_s`` (the clock starts
when the owner steps away, not when the bag was put down). An object that came with no
owner is attended by someone who stays within ``distance`` for ``attend_s``: people
walking past a bag nobody brought do not restart its clock.

Tracks break; the bag and its owner stay. An object track that appears within
``still_tolerance`` of where an object lost less than ``grace_s`` ago had settled is
that object re-identified: it keeps its owner, its clocks and its incident. An owner
lost from sight beside the object (hidden behind a passer-by) is the person track that
appears within ``distance`` of where they were last seen, less than ``grace_s`` after;
an owner last seen away from it walked off, and is re-identified nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    grace_s: float = Field(
        default=20.0,
        gt=0,
        description="An object or owner unseen up to this long (hidden behind people) is the same one when seen "
        "again where it was; an object unseen longer is gone, and its incident ends",
    )
    attend_s: float = Field(
        default=10.0, ge=0, description="Someone within distance this long attends an object that came with no owner"
    )
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
    first_seen: float = 0.0
    owner_at: tuple[float, float] | None = None  # the owner's box centre when last seen, and when
    owner_seen: float = 0.0
    company_since: float | None = None  # someone has been within distance since
    candidates: dict[int, float] = field(default_factory=dict)  # owner candidates: closeness × seconds near


class UnattendedObjects:
    OWNER_SETTLE_S = 2.0

    def __init__(self, config: UnattendedObjectConfig, camera: str, book: IncidentBook, describe: Describe) -> None:
        self.config = config
        self.camera = camera
        self.book = book
        self._describe = describe
        self._objects: dict[int, _Object] = {}
        self._people_since: dict[int, tuple[float, float]] = {}  # person track: first and last seen

    def key(self, track_id: int) -> str:
        return f"unattended_object:{self.camera}:{self.config.name}:{track_id}"

    def _lost_at(self, centre: tuple[float, float], present: set[int]) -> int | None:
        """The lost object that had settled nearest to ``centre``, within ``still_tolerance``."""
        near = [
            (math.dist(centre, state.anchor), track_id)
            for track_id, state in self._objects.items()
            if track_id not in present
        ]
        near = [n for n in near if n[0] <= self.config.still_tolerance]
        return min(near)[1] if near else None

    def _follow_owner(self, state: _Object, obj: Track, people: Sequence[Track], now: float, seconds: float) -> None:
        """Settle, follow or re-identify ``state``'s owner among this frame's ``people``,
        ``seconds`` after the object's previous frame."""
        if now - state.first_seen <= self.OWNER_SETTLE_S:
            # closeness × time near it: one frame that misses the owner, or a passer-by brushing
            # past, does not make a stranger the owner
            for p in people:
                gap = self.config.distance - distance_to_box(obj.centre, p.box)
                if gap >= 0:
                    state.candidates[p.track_id] = state.candidates.get(p.track_id, 0.0) + gap * max(seconds, 1e-3)
            if state.candidates:
                state.owner = max(state.candidates, key=lambda track_id: state.candidates[track_id])
        owner = next((p for p in people if p.track_id == state.owner), None)
        if owner is None and state.owner_at is not None and now - state.owner_seen <= self.config.grace_s:
            owner_at = state.owner_at  # a person first seen after the owner was lost, where the owner was
            back = [
                (math.dist(p.centre, owner_at), p.track_id, p)
                for p in people
                if self._people_since[p.track_id][0] > state.owner_seen
                and math.dist(p.centre, owner_at) <= self.config.distance
            ]
            owner = min(back, key=lambda b: b[:2])[2] if back else None
        if owner is not None:
            # re-identified only where lost beside the object: an owner seen walking away is gone
            # (re-identified at the door they left by, each passer-by became the owner in turn)
            beside = distance_to_box(obj.centre, owner.box) <= self.config.distance
            state.owner, state.owner_at, state.owner_seen = owner.track_id, owner.centre if beside else None, now

    def update(self, tracks: Sequence[Track], now: float, model: ModelRef | None) -> None:
        cfg = self.config
        people = [t for t in tracks if t.label in cfg.owner_classes]
        for p in people:
            self._people_since[p.track_id] = (self._people_since.get(p.track_id, (now, now))[0], now)
        objects = [t for t in tracks if t.label in cfg.classes]
        present = {t.track_id for t in objects}
        for obj in objects:
            state = self._objects.get(obj.track_id)
            if state is None:
                lost = self._lost_at(obj.centre, present)
                if lost is not None:  # the same bag under a new track id
                    state = self._objects.pop(lost)
                else:
                    state = _Object(obj.track_id, None, obj.centre, now, now, first_seen=now)
                self._objects[obj.track_id] = state
            seconds, state.last_seen = now - state.last_seen, now
            self._follow_owner(state, obj, people, now, seconds)
            moved = math.dist(obj.centre, state.anchor) > cfg.still_tolerance
            if moved:
                state.anchor, state.still_since = obj.centre, now
            near = [p for p in people if distance_to_box(obj.centre, p.box) <= cfg.distance]
            if not near:
                state.company_since = None
            elif state.company_since is None:
                state.company_since = now
            if state.owner is not None:
                attended = any(p.track_id == state.owner for p in near)
            else:
                attended = state.company_since is not None and now - state.company_since >= cfg.attend_s
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
            if now - state.last_seen > cfg.grace_s:
                del self._objects[track_id]
                self.book.clear(self.key(state.ident), now, detail="object gone")
        for track_id, (_, seen) in list(self._people_since.items()):
            if now - seen > cfg.grace_s:
                del self._people_since[track_id]
