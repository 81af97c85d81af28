"""What the heartbeat reports: per-sensor states that sources write, and the board's
own vitals (CPU, memory, SoC temperature)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Linux thermal sysfs ABI: the zone's temperature in millidegrees Celsius.
SOC_THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
MAX_STATES = 64  # Heartbeat.sensors holds at most 64 entries


class Health:
    """Sensor and source states by name; sources write, the heartbeat reads."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            if key in self._states or len(self._states) < MAX_STATES:
                self._states[key[:128]] = str(value)[:128]

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._states)

    def degraded(self) -> list[str]:
        return [key for key, value in self.states().items() if value.startswith(("fault", "failed"))][:32]


def soc_temp_c(zone: Path = SOC_THERMAL_ZONE) -> float | None:
    try:
        return int(zone.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class VitalSigns:
    cpu_percent: float
    mem_mb: float
    soc_temp_c: float | None


class Vitals:
    """CPU and memory of this process, via psutil."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement window

    def read(self) -> VitalSigns:
        return VitalSigns(
            cpu_percent=self._process.cpu_percent(None),
            mem_mb=self._process.memory_info().rss / 1e6,
            soc_temp_c=soc_temp_c(),
        )
