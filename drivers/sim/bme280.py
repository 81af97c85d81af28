"""Behavioural BME280: calibration registers, chip id, forced-mode measurement with a
``measuring`` status bit, and raw ADC values that the chip's trimming turns back into
the temperature, humidity and pressure the test set.

The raw values are found by inverting the datasheet's *integer* compensation (§4.2.3,
``BME280_compensate_*_int32/int64``), so a driver using the floating-point formulas
(§8.1) is checked against an independent implementation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from s4edge.drivers.bme280 import (
    CHIP_ID,
    MODE_FORCED,
    REG_CALIB_00,
    REG_CALIB_26,
    REG_CHIP_ID,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_STATUS,
    STATUS_MEASURING,
    Calibration,
)
from s4edge.drivers.sim.bus import nack

# Trimming values of the order a real part carries (T and P as in Bosch's BMP280 example).
TYPICAL_CALIBRATION = Calibration(
    t1=27504, t2=26435, t3=-1000,
    p1=36477, p2=-10685, p3=3024, p4=2855, p5=140, p6=-7, p7=15500, p8=-14600, p9=6000,
    h1=75, h2=362, h3=0, h4=313, h5=50, h6=30,
)  # fmt: skip


def _tdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def t_fine_int(c: Calibration, adc_t: int) -> int:
    var1 = (((adc_t >> 3) - (c.t1 << 1)) * c.t2) >> 11
    var2 = (((((adc_t >> 4) - c.t1) * ((adc_t >> 4) - c.t1)) >> 12) * c.t3) >> 14
    return var1 + var2


def temperature_int(c: Calibration, adc_t: int) -> float:
    return ((t_fine_int(c, adc_t) * 5 + 128) >> 8) / 100.0


def pressure_int64(c: Calibration, t_fine: int, adc_p: int) -> float:
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.p6
    var2 = var2 + ((var1 * c.p5) << 17)
    var2 = var2 + (c.p4 << 35)
    var1 = ((var1 * var1 * c.p3) >> 8) + ((var1 * c.p2) << 12)
    var1 = (((1 << 47) + var1) * c.p1) >> 33
    if var1 == 0:
        return 0.0
    p = 1048576 - adc_p
    p = _tdiv(((p << 31) - var2) * 3125, var1)
    var1 = (c.p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.p8 * p) >> 19
    p = ((p + var1 + var2) >> 8) + (c.p7 << 4)
    return p / 256.0


def humidity_int32(c: Calibration, t_fine: int, adc_h: int) -> float:
    v = t_fine - 76800
    v = (((adc_h << 14) - (c.h4 << 20) - (c.h5 * v)) + 16384) >> 15
    v = v * (((((((t_fine - 76800) * c.h6) >> 10) * ((((t_fine - 76800) * c.h3) >> 11) + 32768)) >> 10) + 2097152)
             * c.h2 + 8192 >> 14)  # fmt: skip
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.h1) >> 4)
    v = min(max(v, 0), 419430400)
    return (v >> 12) / 1024.0


def _solve(f: Callable[[int], float], target: float, hi: int, increasing: bool) -> int:
    """The raw code whose compensated value is nearest ``target`` (f is monotonic)."""
    lo_code, hi_code = 0, hi
    while hi_code - lo_code > 1:
        mid = (lo_code + hi_code) // 2
        if (f(mid) < target) == increasing:
            lo_code = mid
        else:
            hi_code = mid
    return min((lo_code, hi_code), key=lambda code: abs(f(code) - target))


class SimBME280:
    def __init__(
        self,
        address: int = 0x77,
        calibration: Calibration = TYPICAL_CALIBRATION,
        busy_reads: int = 1,
        noise_lsb: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.address = address
        self.noise_lsb = noise_lsb  # Gaussian noise on the raw ADC values, in codes
        self._rng = random.Random(seed)
        self.calibration = calibration
        self.temperature_c = 21.0
        self.humidity_rh = 45.0
        self.pressure_pa = 101325.0
        self.busy_reads = busy_reads
        self.chip_id = CHIP_ID
        self.stuck = False
        self._busy_left = 0
        self.registers = bytearray(256)
        self.registers[REG_CHIP_ID] = CHIP_ID
        self._write_calibration()
        self._pointer = 0

    def _write_calibration(self) -> None:
        c, r = self.calibration, self.registers

        def put16(reg: int, value: int) -> None:
            r[reg], r[reg + 1] = value & 0xFF, value >> 8 & 0xFF

        for i, value in enumerate((c.t1, c.t2, c.t3, c.p1, c.p2, c.p3, c.p4, c.p5, c.p6, c.p7, c.p8, c.p9)):
            put16(REG_CALIB_00 + 2 * i, value)
        r[0xA1] = c.h1
        put16(REG_CALIB_26, c.h2)
        r[0xE3] = c.h3
        # dig_H4/H5 are 12-bit values sharing 0xE5 (table 16)
        r[0xE4], r[0xE5], r[0xE6] = c.h4 >> 4 & 0xFF, (c.h5 & 0x0F) << 4 | c.h4 & 0x0F, c.h5 >> 4 & 0xFF
        r[0xE7] = c.h6 & 0xFF

    def raw_values(self) -> tuple[int, int, int]:
        c = self.calibration
        adc_t = _solve(lambda x: temperature_int(c, x), self.temperature_c, (1 << 20) - 1, increasing=True)
        t_fine = t_fine_int(c, adc_t)
        adc_p = _solve(lambda x: pressure_int64(c, t_fine, x), self.pressure_pa, (1 << 20) - 1, increasing=False)
        adc_h = _solve(lambda x: humidity_int32(c, t_fine, x), self.humidity_rh, (1 << 16) - 1, increasing=True)
        return adc_t, adc_p, adc_h

    def _measure(self) -> None:
        adc_t, adc_p, adc_h = (
            max(0, round(v + self._rng.gauss(0.0, self.noise_lsb * scale)))
            for v, scale in zip(self.raw_values(), (16, 16, 1), strict=True)  # T and P are 20-bit, H 16-bit
        )
        self.registers[REG_DATA : REG_DATA + 8] = bytes(
            [adc_p >> 12, adc_p >> 4 & 0xFF, (adc_p & 0xF) << 4, adc_t >> 12, adc_t >> 4 & 0xFF, (adc_t & 0xF) << 4,
             adc_h >> 8, adc_h & 0xFF]
        )  # fmt: skip

    def read_register(self, reg: int, length: int) -> list[int]:
        if reg == REG_STATUS:
            busy = self._busy_left > 0
            self._busy_left = max(0, self._busy_left - 1)
            return [STATUS_MEASURING if busy else 0][:length]
        if reg == REG_CHIP_ID:
            return [self.chip_id][:length]
        return [self.registers[(reg + i) & 0xFF] for i in range(length)]

    def write_register(self, reg: int, data: Sequence[int]) -> None:
        for i, value in enumerate(data):
            self.registers[(reg + i) & 0xFF] = value
        if reg == REG_CTRL_MEAS and data[0] & 0b11 == MODE_FORCED:
            if not self.stuck:
                self._measure()
            self._busy_left = self.busy_reads
            self.registers[REG_CTRL_MEAS] &= ~0b11  # back to sleep mode after the measurement (§3.3.3)

    def write(self, data: bytes) -> None:
        if not data:
            raise nack(self.address)
        self._pointer = data[0]
        if len(data) > 1:
            self.write_register(data[0], data[1:])

    def read(self, n: int) -> bytes:
        return bytes(self.read_register(self._pointer, n))
