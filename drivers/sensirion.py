"""What the Sensirion gas sensors (SCD4x, SGP30) share on the wire: 16-bit commands,
data as 16-bit big-endian words each followed by a CRC-8, and a documented delay
between a command and its answer.

CRC-8: polynomial 0x31 (x⁸+x⁵+x⁴+1), initial value 0xFF, no reflection, no final XOR;
the datasheets' example is CRC(0xBEEF) = 0x92 (the "Checksum Calculation"
section of both datasheets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from s4edge.drivers.errors import CRCError, I2CError
from s4edge.drivers.i2c import I2CBus

CRC_POLYNOMIAL = 0x31
CRC_INIT = 0xFF


def crc8(data: bytes) -> int:
    crc = CRC_INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def pack_words(words: Sequence[int]) -> bytes:
    out = bytearray()
    for word in words:
        pair = word.to_bytes(2, "big")
        out += pair + bytes([crc8(pair)])
    return bytes(out)


def unpack_words(data: bytes) -> list[int]:
    if len(data) % 3:
        raise CRCError(f"{len(data)} bytes is not a whole number of word+CRC triples")
    words = []
    for i in range(0, len(data), 3):
        pair, crc = data[i : i + 2], data[i + 2]
        if crc8(pair) != crc:
            raise CRCError(f"word {i // 3}: CRC 0x{crc:02x}, expected 0x{crc8(pair):02x} for 0x{pair.hex()}")
        words.append(int.from_bytes(pair, "big"))
    return words


class SensirionLink:
    """Command/response on one address: every command waits its documented delay."""

    def __init__(self, bus: I2CBus, address: int, sleep: Callable[[float], None] = time.sleep) -> None:
        self.bus = bus
        self.address = address
        self._sleep = sleep

    def command(self, code: int, delay_s: float, args: Sequence[int] = (), read_words: int = 0) -> list[int]:
        try:
            self.bus.write(self.address, code.to_bytes(2, "big") + pack_words(args))
            self._sleep(delay_s)
            if not read_words:
                return []
            data = self.bus.read(self.address, 3 * read_words)
        except OSError as exc:
            raise I2CError(self.address, f"command 0x{code:04x}: {exc}") from exc
        return unpack_words(data)
