"""Bosch BME280 temperature / humidity / pressure sensor (datasheet BST-BME280-DS002).

Forced mode: each :meth:`BME280.read` starts one measurement, polls the ``measuring``
status bit with a timeout and compensates the raw values with the chip's own trimming
parameters, using the datasheet's double-precision formulas (§8.1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from s4edge.drivers.errors import ConversionTimeout, I2CError, WrongDevice
from s4edge.drivers.i2c import I2CBus

DEFAULT_ADDRESS: Final = 0x77  # SDO to VDDIO; 0x76 with SDO to GND (§6.2)
CHIP_ID: Final = 0x60

# Memory map (datasheet table 18)
REG_CALIB_00: Final = 0x88  # calib00..calib25 at 0x88..0xA1
CALIB_00_LENGTH: Final = 26
REG_CALIB_26: Final = 0xE1  # calib26..calib41 at 0xE1..0xF0 (humidity)
CALIB_26_LENGTH: Final = 7
REG_CHIP_ID: Final = 0xD0
REG_CTRL_HUM: Final = 0xF2
REG_STATUS: Final = 0xF3
REG_CTRL_MEAS: Final = 0xF4
REG_DATA: Final = 0xF7  # press_msb .. hum_lsb, 0xF7..0xFE, read in one burst (§4)
DATA_LENGTH: Final = 8

STATUS_MEASURING: Final = 0x08  # status bit 3 (§5.4.4)
OVERSAMPLING_X1: Final = 0b001  # osrs_x (tables 20, 22, 23)
MODE_FORCED: Final = 0b01  # ctrl_meas mode[1:0] (table 25)
# Max measurement time with x1 oversampling of T, P, H: 1.25 + 2.3·3 + 2·0.575 ms (§9.1)
MEASUREMENT_TIME_S: Final = 0.0093


@dataclass(frozen=True)
class Calibration:
    """Trimming parameters (datasheet table 16)."""

    t1: int
    t2: int
    t3: int
    p1: int
    p2: int
    p3: int
    p4: int
    p5: int
    p6: int
    p7: int
    p8: int
    p9: int
    h1: int
    h2: int
    h3: int
    h4: int
    h5: int
    h6: int

    @classmethod
    def decode(cls, block0: bytes, block1: bytes) -> Calibration:
        def u16(b: bytes, i: int) -> int:
            return b[i] | b[i + 1] << 8

        def s16(b: bytes, i: int) -> int:
            v = u16(b, i)
            return v - 0x10000 if v & 0x8000 else v

        def s12(v: int) -> int:
            return v - 0x1000 if v & 0x800 else v

        e4, e5, e6 = block1[3], block1[4], block1[5]
        h6 = block1[6]
        return cls(
            t1=u16(block0, 0), t2=s16(block0, 2), t3=s16(block0, 4),
            p1=u16(block0, 6), p2=s16(block0, 8), p3=s16(block0, 10), p4=s16(block0, 12),
            p5=s16(block0, 14), p6=s16(block0, 16), p7=s16(block0, 18), p8=s16(block0, 20),
            p9=s16(block0, 22),
            h1=block0[25],
            h2=s16(block1, 0),
            h3=block1[2],
            # dig_H4 = 0xE4[11:4] | 0xE5[3:0]; dig_H5 = 0xE6[11:4] | 0xE5[7:4] (table 16)
            h4=s12(e4 << 4 | e5 & 0x0F),
            h5=s12(e6 << 4 | e5 >> 4),
            h6=h6 - 0x100 if h6 & 0x80 else h6,
        )  # fmt: skip


@dataclass(frozen=True)
class BME280Reading:
    temperature_c: float
    humidity_rh: float
    pressure_pa: float


def compensate(cal: Calibration, adc_t: int, adc_p: int, adc_h: int) -> BME280Reading:
    """Datasheet §8.1, the floating-point compensation formulas."""
    var1 = (adc_t / 16384.0 - cal.t1 / 1024.0) * cal.t2
    var2 = (adc_t / 131072.0 - cal.t1 / 8192.0) ** 2 * cal.t3
    t_fine = var1 + var2
    temperature = t_fine / 5120.0

    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.p6 / 32768.0
    var2 = var2 + var1 * cal.p5 * 2.0
    var2 = var2 / 4.0 + cal.p4 * 65536.0
    var1 = (cal.p3 * var1 * var1 / 524288.0 + cal.p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.p1
    if var1 == 0.0:
        pressure = 0.0  # avoids a division by zero (§8.1)
    else:
        p = 1048576.0 - adc_p
        p = (p - var2 / 4096.0) * 6250.0 / var1
        var1 = cal.p9 * p * p / 2147483648.0
        var2 = p * cal.p8 / 32768.0
        pressure = p + (var1 + var2 + cal.p7) / 16.0

    h = t_fine - 76800.0
    h = (adc_h - (cal.h4 * 64.0 + cal.h5 / 16384.0 * h)) * (
        cal.h2 / 65536.0 * (1.0 + cal.h6 / 67108864.0 * h * (1.0 + cal.h3 / 67108864.0 * h))
    )
    h = h * (1.0 - cal.h1 * h / 524288.0)
    return BME280Reading(temperature, min(100.0, max(0.0, h)), pressure)


class BME280:
    def __init__(
        self,
        bus: I2CBus,
        address: int = DEFAULT_ADDRESS,
        *,
        timeout_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.address = address
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._clock = clock
        self._calibration: Calibration | None = None

    def begin(self) -> Calibration:
        """Check the chip id and read the trimming parameters."""
        chip = self._read_register(REG_CHIP_ID, 1)[0]
        if chip != CHIP_ID:
            raise WrongDevice(f"0x{self.address:02x}: chip id 0x{chip:02x}, a BME280 says 0x{CHIP_ID:02x}")
        self._calibration = Calibration.decode(
            self._read_register(REG_CALIB_00, CALIB_00_LENGTH), self._read_register(REG_CALIB_26, CALIB_26_LENGTH)
        )
        return self._calibration

    def read(self) -> BME280Reading:
        cal = self._calibration or self.begin()
        # ctrl_hum takes effect only after a write to ctrl_meas (§5.4.3)
        self._write_register(REG_CTRL_HUM, OVERSAMPLING_X1)
        self._write_register(REG_CTRL_MEAS, OVERSAMPLING_X1 << 5 | OVERSAMPLING_X1 << 2 | MODE_FORCED)
        self._sleep(MEASUREMENT_TIME_S)
        deadline = self._clock() + self.timeout_s
        while self._read_register(REG_STATUS, 1)[0] & STATUS_MEASURING:
            if self._clock() > deadline:
                raise ConversionTimeout(f"BME280 0x{self.address:02x}: still measuring after {self.timeout_s} s")
            self._sleep(MEASUREMENT_TIME_S / 10)
        d = self._read_register(REG_DATA, DATA_LENGTH)
        adc_p = d[0] << 12 | d[1] << 4 | d[2] >> 4
        adc_t = d[3] << 12 | d[4] << 4 | d[5] >> 4
        adc_h = d[6] << 8 | d[7]
        return compensate(cal, adc_t, adc_p, adc_h)

    def _read_register(self, reg: int, length: int) -> bytes:
        try:
            data = bytes(self.bus.read_i2c_block_data(self.address, reg, length))
        except (OSError, ValueError) as exc:
            raise I2CError(self.address, f"read of register 0x{reg:02x}: {exc}") from exc
        if len(data) != length:  # a bus that gives back less than asked: nothing to decode
            raise I2CError(self.address, f"read of register 0x{reg:02x}: {len(data)} of {length} bytes")
        return data

    def _write_register(self, reg: int, value: int) -> None:
        try:
            self.bus.write_byte_data(self.address, reg, value)
        except OSError as exc:
            raise I2CError(self.address, f"write of register 0x{reg:02x}: {exc}") from exc
