"""Behavioural ADS1115: decodes the config register (MUX, PGA, DR, OS, MODE) and turns
the voltage on the selected inputs into a saturated 16-bit two's-complement code
(datasheet SBAS444D §9.3.3, table 8)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from s4edge.drivers.ads1115 import CODE_FULL_SCALE, FULL_SCALE_BITS, OS_SINGLE, REG_CONFIG, REG_CONVERSION
from s4edge.drivers.sim.bus import nack

# MUX[2:0] → (positive input, negative input or None for GND), table 8
MUX_INPUTS: dict[int, tuple[int, int | None]] = {
    0b000: (0, 1), 0b001: (0, 3), 0b010: (1, 3), 0b011: (2, 3),
    0b100: (0, None), 0b101: (1, None), 0b110: (2, None), 0b111: (3, None),
}  # fmt: skip
FSR_BY_BITS = {bits: fsr for fsr, bits in FULL_SCALE_BITS.items()} | {6: 0.256, 7: 0.256}
POWER_ON_CONFIG = 0x8583  # reset value (table 8)


class SimADS1115:
    def __init__(self, address: int = 0x48, busy_reads: int = 1, noise_lsb: float = 0.0, seed: int = 0) -> None:
        self.address = address
        self.noise_lsb = noise_lsb  # Gaussian input noise, in codes (a real input always has some)
        self._rng = random.Random(seed)
        self.voltages = [0.0, 0.0, 0.0, 0.0]
        self.config = POWER_ON_CONFIG
        self.conversion = 0
        self.busy_reads = busy_reads  # config reads that still show OS=0 after a start
        self._busy_left = 0
        self.stuck_code: int | None = None
        self.conversions = 0

    def set_voltage(self, channel: int, volts: float) -> None:
        self.voltages[channel] = volts

    def stick(self, code: int | None) -> None:
        """A frozen converter: every conversion returns ``code`` (None: working again)."""
        self.stuck_code = code

    def code_for(self, mux: int, pga: int) -> int:
        pos, neg = MUX_INPUTS[mux]
        volts = self.voltages[pos] - (self.voltages[neg] if neg is not None else 0.0)
        code = round(volts / FSR_BY_BITS[pga] * CODE_FULL_SCALE + self._rng.gauss(0.0, self.noise_lsb))
        return max(-CODE_FULL_SCALE, min(CODE_FULL_SCALE - 1, code))

    def read_register(self, reg: int, length: int) -> list[int]:
        if reg == REG_CONFIG:
            value = self.config
            if self._busy_left > 0:
                self._busy_left -= 1
                value &= ~OS_SINGLE
            else:
                value |= OS_SINGLE
        elif reg == REG_CONVERSION:
            value = self.conversion & 0xFFFF
        elif reg in (0x02, 0x03):
            value = 0x8000 if reg == 0x02 else 0x7FFF  # Lo/Hi_thresh reset values
        else:
            raise nack(self.address)
        return [value >> 8, value & 0xFF][:length]

    def write_register(self, reg: int, data: Sequence[int]) -> None:
        if reg != REG_CONFIG or len(data) != 2:
            raise nack(self.address)
        value = data[0] << 8 | data[1]
        self.config = value & ~OS_SINGLE
        continuous = not value & 0x0100
        if value & OS_SINGLE or continuous:
            mux, pga = value >> 12 & 0b111, value >> 9 & 0b111
            code = self.code_for(mux, pga)
            self.conversion = self.stuck_code if self.stuck_code is not None else code
            self._busy_left = self.busy_reads
            self.conversions += 1

    def write(self, data: bytes) -> None:
        raise nack(self.address)

    def read(self, n: int) -> bytes:
        return bytes(self.read_register(REG_CONVERSION, n))
