"""Carbon-monoxide alarm by time-weighted exposure, after EN 50291-1 and UL 2034.

Both standards specify when a CO alarm must sound for a constant concentration:

- en50291 (EN 50291-1:2018, alarm-time table): 50 ppm in 60–90 min, 100 ppm in
  10–40 min, 300 ppm within 3 min; no alarm at 30 ppm for 120 min.
- ul2034 (UL 2034, alarm points): 70 ppm in 60–240 min, 150 ppm in
  10–50 min, 400 ppm in 4–15 min; no alarm at 30 ppm for 30 days.

Those windows describe how carboxyhaemoglobin builds up in the blood. We model it
the same way: an exposure index E follows a first-order uptake,

    dE/dt = ((c / c_ref)^n − E) / τ,      alarm when E ≥ 1,

integrated exactly between readings (each reading held until the next). At a
constant c the alarm time is t = −τ·ln(1 − (c_ref/c)^n), never for c ≤ c_ref.
With the constants below that gives 75 / 14.5 / 1.8 min for EN 50291 (30 ppm never)
and 111 / 26 / 5.4 min for UL 2034 (30 ppm never); tests/unit/test_sensing_co.py
checks every row of the table with an injected clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from s4edge.cloud_sync.messages import Measurement, Severity
from s4edge.edge.alerts import Content, IncidentBook, Level, ThresholdRule

ProfileName = Literal["en50291", "ul2034"]


@dataclass(frozen=True)
class COProfile:
    name: ProfileName
    standard: str
    reference_ppm: float  # c_ref: below it, no alarm however long the exposure
    exponent: float  # n
    time_constant_s: float  # τ
    prealarm_index: float  # a warning before the alarm (Moderate)
    extreme_ppm: float  # at and above, while in alarm: Extreme


PROFILES: dict[ProfileName, COProfile] = {
    "en50291": COProfile("en50291", "EN 50291-1:2018", 40.0, 1.8, 68 * 60.0, 0.7, 300.0),
    "ul2034": COProfile("ul2034", "UL 2034", 50.0, 1.5, 120 * 60.0, 0.7, 400.0),
}


class COExposure:
    """The exposure integrator alone (no alarm state)."""

    def __init__(self, profile: COProfile) -> None:
        self.profile = profile
        self.index = 0.0
        self._last: tuple[float, float] | None = None  # (time, ppm)

    def observe(self, ppm: float, now: float) -> float:
        if self._last is not None:
            then, held = self._last
            dt = max(0.0, now - then)
            target = (max(held, 0.0) / self.profile.reference_ppm) ** self.profile.exponent
            self.index = target + (self.index - target) * math.exp(-dt / self.profile.time_constant_s)
        self._last = (now, ppm)
        return self.index


class COAlarm:
    """Exposure index through a Schmitt trigger into one incident; the standard's name
    travels in the alert's detail."""

    def __init__(self, key: str, profile: COProfile, book: IncidentBook, sensor: str) -> None:
        self.key = key
        self.profile = profile
        self.book = book
        self.sensor = sensor
        self.exposure = COExposure(profile)
        self.rule = ThresholdRule(
            [Level(profile.prealarm_index, "Moderate", 0.1), Level(1.0, "Severe", 0.3)], direction="above"
        )

    def observe(self, ppm: float, now: float) -> Severity | None:
        index = self.exposure.observe(ppm, now)
        severity = self.rule.observe(index, now)
        if severity == "Severe" and ppm >= self.profile.extreme_ppm:
            severity = "Extreme"
        measurements = (
            Measurement(quantity="co", value=round(ppm, 1), unit="ppm", sensor=self.sensor),
            Measurement(quantity="co_exposure_index", value=round(index, 3), unit="1", sensor=self.sensor),
        )
        if severity is not None:
            label = "CO alarm" if severity in ("Severe", "Extreme") else "CO pre-alarm"
            self.book.raise_(
                self.key,
                "co",
                severity,
                now,
                Content(
                    title=f"{label}: {ppm:.0f} ppm",
                    detail=f"exposure index {index:.2f} ({self.profile.standard} profile {self.profile.name})",
                    measurements=measurements,
                ),
            )
        elif self.book.is_open(self.key):
            self.book.clear(self.key, now, detail=f"CO exposure index back to {index:.2f}")
        return severity
