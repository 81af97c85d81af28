"""Sensor health: failed reads, stuck values and impossible values become one
``sensor_fault`` incident per sensor, which ends by itself when the sensor recovers.
Failed reads are retried with exponential backoff (docs/architecture.md, "Bad input").
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from s4edge.cloud_sync.messages import Measurement
from s4edge.edge.alerts import Content, IncidentBook


@dataclass(frozen=True)
class HealthPolicy:
    fault_after: int = 3  # consecutive failed reads before a fault is raised
    stuck_after_s: float = 600.0  # identical raw readings this long: a frozen converter
    backoff_max_s: float = 30.0  # below the IncidentBook's stale time, so a fault stays open


class SensorHealth:
    def __init__(self, sensor: str, book: IncidentBook, policy: HealthPolicy = HealthPolicy()) -> None:
        self.sensor = sensor
        self.book = book
        self.policy = policy
        self.key = f"sensor_fault:{sensor}"
        self.failures = 0
        self.state = "starting"
        self._raw: Hashable = None
        self._raw_since = 0.0

    def delay(self, period_s: float) -> float:
        """Seconds until the next read: the period, doubled per consecutive failure."""
        if not self.failures:
            return period_s
        return float(min(period_s * 2 ** min(self.failures, 16), max(self.policy.backoff_max_s, period_s)))

    def failed(self, now: float, reason: str) -> None:
        self.failures += 1
        self.state = f"error: {reason}"
        if self.failures >= self.policy.fault_after:
            # no count and no clock in the text: a detail that changed at each read made an alert
            # update and a WARNING line every 5 s for as long as the fault lasted (17,000 a day)
            self._fault(now, f"{self.policy.fault_after} or more failed reads in a row: {reason}")

    def out_of_range(self, now: float, reading: Measurement, low: float, high: float) -> None:
        self.failures = 0
        self.state = f"fault: {reading.quantity} out of range"
        self._fault(
            now,
            f"{reading.quantity} {reading.value:g} {reading.unit} outside the physical range {low:g}..{high:g}",
            reading,
        )

    def succeeded(self, now: float, raw: Hashable) -> bool:
        """A good read. Returns False when the raw value has been frozen for too long."""
        self.failures = 0
        if raw != self._raw:
            self._raw, self._raw_since = raw, now
        elif raw is not None and now - self._raw_since >= self.policy.stuck_after_s:
            self.state = "fault: stuck"
            self._fault(now, f"raw reading {raw!r} unchanged for {self.policy.stuck_after_s:g} s or more (stuck)")
            return False
        self.state = "ok"
        if self.book.is_open(self.key):
            self.book.clear(self.key, now, detail=f"{self.sensor} reads normally again")
        return True

    def _fault(self, now: float, detail: str, reading: Measurement | None = None) -> None:
        self.book.raise_(
            self.key,
            "sensor_fault",
            "Minor",
            now,
            Content(
                title=f"sensor {self.sensor} fault",
                detail=detail[:1000],  # an alert's detail holds at most 1024 characters
                measurements=(reading,) if reading else (),
            ),
        )
