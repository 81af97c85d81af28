"""TI ADS1115 16-bit ADC (datasheet SBAS444D), single-shot conversions.

Following Adafruit's ``adafruit_ads1x15``: the chip object owns the I/O through
``_read_register``/``_write_register``, and a channel is a separate
:class:`AnalogIn` object. Unlike it, waiting for a conversion polls the OS bit with
a timeout and every failure is a typed exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from s4edge.drivers.errors import ConversionTimeout, I2CError
from s4edge.drivers.i2c import I2CBus

DEFAULT_ADDRESS: Final = 0x48  # ADDR pin to GND (datasheet table 4)

# Address pointer register (datasheet §9.6.1, table 6)
REG_CONVERSION: Final = 0x00
REG_CONFIG: Final = 0x01

# Config register fields (datasheet §9.6.3, table 8)
OS_SINGLE: Final = 0x8000  # write: start a conversion; read: 1 = device idle
MUX_SHIFT: Final = 12
MUX_SINGLE_ENDED: Final = 0b100  # 100..111 = AINx vs GND
PGA_SHIFT: Final = 9
MODE_SINGLE_SHOT: Final = 0x0100
DR_SHIFT: Final = 5
COMP_QUE_DISABLE: Final = 0x0003

# PGA full-scale range in volts → PGA[2:0] (table 8; 101..111 all mean ±0.256 V)
FULL_SCALE_BITS: Final[dict[float, int]] = {6.144: 0, 4.096: 1, 2.048: 2, 1.024: 3, 0.512: 4, 0.256: 5}
# Data rate in samples per second → DR[2:0] (table 8)
DATA_RATE_BITS: Final[dict[int, int]] = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}

# The conversion register is two's complement; ±FS maps to ±2^15 (datasheet §9.3.3).
CODE_FULL_SCALE: Final = 32768


class ADS1115:
    def __init__(
        self,
        bus: I2CBus,
        address: int = DEFAULT_ADDRESS,
        *,
        full_scale_v: float = 4.096,
        data_rate: int = 128,
        timeout_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if full_scale_v not in FULL_SCALE_BITS:
            raise ValueError(f"full_scale_v must be one of {sorted(FULL_SCALE_BITS)} V, not {full_scale_v}")
        if data_rate not in DATA_RATE_BITS:
            raise ValueError(f"data_rate must be one of {sorted(DATA_RATE_BITS)} SPS, not {data_rate}")
        self.bus = bus
        self.address = address
        self.full_scale_v = full_scale_v
        self.data_rate = data_rate
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._clock = clock

    def read_raw(self, channel: int) -> int:
        """One single-shot conversion of AIN``channel`` against GND: the signed code."""
        if channel not in range(4):
            raise ValueError(f"ADS1115 has channels 0..3, not {channel}")
        config = (
            OS_SINGLE
            | (MUX_SINGLE_ENDED | channel) << MUX_SHIFT
            | FULL_SCALE_BITS[self.full_scale_v] << PGA_SHIFT
            | MODE_SINGLE_SHOT
            | DATA_RATE_BITS[self.data_rate] << DR_SHIFT
            | COMP_QUE_DISABLE
        )
        self._write_register(REG_CONFIG, config)
        # One conversion takes 1/DR (datasheet §9.4.2); poll OS only after that.
        self._sleep(1.0 / self.data_rate)
        deadline = self._clock() + self.timeout_s
        while not self._read_register(REG_CONFIG) & OS_SINGLE:
            if self._clock() > deadline:
                raise ConversionTimeout(f"ADS1115 0x{self.address:02x}: no conversion within {self.timeout_s} s")
            self._sleep(0.1 / self.data_rate)
        raw = self._read_register(REG_CONVERSION)
        return raw - 0x10000 if raw & 0x8000 else raw

    def read_voltage(self, channel: int) -> float:
        return self.read_raw(channel) * self.full_scale_v / CODE_FULL_SCALE

    def _read_register(self, reg: int) -> int:
        try:
            msb, lsb = self.bus.read_i2c_block_data(self.address, reg, 2)
        except (OSError, ValueError) as exc:
            raise I2CError(self.address, f"read of register 0x{reg:02x}: {exc}") from exc
        return int(msb) << 8 | int(lsb)

    def _write_register(self, reg: int, value: int) -> None:
        try:
            self.bus.write_i2c_block_data(self.address, reg, [value >> 8 & 0xFF, value & 0xFF])
        except OSError as exc:
            raise I2CError(self.address, f"write of register 0x{reg:02x}: {exc}") from exc


class AnalogIn:
    """One single-ended input of an ADS1115."""

    def __init__(self, adc: ADS1115, channel: int) -> None:
        if channel not in range(4):
            raise ValueError(f"ADS1115 has channels 0..3, not {channel}")
        self.adc = adc
        self.channel = channel

    def read_raw(self) -> int:
        return self.adc.read_raw(self.channel)

    def read_voltage(self) -> float:
        return self.adc.read_voltage(self.channel)
