"""BME280 driver (datasheet float compensation) against the simulator, whose raw
values come from the datasheet's independent integer compensation."""

from __future__ import annotations

import pytest

from s4edge.drivers.bme280 import BME280
from s4edge.drivers.errors import ConversionTimeout, WrongDevice
from s4edge.drivers.sim import SimBME280, SimBus
from s4edge.drivers.sim.bme280 import TYPICAL_CALIBRATION


def no_wait(_s: float) -> None:
    pass


@pytest.mark.parametrize(("t", "rh", "p"), [(21.0, 45.0, 101325.0), (-8.5, 90.0, 95000.0), (48.2, 12.0, 104000.0)])
def test_reads_back_what_the_chip_measures(t: float, rh: float, p: float) -> None:
    bus, chip = SimBus(), SimBME280(0x76)
    bus.attach(0x76, chip)
    chip.temperature_c, chip.humidity_rh, chip.pressure_pa = t, rh, p
    r = BME280(bus, 0x76, sleep=no_wait).read()
    assert r.temperature_c == pytest.approx(t, abs=0.02)
    assert r.humidity_rh == pytest.approx(rh, abs=0.1)
    assert r.pressure_pa == pytest.approx(p, abs=2.0)


def test_calibration_registers_decode_including_packed_h4_h5() -> None:
    bus, chip = SimBus(), SimBME280()
    bus.attach(0x77, chip)
    assert BME280(bus, sleep=no_wait).begin() == TYPICAL_CALIBRATION


def test_wrong_chip_and_endless_measurement() -> None:
    bus, chip = SimBME280(), SimBus()
    chip.attach(0x77, bus)
    bus.chip_id = 0x58  # a BMP280
    with pytest.raises(WrongDevice, match="0x58"):
        BME280(chip, sleep=no_wait).begin()
    bus.chip_id = 0x60
    bus.busy_reads = 10**9
    t = [0.0]

    def sleep(s: float) -> None:
        t[0] += s

    with pytest.raises(ConversionTimeout):
        BME280(chip, sleep=sleep, clock=lambda: t[0]).read()
