"""Framing of the NIR spectrometer's serial protocol, independent of the transport
(cf. pyserial's ``serial.threaded.Packetizer``): bytes in, frames out.

Frame layout (all integers big-endian)::

    0xA5 0x5A | LEN u16 | TYPE u8 | PAYLOAD (LEN bytes) | CRC u16

- CRC: CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF, no reflection, no
  final XOR; check value 0x29B1 for b"123456789") over LEN, TYPE and PAYLOAD.
- LEN ≤ :data:`MAX_PAYLOAD`; a longer length field is treated as garbage.

Message types:

| type | direction | payload |
|---|---|---|
| 0x01 ACQUIRE | host → device | empty: take one spectrum |
| 0x02 INFO | host → device | empty |
| 0x81 SPECTRUM | device → host | n u16, n × wavelength f32 (nm), n × value f32 |
| 0x82 INFO_REPLY | device → host | UTF-8 JSON object of strings (model, serial...) |
| 0xFF ERROR | device → host | UTF-8 message |

Resynchronisation: the reader hunts for the sync bytes; a frame whose CRC fails, or
whose length is impossible, costs one byte and the hunt goes on. While a candidate
is still incomplete, a later complete and valid frame wins over it, so a truncated
frame cannot swallow the frames that follow it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

from s4edge.drivers.errors import SpectrometerError
from s4edge.drivers.spectrometer import Spectrum

SYNC: Final = b"\xa5\x5a"
HEADER: Final = 5  # sync, length, type
MAX_PAYLOAD: Final = 8192

ACQUIRE: Final = 0x01
INFO: Final = 0x02
SPECTRUM: Final = 0x81
INFO_REPLY: Final = 0x82
ERROR: Final = 0xFF


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes = b""

    def encode(self) -> bytes:
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")
        body = struct.pack(">HB", len(self.payload), self.type) + self.payload
        return SYNC + body + struct.pack(">H", crc16_ccitt(body))


class FrameReader:
    """Feed it bytes as they arrive; it returns whole, CRC-checked frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded_bytes = 0
        self.crc_errors = 0

    def _candidate(self, at: int) -> Frame | int | None:
        """The frame starting at ``at``: a Frame, its missing byte count, or None if invalid."""
        buf = self._buf
        if len(buf) - at < HEADER:
            return HEADER + 2 - (len(buf) - at)
        length, kind = (int(v) for v in struct.unpack_from(">HB", buf, at + 2))
        if length > MAX_PAYLOAD:
            return None
        end = at + HEADER + length + 2
        if len(buf) < end:
            return end - len(buf)
        (crc,) = struct.unpack_from(">H", buf, end - 2)
        if crc != crc16_ccitt(bytes(buf[at + 2 : end - 2])):
            self.crc_errors += 1
            return None
        return Frame(kind, bytes(buf[at + HEADER : end - 2]))

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self.discarded_bytes += n

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            at = self._buf.find(SYNC)
            if at < 0:
                keep = 1 if self._buf.endswith(SYNC[:1]) else 0
                self._drop(len(self._buf) - keep)
                return frames
            self._drop(at)
            found = self._candidate(0)
            if found is None:
                self._drop(1)
            elif isinstance(found, Frame):
                frames.append(found)
                size = HEADER + len(found.payload) + 2
                # A frame cut short can look whole when the next frame's first bytes complete
                # it (its CRC's last byte equal to the sync's first, 1 in 256): a valid frame
                # that starts inside this one and ends beyond it is kept too.
                overlap = self._later_frame(before=size)
                del self._buf[: size if overlap is None else overlap]
            else:
                later = self._later_frame()
                if later is None:
                    return frames
                self._drop(later)

    def _later_frame(self, before: int | None = None) -> int | None:
        """Where the next whole, valid frame after the first byte starts; with ``before``,
        only one that starts before that offset and ends after it."""
        at = self._buf.find(SYNC, 1, before + 1 if before is not None else None)
        while at >= 0:
            errors = self.crc_errors
            found = self._candidate(at)
            if isinstance(found, Frame) and (before is None or at + HEADER + len(found.payload) + 2 > before):
                return at
            self.crc_errors = errors  # probing ahead is not an error on the wire
            at = self._buf.find(SYNC, at + 1, before + 1 if before is not None else None)
        return None


def encode_spectrum(spectrum: Spectrum) -> bytes:
    header = struct.pack(">H", len(spectrum.values))
    return header + spectrum.wavelengths_nm.astype(">f4").tobytes() + spectrum.values.astype(">f4").tobytes()


def decode_spectrum(payload: bytes) -> Spectrum:
    if len(payload) < 2:
        raise SpectrometerError("SPECTRUM payload too short for its count")
    (n,) = struct.unpack_from(">H", payload)
    if len(payload) != 2 + 8 * n:
        raise SpectrometerError(f"SPECTRUM payload of {len(payload)} bytes does not hold {n} points")
    wl = np.frombuffer(payload, ">f4", n, 2).astype(np.float64)
    values = np.frombuffer(payload, ">f4", n, 2 + 4 * n).astype(np.float64)
    return Spectrum(wl, values)
