"""Zones, lines and time windows of a camera's scene, in coordinates normalised to the
frame (0..1, x to the right, y down), so a config survives a change of resolution.
"""

from __future__ import annotations

import math
from datetime import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Point = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]


class Zone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    polygon: list[Point] = Field(min_length=3, description="Corners in order, normalised (x, y)")

    @field_validator("polygon")
    @classmethod
    def _has_area(cls, polygon: list[Point]) -> list[Point]:
        # shoelace formula
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True))
        if abs(area) < 1e-6:
            raise ValueError("the polygon has no area: give at least three corners not on one line")
        return polygon

    def contains(self, point: tuple[float, float]) -> bool:
        """Even-odd ray casting; a handful of corners, so plain Python is fastest."""
        # a foot on the frame's edge (y = 1.0) belongs to a zone drawn to that edge
        x, y = (min(max(v, 1e-9), 1.0 - 1e-9) for v in point)
        inside = False
        for (x0, y0), (x1, y1) in zip(self.polygon, [*self.polygon[1:], self.polygon[0]], strict=True):
            if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
                inside = not inside
        return inside


class Line(BaseModel):
    """A tripwire from ``a`` to ``b``. Side A is where cross(b − a, p − a) < 0, side B
    where it is > 0: for a line drawn left to right, side A is above it (y grows down)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    a: Point
    b: Point

    @field_validator("b")
    @classmethod
    def _distinct(cls, b: Point, info: object) -> Point:
        a = getattr(info, "data", {}).get("a")
        if a is not None and tuple(a) == tuple(b):
            raise ValueError("a line needs two distinct points")
        return b

    def side(self, p: tuple[float, float]) -> float:
        (ax, ay), (bx, by) = self.a, self.b
        return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)

    def distance(self, p: tuple[float, float]) -> float:
        """Signed distance from the line through ``a`` and ``b``: negative on side A."""
        return self.side(p) / math.dist(self.a, self.b)

    def crossing(self, p0: tuple[float, float], p1: tuple[float, float]) -> str | None:
        """``"a_to_b"`` or ``"b_to_a"`` when the move p0 → p1 crosses the segment, else None."""
        s0, s1 = self.side(p0), self.side(p1)
        if s0 * s1 >= 0:
            return None
        # the move must also straddle the line through p0, p1: the segment itself is crossed
        mx, my = p1[0] - p0[0], p1[1] - p0[1]
        ta = mx * (self.a[1] - p0[1]) - my * (self.a[0] - p0[0])
        tb = mx * (self.b[1] - p0[1]) - my * (self.b[0] - p0[0])
        if ta * tb > 0:
            return None
        return "a_to_b" if s1 > 0 else "b_to_a"


class TimeWindow(BaseModel):
    """Local time of day, ``start`` inclusive to ``end`` exclusive; wraps past midnight
    when ``end`` is earlier than ``start`` (22:00–06:00)."""

    model_config = ConfigDict(extra="forbid")

    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time_of_day(cls, value: object) -> object:
        # pydantic reads a number as seconds since midnight, UTC: a window of 1320 s was
        # 00:22 UTC, and comparing it with the node's local time failed on every frame
        if isinstance(value, int | float):
            raise ValueError(f"{value!r} is a number, not a time of day: write it as text, e.g. '22:00'")
        return value

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError(
                f"{value.isoformat()} names a time zone; give the node's local time without one, e.g. "
                f"'{value.replace(tzinfo=None).isoformat(timespec='minutes')}'"
            )
        return value

    @field_validator("end")
    @classmethod
    def _not_empty(cls, end: time, info: ValidationInfo) -> time:
        # start inclusive, end exclusive: equal times would arm the rule at no moment at all
        if info.data.get("start") == end:
            raise ValueError(
                f"equals start ({end.isoformat()}), which makes an empty window that never arms the rule; "
                "give a different end, or drop the window to arm the rule all day"
            )
        return end

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end
