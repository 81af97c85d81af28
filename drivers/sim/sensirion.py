"""Behavioural SCD4x and SGP30: they parse 16-bit commands, check the CRC of every
argument word, answer with real CRCs, and keep the chips' modes (an SCD4x in periodic
mode NACKs most commands; an SGP30 answers 400 ppm / 0 ppb for 15 s after init).

Faults: :meth:`SimSensirion.corrupt_next` breaks the CRC of the next answers,
:meth:`SimSensirion.stick` freezes the reported values.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from s4edge.drivers import scd4x, sgp30
from s4edge.drivers.errors import CRCError
from s4edge.drivers.sensirion import crc8, pack_words, unpack_words
from s4edge.drivers.sim.bus import nack


class SimSensirion:
    def __init__(self, address: int, clock: Callable[[], float]) -> None:
        self.address = address
        self.clock = clock
        self._answer = b""
        self._corrupt = 0
        self.stuck: tuple[int, ...] | None = None
        self.noise = 0.0  # Gaussian noise on each reported value, in its unit's LSB
        self._rng = random.Random(address)
        self.serial = (0x1234, 0x5678, 0x9ABC)

    def corrupt_next(self, n: int = 1) -> None:
        self._corrupt += n

    def repair(self) -> None:
        """Clear every injected fault."""
        self._corrupt = 0
        self.stuck = None

    def stick(self, on: bool = True) -> None:
        self.stuck = self.measurement_words() if on else None

    def measurement_words(self) -> tuple[int, ...]:
        raise NotImplementedError

    def handle(self, code: int, args: list[int]) -> Sequence[int] | None:
        raise NotImplementedError

    def _measurement(self) -> Sequence[int]:
        if self.stuck is not None:
            return self.stuck
        return [max(0, min(0xFFFF, round(w + self._rng.gauss(0.0, self.noise)))) for w in self.measurement_words()]

    def write(self, data: bytes) -> None:
        if len(data) < 2 or len(data) % 3 != 2:
            raise nack(self.address)
        try:
            args = unpack_words(data[2:])
        except CRCError:
            raise nack(self.address) from None  # the chip NACKs an argument with a bad CRC
        words = self.handle(int.from_bytes(data[:2], "big"), args)
        self._answer = pack_words(words) if words else b""
        if self._answer and self._corrupt > 0:
            self._corrupt -= 1
            self._answer = self._answer[:2] + bytes([crc8(self._answer[:2]) ^ 0x5A]) + self._answer[3:]

    def read(self, n: int) -> bytes:
        if not self._answer:
            raise nack(self.address)  # nothing to read: the chip NACKs its address
        answer, self._answer = self._answer[:n], b""
        return answer.ljust(n, b"\xff")

    def read_register(self, reg: int, length: int) -> list[int]:
        raise nack(self.address)

    def write_register(self, reg: int, data: Sequence[int]) -> None:
        raise nack(self.address)


class SimSCD4x(SimSensirion):
    def __init__(
        self,
        address: int = scd4x.DEFAULT_ADDRESS,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 5.0,
    ) -> None:
        super().__init__(address, clock)
        self.co2_ppm = 420.0
        self.temperature_c = 21.0
        self.humidity_rh = 45.0
        self.interval_s = interval_s  # periodic mode, datasheet: a sample every 5 s
        self.periodic_since: float | None = None
        self._last_read = 0.0

    def measurement_words(self) -> tuple[int, ...]:
        # inverse of the conversion formulas in drivers.scd4x
        return (
            max(0, min(0xFFFF, round(self.co2_ppm))),
            max(0, min(0xFFFF, round((self.temperature_c + 45.0) * 65535.0 / 175.0))),
            max(0, min(0xFFFF, round(self.humidity_rh * 65535.0 / 100.0))),
        )

    def _ready(self) -> bool:
        if self.periodic_since is None:
            return False
        now = self.clock()
        return now - self.periodic_since >= self.interval_s and now - self._last_read >= self.interval_s

    def handle(self, code: int, args: list[int]) -> Sequence[int] | None:
        periodic = self.periodic_since is not None
        if code == scd4x.CMD_START_PERIODIC and not periodic:
            self.periodic_since = self.clock()
            return None
        if code == scd4x.CMD_STOP_PERIODIC:
            self.periodic_since = None
            return None
        if code == scd4x.CMD_DATA_READY:
            return [0x8006 if self._ready() else 0x8000]
        if code == scd4x.CMD_READ_MEASUREMENT:
            self._last_read = self.clock()
            return self._measurement()
        if code == scd4x.CMD_SERIAL_NUMBER and not periodic:
            return self.serial
        if code == scd4x.CMD_REINIT and not periodic:
            return None
        raise nack(self.address)  # unknown, or not allowed in periodic mode (datasheet)


class SimSGP30(SimSensirion):
    def __init__(self, address: int = sgp30.DEFAULT_ADDRESS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(address, clock)
        self.co2eq_ppm = 450.0
        self.tvoc_ppb = 25.0
        self.initialised_at: float | None = None
        self.absolute_humidity = 0

    def measurement_words(self) -> tuple[int, ...]:
        return (max(0, min(0xFFFF, round(self.co2eq_ppm))), max(0, min(0xFFFF, round(self.tvoc_ppb))))

    def handle(self, code: int, args: list[int]) -> Sequence[int] | None:
        if code == sgp30.CMD_INIT_AIR_QUALITY:
            self.initialised_at = self.clock()
            return None
        if code == sgp30.CMD_MEASURE_AIR_QUALITY:
            # The first 15 s after init_air_quality read 400 ppm / 0 ppb (SGP30 datasheet)
            if self.initialised_at is None or self.clock() - self.initialised_at < 15.0:
                return [sgp30.WARMUP_CO2EQ_PPM, sgp30.WARMUP_TVOC_PPB]
            return self._measurement()
        if code == sgp30.CMD_GET_FEATURE_SET:
            return [0x0022]
        if code == sgp30.CMD_MEASURE_TEST:
            return [sgp30.MEASURE_TEST_PASSED]
        if code == sgp30.CMD_GET_SERIAL_ID:
            return self.serial
        if code == sgp30.CMD_SET_ABSOLUTE_HUMIDITY and len(args) == 1:
            self.absolute_humidity = args[0]
            return None
        raise nack(self.address)
