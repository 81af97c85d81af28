"""ADS1115 driver against the register-level simulator."""

from __future__ import annotations

import pytest

from s4edge.drivers.ads1115 import ADS1115, REG_CONFIG, AnalogIn
from s4edge.drivers.errors import ConversionTimeout, I2CError
from s4edge.drivers.i2c import scan
from s4edge.drivers.sim import SimADS1115, SimBus


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.fixture
def sim_bus() -> SimBus:
    return SimBus()


@pytest.fixture
def adc(sim_bus: SimBus) -> SimADS1115:
    chip = SimADS1115(0x48, busy_reads=3)
    sim_bus.attach(0x48, chip)
    return chip


def driver(bus: SimBus, **kw: object) -> ADS1115:
    clock = FakeClock()
    return ADS1115(bus, 0x48, sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


def test_voltage_set_on_channel_2_reads_back(sim_bus: SimBus, adc: SimADS1115) -> None:
    adc.set_voltage(2, 1.65)
    adc.set_voltage(1, 3.0)
    assert AnalogIn(driver(sim_bus), 2).read_voltage() == pytest.approx(1.65, abs=2 * 4.096 / 32768)


def test_config_register_selects_mux_pga_and_rate(sim_bus: SimBus, adc: SimADS1115) -> None:
    adc.set_voltage(3, 0.3)
    raw = driver(sim_bus, full_scale_v=0.512, data_rate=860).read_raw(3)
    assert raw == round(0.3 / 0.512 * 32768)
    # MUX=111 (AIN3/GND), PGA=100 (±0.512 V), MODE single, DR=111 (860 SPS), comparator off: table 8
    assert adc.config == 0b0_111_100_1_111_0_0_0_11


def test_input_beyond_full_scale_saturates(sim_bus: SimBus, adc: SimADS1115) -> None:
    adc.set_voltage(0, 5.0)
    adc.set_voltage(1, -3.0)
    d = driver(sim_bus, full_scale_v=2.048)
    assert d.read_raw(0) == 32767
    assert d.read_raw(1) == -32768


def test_conversion_that_never_finishes_times_out(sim_bus: SimBus, adc: SimADS1115) -> None:
    adc.busy_reads = 10**9
    with pytest.raises(ConversionTimeout):
        driver(sim_bus, timeout_s=0.05).read_voltage(0)


def test_nack_and_missing_device_are_i2c_errors(sim_bus: SimBus, adc: SimADS1115) -> None:
    sim_bus.fail_next(0x48)
    with pytest.raises(I2CError, match="0x48"):
        driver(sim_bus).read_voltage(0)
    sim_bus.disconnect(0x48)
    with pytest.raises(I2CError):
        driver(sim_bus).read_voltage(0)
    sim_bus.reconnect(0x48)
    adc.set_voltage(0, 1.0)
    assert driver(sim_bus).read_voltage(0) == pytest.approx(1.0, abs=1e-3)


def test_bad_arguments_are_refused(sim_bus: SimBus, adc: SimADS1115) -> None:
    with pytest.raises(ValueError, match=r"channels 0\.\.3"):
        AnalogIn(driver(sim_bus), 4)
    with pytest.raises(ValueError, match="full_scale_v"):
        driver(sim_bus, full_scale_v=3.3)
    with pytest.raises(OSError):
        sim_bus.write_i2c_block_data(0x48, REG_CONFIG, [1])  # the sim NACKs a half register
    assert scan(sim_bus) == [0x48]
