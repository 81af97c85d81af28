"""Sensirion SGP30 metal-oxide TVOC / CO₂eq sensor (Sensirion SGP30 datasheet,
"Operation and Communication").

``init_air_quality`` starts the on-chip baseline algorithm; ``measure_air_quality``
must then be called once a second. During the first 15 s the chip answers the fixed
values 400 ppm / 0 ppb (datasheet, "Air Quality Signals"), which :attr:`SGP30Reading.warming_up` reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from s4edge.drivers.errors import WrongDevice
from s4edge.drivers.i2c import I2CBus
from s4edge.drivers.sensirion import SensirionLink

DEFAULT_ADDRESS: Final = 0x58  # datasheet, "I2C Communication"

# Command codes and maximum measurement durations (datasheet, measurement command table)
CMD_INIT_AIR_QUALITY: Final = 0x2003
CMD_MEASURE_AIR_QUALITY: Final = 0x2008
CMD_GET_FEATURE_SET: Final = 0x202F
CMD_MEASURE_TEST: Final = 0x2032
CMD_SET_ABSOLUTE_HUMIDITY: Final = 0x2061
CMD_GET_SERIAL_ID: Final = 0x3682

DELAY_INIT_S: Final = 0.010
DELAY_MEASURE_S: Final = 0.012
DELAY_FEATURE_SET_S: Final = 0.010
DELAY_MEASURE_TEST_S: Final = 0.220
DELAY_SET_HUMIDITY_S: Final = 0.010
DELAY_SERIAL_S: Final = 0.0005

MEASURE_TEST_PASSED: Final = 0xD400  # datasheet, measure_test
PRODUCT_TYPE_SGP30: Final = 0x0  # feature set bits 15:12 (datasheet, get_feature_set)
# datasheet, init_air_quality: for the first 15 s the chip answers a fixed 400 ppm / 0 ppb
WARMUP_S: Final = 15.0
WARMUP_CO2EQ_PPM: Final = 400
WARMUP_TVOC_PPB: Final = 0


@dataclass(frozen=True)
class SGP30Reading:
    co2eq_ppm: float
    tvoc_ppb: float

    @property
    def warming_up(self) -> bool:
        return self.co2eq_ppm == WARMUP_CO2EQ_PPM and self.tvoc_ppb == WARMUP_TVOC_PPB


class SGP30:
    def __init__(
        self, bus: I2CBus, address: int = DEFAULT_ADDRESS, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._link = SensirionLink(bus, address, sleep)

    def begin(self) -> None:
        """Check the product type and start the air-quality algorithm."""
        (features,) = self._link.command(CMD_GET_FEATURE_SET, DELAY_FEATURE_SET_S, read_words=1)
        if features >> 12 != PRODUCT_TYPE_SGP30:
            raise WrongDevice(f"feature set 0x{features:04x} is not an SGP30")
        self._link.command(CMD_INIT_AIR_QUALITY, DELAY_INIT_S)

    def self_test(self) -> bool:
        (result,) = self._link.command(CMD_MEASURE_TEST, DELAY_MEASURE_TEST_S, read_words=1)
        return result == MEASURE_TEST_PASSED

    def serial_id(self) -> int:
        high, mid, low = self._link.command(CMD_GET_SERIAL_ID, DELAY_SERIAL_S, read_words=3)
        return high << 32 | mid << 16 | low

    def set_absolute_humidity(self, grams_per_m3: float) -> None:
        # 8.8 fixed point, g/m³ (datasheet, set_absolute_humidity); 0 turns the compensation off
        value = max(0, min(0xFFFF, round(grams_per_m3 * 256)))
        self._link.command(CMD_SET_ABSOLUTE_HUMIDITY, DELAY_SET_HUMIDITY_S, args=[value])

    def measure_air_quality(self) -> SGP30Reading:
        co2eq, tvoc = self._link.command(CMD_MEASURE_AIR_QUALITY, DELAY_MEASURE_S, read_words=2)
        return SGP30Reading(co2eq_ppm=float(co2eq), tvoc_ppb=float(tvoc))
