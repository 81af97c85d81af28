"""SCD4x and SGP30 drivers against their wire-level simulators; Sensirion CRC-8."""

from __future__ import annotations

import pytest

from s4edge.drivers.errors import CRCError, I2CError
from s4edge.drivers.scd4x import SCD4x
from s4edge.drivers.sensirion import crc8, pack_words, unpack_words
from s4edge.drivers.sgp30 import SGP30
from s4edge.drivers.sim import SimBus, SimSCD4x, SimSGP30


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def no_wait(_s: float) -> None:
    pass


def test_crc8_datasheet_example() -> None:
    assert crc8(b"\xbe\xef") == 0x92  # the datasheets' checksum example
    assert pack_words([0xBEEF]) == b"\xbe\xef\x92"
    assert unpack_words(b"\xbe\xef\x92") == [0xBEEF]
    with pytest.raises(CRCError, match="0x93"):
        unpack_words(b"\xbe\xef\x93")


def test_scd4x_periodic_measurement() -> None:
    bus, clock = SimBus(), Clock()
    chip = SimSCD4x(clock=clock)
    bus.attach(0x62, chip)
    chip.co2_ppm, chip.temperature_c, chip.humidity_rh = 1234, 24.5, 55.0
    scd = SCD4x(bus, sleep=no_wait)
    assert scd.serial_number() == 0x123456789ABC
    scd.start_periodic_measurement()
    assert not scd.data_ready()
    with pytest.raises(I2CError):
        scd.serial_number()  # not allowed in periodic mode: the chip NACKs
    clock.t += 5.0
    assert scd.data_ready()
    r = scd.read_measurement()
    assert r.co2_ppm == 1234
    assert r.temperature_c == pytest.approx(24.5, abs=0.01)
    assert r.humidity_rh == pytest.approx(55.0, abs=0.01)
    assert not scd.data_ready()


def test_scd4x_corrupted_crc_is_detected_then_recovers() -> None:
    bus, clock = SimBus(), Clock()
    chip = SimSCD4x(clock=clock)
    bus.attach(0x62, chip)
    scd = SCD4x(bus, sleep=no_wait)
    chip.corrupt_next()
    with pytest.raises(CRCError):
        scd.serial_number()
    assert scd.serial_number() == 0x123456789ABC


def test_sgp30_warmup_then_values_and_bad_argument_crc() -> None:
    bus, clock = SimBus(), Clock()
    chip = SimSGP30(clock=clock)
    bus.attach(0x58, chip)
    chip.co2eq_ppm, chip.tvoc_ppb = 800, 120
    sgp = SGP30(bus, sleep=no_wait)
    sgp.begin()
    first = sgp.measure_air_quality()
    assert first.warming_up and first.co2eq_ppm == 400
    clock.t += 15.0
    r = sgp.measure_air_quality()
    assert (r.co2eq_ppm, r.tvoc_ppb, r.warming_up) == (800, 120, False)
    assert sgp.self_test()
    sgp.set_absolute_humidity(11.5)
    assert chip.absolute_humidity == round(11.5 * 256)
    with pytest.raises(OSError):  # an argument word with a wrong CRC is NACKed by the chip
        bus.write(0x58, b"\x20\x61\x0b\x80\x00")


def test_an_scd4x_left_measuring_by_the_last_run_is_taken_over() -> None:
    # the chip NACKs a start in periodic mode: after a restart or a reload the probe tried
    # only that, for ever, with the chip measuring all along
    from s4edge.edge.sensing.probes import SCD4xProbe

    bus, clock = SimBus(), Clock()
    chip = SimSCD4x(clock=clock)
    bus.attach(0x62, chip)
    SCD4x(bus, sleep=no_wait).start_periodic_measurement()  # the node's last run
    probe = SCD4xProbe("co2", SCD4x(bus, sleep=no_wait))
    assert probe.poll(clock.t) is None  # stopped, started again: the first sample comes in 5 s
    clock.t += 5.0
    sample = probe.poll(clock.t)
    assert sample is not None and sample.readings[0].quantity == "co2"
