"""A NIR spectrometer on a serial line, opened by URL (pyserial ``serial_for_url``):
``/dev/ttyUSB0``, ``socket://127.0.0.1:7000`` (the simulator), ``loop://`` or
``spy:///dev/ttyUSB0`` for a hex dump in the field. The wire protocol and its
framing are in drivers/nir_frame.py; this module only moves bytes and waits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from s4edge.drivers.errors import SpectrometerError, SpectrometerTimeout
from s4edge.drivers.nir_frame import ACQUIRE, ERROR, INFO, INFO_REPLY, SPECTRUM, Frame, FrameReader, decode_spectrum
from s4edge.drivers.spectrometer import Spectrum


class SerialSpectrometer:
    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import serial  # pyserial is a dependency, but a serial port is hardware: opened here, lazily

        self.url = url
        self.timeout_s = timeout_s
        self._clock = clock
        try:
            self._port: Any = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05)
        except (serial.SerialException, ValueError) as exc:
            raise SpectrometerError(f"cannot open spectrometer port {url!r}: {exc}") from exc
        self.reader = FrameReader()

    def info(self) -> dict[str, str]:
        reply = self._request(Frame(INFO), INFO_REPLY)
        try:
            data = json.loads(reply.payload.decode())
        except ValueError as exc:
            raise SpectrometerError(f"INFO reply is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SpectrometerError("INFO reply is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def acquire(self) -> Spectrum:
        reply = self._request(Frame(ACQUIRE), SPECTRUM)
        spectrum = decode_spectrum(reply.payload)
        return Spectrum(spectrum.wavelengths_nm, spectrum.values, {"port": self.url})

    def _request(self, request: Frame, expect: int) -> Frame:
        try:
            self._port.reset_input_buffer()
            self._port.write(request.encode())
            deadline = self._clock() + self.timeout_s
            while self._clock() < deadline:
                chunk = self._port.read(max(1, self._port.in_waiting))
                for frame in self.reader.feed(chunk):
                    if frame.type == expect:
                        return frame
                    if frame.type == ERROR:
                        raise SpectrometerError(f"spectrometer error: {frame.payload.decode(errors='replace')}")
        except OSError as exc:  # serial.SerialException is an OSError
            raise SpectrometerError(f"{self.url}: {exc}") from exc
        raise SpectrometerTimeout(f"{self.url}: no reply of type 0x{expect:02x} within {self.timeout_s} s")

    def close(self) -> None:
        self._port.close()
