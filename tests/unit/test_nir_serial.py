"""The NIR serial protocol: framing with garbage and truncation (hypothesis), and the
driver against the simulator over a real TCP socket (socket://)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s4edge.drivers.errors import SpectrometerError, SpectrometerTimeout
from s4edge.drivers.nir_frame import MAX_PAYLOAD, SPECTRUM, Frame, FrameReader, crc16_ccitt, decode_spectrum
from s4edge.drivers.nir_serial import SerialSpectrometer
from s4edge.drivers.sim import SimSpectrometer, SpectrometerServer
from s4edge.drivers.spectrometer import Spectrum

frames = st.builds(Frame, st.integers(0, 255), st.binary(max_size=64))


def test_crc16_ccitt_check_value() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE catalogue check value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), frames), min_size=1, max_size=6), st.integers(1, 17))
def test_frames_survive_garbage_between_them(chunks: list[tuple[bytes, Frame]], step: int) -> None:
    stream = b"".join(garbage + frame.encode() for garbage, frame in chunks)
    reader = FrameReader()
    got: list[Frame] = []
    for i in range(0, len(stream), step):  # arbitrary read sizes, as a serial port delivers
        got += reader.feed(stream[i : i + step])
    assert got == [frame for _, frame in chunks]


@settings(max_examples=100, deadline=None)
@given(frames, frames, st.data())
def test_a_truncated_frame_does_not_swallow_the_next(first: Frame, second: Frame, data: st.DataObject) -> None:
    whole = first.encode()
    cut = data.draw(st.integers(1, len(whole) - 1))
    got = FrameReader().feed(whole[:cut] + second.encode())
    assert got[-1:] == [second]


def test_a_frame_cut_where_the_next_one_completes_it_does_not_hide_the_next() -> None:
    """Found by hypothesis: cut one byte short, this frame's CRC ends in 0xA5, the first byte
    of the next frame's sync, so the two overlap by a byte and both read as valid."""
    first, second = Frame(32, bytes.fromhex("6a59e51293")), Frame(0, b"")
    assert first.encode()[-1:] == b"\xa5"
    assert FrameReader().feed(first.encode()[:-1] + second.encode()) == [first, second]


def test_impossible_length_and_bad_crc_are_skipped() -> None:
    good = Frame(SPECTRUM, b"abc").encode()
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    reader = FrameReader()
    huge = b"\xa5\x5a" + (MAX_PAYLOAD + 1).to_bytes(2, "big") + b"\x81"
    assert reader.feed(bytes(bad_crc) + huge + good) == [Frame(SPECTRUM, b"abc")]
    assert reader.crc_errors == 1 and reader.discarded_bytes > 0


def _ramp() -> Spectrum:
    wl = np.linspace(1600, 2400, 228)
    return Spectrum(wl, np.linspace(0.2, 1.4, 228))


def test_driver_acquires_through_garbage_and_truncation() -> None:
    device = SimSpectrometer(_ramp)
    device.garbage = b"\x00\xa5\x5a\x20\x00noise\xa5"
    device.truncate_next = 1
    with SpectrometerServer(device) as server:
        spectrometer = SerialSpectrometer(server.url, timeout_s=3.0)
        try:
            assert spectrometer.info()["model"] == "sim-nir"
            spectrum = spectrometer.acquire()
        finally:
            spectrometer.close()
    np.testing.assert_allclose(spectrum.values, _ramp().values, rtol=1e-6)  # float32 on the wire
    assert spectrum.meta["port"].startswith("socket://")


def test_error_reply_timeout_and_bad_url() -> None:
    device = SimSpectrometer(_ramp)
    device.fail_next = "lamp failure"
    with SpectrometerServer(device) as server:
        spectrometer = SerialSpectrometer(server.url, timeout_s=1.0)
        with pytest.raises(SpectrometerError, match="lamp failure"):
            spectrometer.acquire()
        spectrometer.close()
    silent = SerialSpectrometer("loop://", timeout_s=0.2)  # only our own request echoes back
    with pytest.raises(SpectrometerTimeout):
        silent.acquire()
    with pytest.raises(SpectrometerError, match="cannot open"):
        SerialSpectrometer("nosuchscheme://x")
    with pytest.raises(SpectrometerError, match="does not hold"):
        decode_spectrum(b"\x00\x05" + b"\x00" * 8)
