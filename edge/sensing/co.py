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

Only the alarm point (E ≥ 1) is the standard's alarm. The pre-alarm before it (E ≥ 0.7:
at a constant 50 ppm after 43 min, inside EN 50291-1's 60-minute "no alarm" bound) is a
local warning: severity Minor and a ``pre_alarm`` measurement, which NG112 never forwards
(cloud_sync/ng112/policy.py). An incident that reached the alarm never steps back to a
pre-alarm: alarm and pre-alarm release together, below E = 0.6, and the incident ends.

The index decides when to alarm, not how long: it decays with τ, so after 2 h at 300 ppm
it stays above the alarm point for hours of clean air. The incident therefore also ends
once the air has stayed clean (below c_ref, where the index can never reach the alarm
point) for CLEAN_AIR_HOLD_S. Until the CO comes back to c_ref or above, the residual
index raises nothing; when it does, the index decides again at once (a new incident, an
alarm at the first reading while E ≥ 1).

In a simulation the exposure may run on a compressed scenario clock (``time_scale``,
scenario seconds per node second); every alert then says so ("scenario clock ×60").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from s4edge.cloud_sync.messages import PRE_ALARM, Measurement, Severity
from s4edge.edge.alerts import Content, IncidentBook, Level, ThresholdRule

ProfileName = Literal["en50291", "ul2034"]


@dataclass(frozen=True)
class COProfile:
    name: ProfileName
    standard: str
    reference_ppm: float  # c_ref: below it, no alarm however long the exposure
    exponent: float  # n
    time_constant_s: float  # τ
    prealarm_index: float  # a local warning before the alarm (PRE_ALARM_SEVERITY, never forwarded)
    release_index: float  # below it, alarm and pre-alarm end together
    extreme_ppm: float  # at and above, while in alarm: Extreme


PROFILES: dict[ProfileName, COProfile] = {
    "en50291": COProfile("en50291", "EN 50291-1:2018", 40.0, 1.8, 68 * 60.0, 0.7, 0.6, 300.0),
    "ul2034": COProfile("ul2034", "UL 2034", 50.0, 1.5, 120 * 60.0, 0.7, 0.6, 400.0),
}

ALARM_INDEX = 1.0  # the standard's alarm point, where the alarm-time tables are met
# EN 50291-1:2018 alarm-time table: no alarm at 50 ppm before 60 min. The pre-alarm comes
# earlier (43 min at 50 ppm), so it must not read as an alarm anywhere: Minor, marked
# PRE_ALARM, kept off the PSAP (UL 2034's 70 ppm / 60 min bound likewise).
PRE_ALARM_SEVERITY: Severity = "Minor"

# The alarm follows the air once the CO is gone. UL 2034 (1998 revision) makes 6 min its
# window for judging the air again: a silenced alarm sounds again within 6 min if the CO
# stays above its lowest alarm point (70 ppm). EN 50291-1-certified alarms state the same
# figure in their manuals: the alarm ends by itself within 6 minutes once the CO is gone.
CLEAN_AIR_HOLD_S = 6 * 60.0
# After a clean-air end the leftover index stays above the alarm point for hours, so one
# noisy reading at c_ref would open a new Severe incident (and a new PSAP call) at once.
# The index decides afresh once the air drives it up again ((c/c_ref)^n above it), or once
# CO has stayed at c_ref or above this long.
CO_BACK_S = 60.0


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


EXTREME_HYSTERESIS = 0.2  # Extreme ends a fifth below extreme_ppm


def exposure_rule(profile: COProfile) -> ThresholdRule:
    return ThresholdRule(
        [
            Level(profile.prealarm_index, PRE_ALARM_SEVERITY, profile.prealarm_index - profile.release_index),
            Level(ALARM_INDEX, "Severe", ALARM_INDEX - profile.release_index),
        ],
        direction="above",
    )


class COAlarm:
    """Exposure index through a Schmitt trigger into one incident; the standard's name
    travels in the alert's detail. ``time_scale`` is the exposure seconds per second of
    ``now``: 1 on a real node, the scenario's speed in a time-compressed simulation."""

    def __init__(
        self, key: str, profile: COProfile, book: IncidentBook, sensor: str, *, time_scale: float = 1.0
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"CO alarm {key}: time_scale must be > 0, not {time_scale}")
        self.key = key
        self.profile = profile
        self.book = book
        self.sensor = sensor
        self.time_scale = time_scale
        self.exposure = COExposure(profile)
        self._extreme = False
        self.rule = exposure_rule(profile)
        self._clean_since: float | None = None  # exposure time the air went below c_ref
        self._back_since: float | None = None  # after a clean-air end: CO at c_ref or above since
        self._clean_end = ""  # the detail of a clean-air end, "" while none holds

    def _basis(self) -> str:
        clock = f"; scenario clock ×{self.time_scale:g}" if self.time_scale != 1.0 else ""
        return f"{self.profile.standard} profile {self.profile.name}{clock}"

    def _track_clean_air(self, ppm: float, index: float, exposure_time: float) -> float | None:
        """Exposure seconds the air has been clean (below c_ref), or None while it is not. CO
        back at c_ref lifts a clean-air end once it drives the index up or has lasted CO_BACK_S."""
        profile = self.profile
        if ppm < profile.reference_ppm:
            self._back_since = None
            if self._clean_since is None:
                self._clean_since = exposure_time
            return exposure_time - self._clean_since
        self._clean_since = None
        if self._clean_end:
            if self._back_since is None:
                self._back_since = exposure_time
            rising = (ppm / profile.reference_ppm) ** profile.exponent > index
            if rising or exposure_time - self._back_since >= CO_BACK_S:
                self._clean_end, self._back_since = "", None
        return None

    def observe(self, ppm: float, now: float) -> Severity | None:
        exposure_time = now * self.time_scale
        index = self.exposure.observe(ppm, exposure_time)
        clean_for = self._track_clean_air(ppm, index, exposure_time)
        if self._clean_end:
            severity = None  # the index left over from the incident raises nothing in clean air
        else:
            severity = self.rule.observe(index, now)
            if severity is not None and clean_for is not None and clean_for >= CLEAN_AIR_HOLD_S:
                self.rule = exposure_rule(self.profile)  # once CO is back, the index decides afresh
                self._clean_end = (
                    f"CO below {self.profile.reference_ppm:g} ppm for {CLEAN_AIR_HOLD_S / 60:g} min: clean air, "
                    f"the alarm ends (exposure index {index:.2f}, decaying; {self._basis()})"
                )
                severity = None
        if severity == "Severe":
            # Extreme from extreme_ppm until the level falls a fifth below it: readings either
            # side of the line (299, 301 ppm) must not send Severe, Extreme, Severe at every poll
            if ppm >= self.profile.extreme_ppm:
                self._extreme = True
            elif ppm < self.profile.extreme_ppm * (1 - EXTREME_HYSTERESIS):
                self._extreme = False
            severity = "Extreme" if self._extreme else severity
        else:
            self._extreme = False
        measurements = (
            Measurement(quantity="co", value=round(ppm, 1), unit="ppm", sensor=self.sensor),
            Measurement(quantity="co_exposure_index", value=round(index, 3), unit="1", sensor=self.sensor),
        )
        if severity == PRE_ALARM_SEVERITY:
            self.book.raise_(
                self.key,
                "co",
                severity,
                now,
                Content(
                    title=f"CO pre-alarm: {ppm:.0f} ppm",
                    detail=f"exposure index {index:.2f}, alarm at {ALARM_INDEX:.2f}; a local warning, "
                    f"not forwarded ({self._basis()})",
                    measurements=(*measurements, Measurement(quantity=PRE_ALARM, value=1.0, unit="1")),
                ),
            )
        elif severity is not None:
            self.book.raise_(
                self.key,
                "co",
                severity,
                now,
                Content(
                    title=f"CO alarm: {ppm:.0f} ppm",
                    detail=f"exposure index {index:.2f}{self._clean_air_note(clean_for)} ({self._basis()})",
                    measurements=measurements,
                ),
            )
        elif self.book.is_open(self.key):  # (an end held by alerts.hold_s keeps its first reason)
            self.book.clear(self.key, now, detail=self._clean_end or f"CO exposure index back to {index:.2f}")
        return severity

    def _clean_air_note(self, clean_for: float | None) -> str:
        if clean_for is None:
            return ""
        return (
            f"; CO below {self.profile.reference_ppm:g} ppm for {clean_for / 60:.0f} min, "
            f"the alarm ends after {CLEAN_AIR_HOLD_S / 60:g}"
        )
