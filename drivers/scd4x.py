"""Sensirion SCD40/SCD41 photoacoustic CO₂ sensor with T/RH (Sensirion SCD4x datasheet,
"Operation and Communication").

Plain I2C commands, every word CRC-checked (drivers.sensirion). Periodic mode yields
a sample every 5 s; :meth:`SCD4x.data_ready` says whether a new one is waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from s4edge.drivers.i2c import I2CBus
from s4edge.drivers.sensirion import SensirionLink

DEFAULT_ADDRESS: Final = 0x62  # datasheet, "I2C Communication"

# Command codes and their maximum execution times (datasheet, command overview table)
CMD_START_PERIODIC: Final = 0x21B1  # no wait needed before the next command
CMD_READ_MEASUREMENT: Final = 0xEC05
CMD_STOP_PERIODIC: Final = 0x3F86
CMD_DATA_READY: Final = 0xE4B8
CMD_SERIAL_NUMBER: Final = 0x3682
CMD_REINIT: Final = 0x3646

DELAY_COMMAND_S: Final = 0.001
DELAY_STOP_PERIODIC_S: Final = 0.5
DELAY_REINIT_S: Final = 0.02
# get_data_ready_status: the least significant 11 bits are 0 when no data is ready (datasheet, get_data_ready_status)
DATA_READY_MASK: Final = 0x07FF


@dataclass(frozen=True)
class SCD4xReading:
    co2_ppm: float
    temperature_c: float
    humidity_rh: float


class SCD4x:
    def __init__(
        self, bus: I2CBus, address: int = DEFAULT_ADDRESS, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._link = SensirionLink(bus, address, sleep)

    def start_periodic_measurement(self) -> None:
        self._link.command(CMD_START_PERIODIC, 0.0)

    def stop_periodic_measurement(self) -> None:
        self._link.command(CMD_STOP_PERIODIC, DELAY_STOP_PERIODIC_S)

    def reinit(self) -> None:
        self._link.command(CMD_REINIT, DELAY_REINIT_S)

    def serial_number(self) -> int:
        high, mid, low = self._link.command(CMD_SERIAL_NUMBER, DELAY_COMMAND_S, read_words=3)
        return high << 32 | mid << 16 | low

    def data_ready(self) -> bool:
        (status,) = self._link.command(CMD_DATA_READY, DELAY_COMMAND_S, read_words=1)
        return bool(status & DATA_READY_MASK)

    def read_measurement(self) -> SCD4xReading:
        co2, t_raw, rh_raw = self._link.command(CMD_READ_MEASUREMENT, DELAY_COMMAND_S, read_words=3)
        # Conversion formulas, datasheet, read_measurement
        return SCD4xReading(
            co2_ppm=float(co2),
            temperature_c=-45.0 + 175.0 * t_raw / 65535.0,
            humidity_rh=100.0 * rh_raw / 65535.0,
        )
