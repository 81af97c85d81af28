"""Alarm rules for flammable gas (% LEL), detector contacts (smoke, flame) and heat
(rate of rise and fixed temperature). CO has its own module (co.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from s4edge.cloud_sync.messages import Measurement, Severity
from s4edge.edge.alerts import Content, IncidentBook, Level, ThresholdRule, ValueAlarm

# Lower explosive limits in %vol in air (NIOSH Pocket Guide to Chemical Hazards).
# IEC 60079-20-1 lists lower values for some (methane 4.4, propane 1.7): set
# ``lel_percent_vol`` in the config where a site follows it.
LEL_PERCENT_VOL: dict[str, float] = {"methane": 5.0, "propane": 2.1, "lpg": 2.1, "butane": 1.6, "hydrogen": 4.0}

# EN 60079-29-1 style two-stage alarm on % LEL: warning (10–20 %) and alarm (40 %)
DEFAULT_GAS_LEVELS = (Level(10.0, "Moderate", 2.0), Level(40.0, "Severe", 5.0))


def lel_percent(ppm: float, lel_percent_vol: float) -> float:
    """ppm → % of the lower explosive limit (1 %vol = 10,000 ppm)."""
    return ppm / (lel_percent_vol * 10_000.0) * 100.0


def gas_alarm(key: str, book: IncidentBook, levels: tuple[Level, ...] = DEFAULT_GAS_LEVELS) -> ValueAlarm:
    return ValueAlarm(key=key, kind="gas", rule=ThresholdRule(levels), book=book, quantity="flammable_gas", unit="%LEL")


def detector_alarm(key: str, kind: str, book: IncidentBook, severity: Severity, debounce_s: float) -> ValueAlarm:
    """A dry contact (1 = alarm) debounced both ways: a relay must hold for ``debounce_s``."""
    rule = ThresholdRule([Level(0.5, severity)], raise_after_s=debounce_s, clear_after_s=debounce_s)
    return ValueAlarm(key=key, kind=kind, rule=rule, book=book, quantity=kind, unit="state")


@dataclass(frozen=True)
class HeatLimits:
    """EN 54-5 class A1R heat detection: a rate-of-rise element plus a fixed
    temperature. Class A1 detectors must respond statically between 54 and 65 °C
    (EN 54-5 table 1); the rate-of-rise threshold defaults to 8 °C/min, the usual
    A1R setting, over a 60 s regression window so sensor noise does not trip it."""

    rate_c_per_min: float = 8.0
    static_c: float = 58.0
    window_s: float = 60.0


class HeatAlarm:
    def __init__(self, key: str, book: IncidentBook, sensor: str, limits: HeatLimits = HeatLimits()) -> None:
        self.key = key
        self.book = book
        self.sensor = sensor
        self.limits = limits
        self._window: deque[tuple[float, float]] = deque()
        self.rate = ThresholdRule([Level(limits.rate_c_per_min, "Severe", 2.0)])
        self.static = ThresholdRule([Level(limits.static_c, "Severe", 3.0)])

    def rate_c_per_min(self) -> float | None:
        """Least-squares slope over the window; None until half a window is seen."""
        if len(self._window) < 3 or self._window[-1][0] - self._window[0][0] < self.limits.window_s / 2:
            return None
        ts = [t for t, _ in self._window]
        vs = [v for _, v in self._window]
        mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
        den = sum((t - mt) ** 2 for t in ts)
        return 60.0 * sum((t - mt) * (v - mv) for t, v in self._window) / den if den else None

    def observe(self, temperature_c: float, now: float) -> Severity | None:
        self._window.append((now, temperature_c))
        while now - self._window[0][0] > self.limits.window_s:
            self._window.popleft()
        rate = self.rate_c_per_min()
        by_rate = self.rate.observe(rate, now) if rate is not None else self.rate.active_severity()
        by_static = self.static.observe(temperature_c, now)
        severity = by_rate or by_static
        if severity is not None:
            cause = "fixed temperature" if by_static else "rate of rise"
            readings = [Measurement(quantity="temperature", value=temperature_c, unit="Cel", sensor=self.sensor)]
            if rate is not None:
                readings.append(Measurement(quantity="temperature_rate", value=round(rate, 2), unit="Cel/min"))
            self.book.raise_(
                self.key,
                "temperature",
                severity,
                now,
                Content(title=f"heat alarm ({cause}, EN 54-5 A1R)", measurements=tuple(readings)),
            )
        elif self.book.is_open(self.key):
            self.book.clear(self.key, now, detail=f"temperature {temperature_c:.1f} °C, rising {rate or 0:.1f} °C/min")
        return severity
