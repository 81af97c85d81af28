"""Scene analytics: rules over confirmed tracks that turn into incidents.

Every rule is fed ``(tracks, now)`` (monotonic seconds; plus the local time of day for
time windows) and keeps only what it must remember between frames, so a test drives
it with scripted tracks and an injected clock. Rules report through the node's
``IncidentBook`` (new → update → end) with metadata only: labels, counts, track ids,
normalised boxes and the model that saw them. Never pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from s4edge.cloud_sync.messages import Box, Detection, Measurement, ModelRef, Severity
from s4edge.edge.alerts import Content, IncidentBook, Level, ThresholdRule, ValueAlarm
from s4edge.edge.scenario import LevelConfig
from s4edge.edge.vision.tracker import Track
from s4edge.edge.vision.unattended import UnattendedObjectConfig, UnattendedObjects
from s4edge.edge.vision.zones import Line, TimeWindow, Zone

Direction = Literal["a_to_b", "b_to_a"]
DIRECTIONS: tuple[Direction, ...] = ("a_to_b", "b_to_a")
MAX_LISTED = 64  # cloud_sync.messages.Detection lists at most 64 ids/boxes


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    classes: list[str] = Field(default_factory=lambda: ["person"], min_length=1)


class IntrusionConfig(_Rule):
    type: Literal["intrusion"]
    zone: str
    window: TimeWindow | None = Field(default=None, description="Only inside this local time of day")
    min_count: int = Field(default=1, ge=1)
    severity: Severity = "Severe"


class LineCrossConfig(_Rule):
    type: Literal["line_cross"]
    line: str
    directions: list[Direction] = Field(default_factory=lambda: list(DIRECTIONS), min_length=1)
    quiet_s: float = Field(default=10.0, gt=0, description="The incident ends after this long with no crossing")
    severity: Severity = "Minor"
    dead_band: float = Field(
        default=0.02,
        ge=0,
        le=0.5,
        description="A crossing counts once the foot is this far (normalised) past the line, from where it was "
        "last this far on the other side: a person standing on the line is not counted at every wobble of the box",
    )
    track_grace_s: float = Field(default=2.0, gt=0, description="A track unseen up to this long keeps its side")


class LoiteringConfig(_Rule):
    type: Literal["loitering"]
    zone: str
    dwell_s: float = Field(default=30.0, gt=0)
    severity: Severity = "Moderate"
    track_grace_s: float = Field(
        default=5.0,
        gt=0,
        description="A track in the zone unseen, or seen just outside it, up to this long keeps its dwell, and a "
        "new track that appears where it was lost takes it over (a broken track, re-identified by position)",
    )
    reid_distance: float = Field(
        default=0.1, gt=0, le=1.5, description="How near (normalised) to a lost track's foot a new track must appear"
    )


class CrowdConfig(_Rule):
    type: Literal["crowd"]
    zone: str | None = Field(default=None, description="Count in this zone; the whole frame when absent")
    levels: list[LevelConfig] = Field(
        default_factory=lambda: [LevelConfig(on_at=10, severity="Moderate", hysteresis=2)], min_length=1
    )
    raise_after_s: float = Field(default=2.0, ge=0)
    clear_after_s: float = Field(default=5.0, ge=0)
    hold_s: float = Field(
        default=1.0,
        ge=0,
        description="A person counted stays counted while the detector misses them up to this long: "
        "without it, one missed person in one frame restarts raise_after_s, more often the higher the frame rate",
    )

    @model_validator(mode="after")
    def _countable(self) -> CrowdConfig:
        for level in self.levels:
            if level.on_at < 1:
                raise ValueError(f"a level's on_at is {level.on_at:g}: a crowd starts at 1, or an empty view raises")
            if level.on_at - level.hysteresis <= 0:
                raise ValueError(
                    f"the level at {level.on_at:g} with hysteresis {level.hysteresis:g} would never end, "
                    "as even an empty view stays within it: keep hysteresis below on_at"
                )
        return self


RuleConfig = Annotated[
    IntrusionConfig | LineCrossConfig | LoiteringConfig | CrowdConfig | UnattendedObjectConfig,
    Field(discriminator="type"),
]


class SceneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zones: list[Zone] = Field(default_factory=list)
    lines: list[Line] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> SceneConfig:
        zones = {z.name for z in self.zones}
        lines = {ln.name for ln in self.lines}
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        for rule in self.rules:
            zone = getattr(rule, "zone", None)
            if zone is not None and zone not in zones:
                raise ValueError(f"rule {rule.name!r}: no zone {zone!r} (zones: {sorted(zones)})")
            line = getattr(rule, "line", None)
            if line is not None and line not in lines:
                raise ValueError(f"rule {rule.name!r}: no line {line!r} (lines: {sorted(lines)})")
        return self

    def blind_rules(self, labels: Sequence[str]) -> list[str]:
        """The rules that a model with these labels could never fire, each with the classes it watches:
        a rule matches tracks by label, so one whose classes (an unattended-object rule: its objects,
        or their owners) are none of the labels sees nothing, and says nothing."""
        known = set(labels)
        blind = []
        for rule in self.rules:
            watched = [("", rule.classes)]
            if isinstance(rule, UnattendedObjectConfig):
                watched.append(("owners: ", rule.owner_classes))
            for what, classes in watched:
                if not known.intersection(classes):
                    blind.append(f"{rule.name} ({what}{', '.join(classes)})")
        return blind


def detection_of(
    tracks: Sequence[Track], label: str, camera: str, rule: str, direction: str | None = None
) -> Detection:
    """The wire form of what a rule saw (cloud_sync.messages.Detection)."""
    listed = sorted(tracks, key=lambda t: t.track_id)[:MAX_LISTED]
    return Detection(
        label=label,
        count=len(tracks),
        track_ids=[t.track_id for t in listed],
        boxes=[Box(x1=t.box[0], y1=t.box[1], x2=t.box[2], y2=t.box[3]) for t in listed],
        camera=camera,
        rule=rule,
        direction=direction,
    )


class _Scene:
    """What every rule shares: the camera, the book and the model of the moment."""

    def __init__(self, camera: str, book: IncidentBook) -> None:
        self.camera = camera
        self.book = book
        self.model: ModelRef | None = None

    def key(self, kind: str, rule: str) -> str:
        return f"{kind}:{self.camera}:{rule}"


class Intrusion:
    def __init__(self, config: IntrusionConfig, zone: Zone, scene: _Scene) -> None:
        self.config, self.zone, self.scene = config, zone, scene
        self.key = scene.key("intrusion", config.name)

    def update(self, tracks: Sequence[Track], now: float, local_time: time | None) -> None:
        cfg = self.config
        armed = cfg.window is None or (local_time is not None and cfg.window.contains(local_time))
        inside = [t for t in tracks if t.label in cfg.classes and self.zone.contains(t.foot)] if armed else []
        if len(inside) >= cfg.min_count:
            label = inside[0].label
            content = Content(
                title=f"{len(inside)} × {label} in restricted zone {self.zone.name}",
                zone=self.zone.name,
                detection=detection_of(inside, label, self.scene.camera, cfg.name),
                model=self.scene.model,
            )
            self.scene.book.raise_(self.key, "intrusion", cfg.severity, now, content)
        elif self.scene.book.is_open(self.key):
            self.scene.book.clear(self.key, now, detail=f"zone {self.zone.name} clear")


class Loitering:
    """Dwell per track inside the zone. Detections miss and tracks break, the person
    stays: a track unseen for up to ``track_grace_s`` keeps its dwell, and a new track
    that appears in the zone within ``reid_distance`` of where a lost one was last seen
    is the same person re-identified and takes the lost track's dwell over. A track
    seen outside the zone for longer than ``track_grace_s`` loses its dwell: a person
    standing at the zone's edge, whose foot wobbles across it, keeps theirs."""

    def __init__(self, config: LoiteringConfig, zone: Zone, scene: _Scene) -> None:
        self.config, self.zone, self.scene = config, zone, scene
        self.key = scene.key("loitering", config.name)
        self._entered: dict[int, float] = {}
        self._last_seen: dict[int, float] = {}
        self._last_foot: dict[int, tuple[float, float]] = {}
        self._outside_since: dict[int, float] = {}

    def _lost_near(self, foot: tuple[float, float], present: set[int]) -> int | None:
        """The lost track in the zone, last seen nearest to ``foot`` within ``reid_distance``."""
        near = [
            (math.dist(foot, self._last_foot[track_id]), track_id)
            for track_id in self._entered
            if track_id not in present and track_id in self._last_foot
        ]
        near = [n for n in near if n[0] <= self.config.reid_distance]
        return min(near)[1] if near else None

    def update(self, tracks: Sequence[Track], now: float, local_time: time | None) -> None:
        cfg = self.config
        mine = [t for t in tracks if t.label in cfg.classes]
        present = {t.track_id for t in mine}
        dwelling: list[Track] = []
        for t in mine:
            self._last_seen[t.track_id] = now
            if self.zone.contains(t.foot):
                self._outside_since.pop(t.track_id, None)
                if t.track_id not in self._entered:
                    lost = self._lost_near(t.foot, present)
                    taken = self._forget(lost) if lost is not None else None
                    self._entered[t.track_id] = taken if taken is not None else now
                self._last_foot[t.track_id] = t.foot
                if now - self._entered[t.track_id] >= cfg.dwell_s:
                    dwelling.append(t)
            elif t.track_id in self._entered:
                left = self._outside_since.setdefault(t.track_id, now)
                if now - left > cfg.track_grace_s:
                    self._forget(t.track_id)
        for track_id, seen in list(self._last_seen.items()):
            if now - seen > cfg.track_grace_s:
                self._forget(track_id)
        if not dwelling and any(now - entered >= cfg.dwell_s for entered in self._entered.values()):
            return  # one dwelling is unseen or just outside, within their grace: the incident holds
        if dwelling:
            longest = max(now - self._entered[t.track_id] for t in dwelling)
            content = Content(
                title=f"{len(dwelling)} × {dwelling[0].label} loitering in {self.zone.name}",
                zone=self.zone.name,
                measurements=(Measurement(quantity="dwell", value=round(longest, 1), unit="s"),),
                detection=detection_of(dwelling, dwelling[0].label, self.scene.camera, cfg.name),
                model=self.scene.model,
            )
            self.scene.book.raise_(self.key, "loitering", cfg.severity, now, content)
        elif self.scene.book.is_open(self.key):
            self.scene.book.clear(self.key, now, detail=f"no one dwelling in {self.zone.name}")

    def _forget(self, track_id: int) -> float | None:
        """Drop a track; returns when it entered the zone, if it was in it."""
        self._last_seen.pop(track_id, None)
        self._last_foot.pop(track_id, None)
        self._outside_since.pop(track_id, None)
        return self._entered.pop(track_id, None)


class LineCrossing:
    """Counts crossings of the foot point over the tripwire, by direction. A track's side
    is where its foot was last ``dead_band`` or more from the line; a crossing is a change
    of that side whose move passes through the segment itself."""

    def __init__(self, config: LineCrossConfig, line: Line, scene: _Scene) -> None:
        self.config, self.line, self.scene = config, line, scene
        self.key = scene.key("line_cross", config.name)
        self.counts: dict[str, int] = {"a_to_b": 0, "b_to_a": 0}
        self._side: dict[int, tuple[tuple[float, float], float]] = {}  # by track: the foot on its side, last seen
        self._last_crossing: float | None = None
        self._crossers: list[Track] = []
        self._direction: str | None = None

    def update(self, tracks: Sequence[Track], now: float, local_time: time | None) -> None:
        cfg = self.config
        for t in tracks:
            if t.label not in cfg.classes:
                continue
            foot, sided = t.foot, self._side.get(t.track_id)
            past = self.line.distance(foot)
            if past == 0 or abs(past) < cfg.dead_band:  # on the line, or wobbling at it: wait until it is past
                if sided is not None:
                    self._side[t.track_id] = (sided[0], now)
                continue
            self._side[t.track_id] = (foot, now)
            direction = self.line.crossing(sided[0], foot) if sided is not None else None
            if direction is not None and direction in cfg.directions:
                self.counts[direction] += 1
                self._last_crossing = now
                self._crossers = [t]
                self._direction = direction
        self._side = {k: v for k, v in self._side.items() if now - v[1] <= cfg.track_grace_s}
        if self._last_crossing is not None and now - self._last_crossing <= cfg.quiet_s:
            assert self._direction is not None
            label = self._crossers[0].label
            content = Content(
                title=f"{label} crossed {self.line.name} ({self._direction.replace('_', ' ')})",
                measurements=tuple(
                    Measurement(quantity=f"crossings_{d}", value=n, unit="count") for d, n in self.counts.items()
                ),
                detection=detection_of(self._crossers, label, self.scene.camera, cfg.name, self._direction),
                model=self.scene.model,
            )
            self.scene.book.raise_(self.key, "line_cross", cfg.severity, now, content)
        elif self.scene.book.is_open(self.key):
            self.scene.book.clear(self.key, now, detail=f"no crossing of {self.line.name} for {cfg.quiet_s:g} s")


class Crowd:
    """People counted in a zone through a hysteresis threshold (edge.alerts.ThresholdRule).
    A person counted stays counted for ``hold_s`` after their last sighting in the zone,
    unless seen outside it since: a detector misses a few people of a crowd in any frame."""

    def __init__(self, config: CrowdConfig, zone: Zone | None, scene: _Scene) -> None:
        self.config, self.zone, self.scene = config, zone, scene
        self._counted: dict[int, tuple[Track, float]] = {}  # by track id: the last sighting in the zone, and when
        self.alarm = ValueAlarm(
            key=scene.key("crowd", config.name),
            kind="crowd",
            rule=ThresholdRule(
                [Level(lv.on_at, lv.severity, lv.hysteresis) for lv in config.levels],
                raise_after_s=config.raise_after_s,
                clear_after_s=config.clear_after_s,
            ),
            book=scene.book,
            quantity="people",
            unit="count",
        )

    def update(self, tracks: Sequence[Track], now: float, local_time: time | None) -> None:
        cfg = self.config
        for t in tracks:
            if t.label not in cfg.classes:
                continue
            if self.zone is None or self.zone.contains(t.foot):
                self._counted[t.track_id] = (t, now)
            else:
                self._counted.pop(t.track_id, None)
        for track_id, (_, seen) in list(self._counted.items()):
            if now - seen > cfg.hold_s:
                del self._counted[track_id]
        counted = [t for t, _ in self._counted.values()]

        def content() -> Content:  # built only while the crowd is raised
            where = self.zone.name if self.zone else "view"
            label = counted[0].label if counted else cfg.classes[0]
            return Content(
                title=f"{len(counted)} × {label} in {where}",
                zone=self.zone.name if self.zone else None,
                detection=detection_of(counted, label, self.scene.camera, cfg.name),
                model=self.scene.model,
            )

        self.alarm.observe(float(len(counted)), now, content)


class SceneAnalytics:
    """Every rule of one camera; ``update`` once per processed frame."""

    def __init__(self, camera: str, config: SceneConfig, book: IncidentBook) -> None:
        self.scene = _Scene(camera, book)
        zones = {z.name: z for z in config.zones}
        lines = {ln.name: ln for ln in config.lines}
        self.rules: list[Intrusion | Loitering | LineCrossing | Crowd | UnattendedObjects] = []
        for rule in config.rules:
            if isinstance(rule, IntrusionConfig):
                self.rules.append(Intrusion(rule, zones[rule.zone], self.scene))
            elif isinstance(rule, LoiteringConfig):
                self.rules.append(Loitering(rule, zones[rule.zone], self.scene))
            elif isinstance(rule, LineCrossConfig):
                self.rules.append(LineCrossing(rule, lines[rule.line], self.scene))
            elif isinstance(rule, CrowdConfig):
                self.rules.append(Crowd(rule, zones[rule.zone] if rule.zone else None, self.scene))
            else:
                self.rules.append(UnattendedObjects(rule, self.scene.camera, book, detection_of))

    @property
    def model(self) -> ModelRef | None:
        return self.scene.model

    @model.setter
    def model(self, ref: ModelRef | None) -> None:
        self.scene.model = ref

    def update(self, tracks: Sequence[Track], now: float, local_time: time | None = None) -> None:
        """Every rule sees the frame, whatever another rule raised: the first error is raised
        again once all have run, for the pipeline to count and report."""
        failed: Exception | None = None
        for rule in self.rules:
            try:
                if isinstance(rule, UnattendedObjects):
                    rule.update(tracks, now, self.scene.model)
                else:
                    rule.update(tracks, now, local_time)
            except Exception as exc:  # one broken rule must not silence the camera's others
                failed = failed or exc
        if failed is not None:
            raise failed
