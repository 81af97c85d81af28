"""A simulated NIR spectrometer that speaks drivers/nir_frame.py's protocol.

:class:`SimSpectrometer` is the device logic (bytes in, bytes out); the
:class:`SpectrometerServer` puts it behind a TCP socket, so the real driver reaches
it as ``socket://127.0.0.1:PORT``, exactly as it would reach a serial-to-network
bridge. Faults: garbage before each reply, truncated replies, an error reply.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable

import numpy as np

from s4edge.drivers.nir_frame import ACQUIRE, ERROR, INFO, INFO_REPLY, SPECTRUM, Frame, FrameReader, encode_spectrum
from s4edge.drivers.spectrometer import Spectrum

# The InnoSpectra NIR-F320's range and a typical point count (1600–2400 nm)
DEFAULT_WAVELENGTHS = np.linspace(1600.0, 2400.0, 228)


def flat_spectrum() -> Spectrum:
    return Spectrum(DEFAULT_WAVELENGTHS.copy(), np.full(DEFAULT_WAVELENGTHS.shape, 0.5))


class SimSpectrometer:
    def __init__(self, source: Callable[[], Spectrum] = flat_spectrum, info: dict[str, str] | None = None) -> None:
        self.source = source
        self.info = info or {"model": "sim-nir", "serial": "SIM0001"}
        self.reader = FrameReader()
        self.garbage = b""  # sent before every reply
        self.truncate_next = 0  # replies cut short, then sent again whole
        self.fail_next: str | None = None
        self.requests = 0

    def receive(self, data: bytes) -> bytes:
        out = b""
        for frame in self.reader.feed(data):
            self.requests += 1
            out += self.garbage + self._reply(frame)
        return out

    def _reply(self, frame: Frame) -> bytes:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            return Frame(ERROR, message.encode()).encode()
        if frame.type == ACQUIRE:
            reply = Frame(SPECTRUM, encode_spectrum(self.source())).encode()
        elif frame.type == INFO:
            reply = Frame(INFO_REPLY, json.dumps(self.info).encode()).encode()
        else:
            return Frame(ERROR, f"unknown request type 0x{frame.type:02x}".encode()).encode()
        if self.truncate_next > 0:
            self.truncate_next -= 1
            return reply[: len(reply) // 2] + reply
        return reply


class SpectrometerServer:
    """Serves one :class:`SimSpectrometer` on 127.0.0.1, one client at a time."""

    def __init__(self, device: SimSpectrometer, port: int = 0) -> None:
        self.device = device
        self._sock = socket.create_server(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sim-spectrometer", daemon=True)

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def __enter__(self) -> SpectrometerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(0.2)
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    reply = self.device.receive(data)
                    if reply:
                        conn.sendall(reply)
