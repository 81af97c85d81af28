"""MQ sensors on a simulated ADS1115: volts → Rs → ppm, calibration, compensation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from s4edge.drivers.ads1115 import ADS1115, AnalogIn
from s4edge.drivers.sim import SimADS1115, SimBus
from s4edge.edge.sensing.calibration import CalibrationError, SensorCalibration, load_calibrations, save_calibration
from s4edge.edge.sensing.mq import MODELS, Climate, MQSensor, WarmingUp, climate_factor


def no_wait(_s: float) -> None:
    pass


@pytest.fixture
def adc() -> tuple[SimADS1115, AnalogIn]:
    bus, chip = SimBus(), SimADS1115()
    bus.attach(0x48, chip)
    return chip, AnalogIn(ADS1115(bus, full_scale_v=6.144, sleep=no_wait), 2)


def test_ppm_from_a_voltage_on_channel_2(adc: tuple[SimADS1115, AnalogIn]) -> None:
    chip, channel = adc
    mq = MQSensor(MODELS["mq2"], "methane", channel, load_ohm=10_000, supply_v=5.0, r0_ohm=10_000, warmup_s=0)
    chip.set_voltage(2, 2.5)  # Rs = RL·(5 − 2.5)/2.5 = 10 kΩ → Rs/R0 = 1 → ppm = a
    r = mq.read(now=1.0)
    assert r.valid
    assert r.rs_ohm == pytest.approx(10_000, rel=1e-3)
    assert r.ppm == pytest.approx(MODELS["mq2"].curves["methane"].a, rel=1e-2)
    # and the simulator's inverse: 5000 ppm CH4 (10 %LEL) back through the wire
    chip.set_voltage(2, mq.voltage_for(5000, 10_000))
    assert mq.read(now=1.0).ppm == pytest.approx(5000, rel=0.01)


def test_curve_constants_match_the_datasheet_points() -> None:
    ch4 = MODELS["mq2"].curves["methane"]
    assert ch4.ratio(200) == pytest.approx(3.0, rel=0.01)
    assert ch4.ratio(10000) == pytest.approx(0.70, rel=0.01)
    co = MODELS["mq7"].curves["co"]
    assert co.ppm(co.ratio(100)) == pytest.approx(100)


def test_calibration_in_clean_air_refused_during_warmup(adc: tuple[SimADS1115, AnalogIn]) -> None:
    chip, channel = adc
    mq = MQSensor(MODELS["mq2"], "methane", channel, warmup_s=180, powered_at=0.0)
    chip.set_voltage(2, mq.voltage_for(0, r0_ohm=12_000))  # clean air for a sensor whose true R0 is 12 kΩ
    assert not mq.read(now=10.0).valid
    with pytest.raises(WarmingUp, match="Wait 170 s"):
        mq.calibrate(now=10.0, samples=5)
    assert mq.calibrate(now=200.0, samples=5) == pytest.approx(12_000, rel=2e-3)
    reading = mq.read(now=200.0)
    assert reading.valid and reading.ratio == pytest.approx(9.83, rel=2e-3)


def test_temperature_humidity_compensation(adc: tuple[SimADS1115, AnalogIn]) -> None:
    chip, channel = adc
    mq = MQSensor(MODELS["mq7"], "co", channel, r0_ohm=5_000, warmup_s=0)
    hot_humid = Climate(40.0, 85.0)
    chip.set_voltage(2, mq.voltage_for(100, 5_000, hot_humid))  # Rs drops in warm, humid air
    assert mq.read(1.0, hot_humid).ppm == pytest.approx(100, rel=0.01)
    assert mq.read(1.0, None).ppm > 110  # uncompensated, the same voltage overstates CO
    assert climate_factor(MODELS["mq2"], 20, 33) == pytest.approx(1.0)
    assert climate_factor(MODELS["mq2"], 50, 85) < climate_factor(MODELS["mq2"], -10, 33)


def test_unplugged_sensor_is_a_clear_error(adc: tuple[SimADS1115, AnalogIn]) -> None:
    chip, channel = adc
    mq = MQSensor(MODELS["mq2"], "lpg", channel, r0_ohm=10_000, warmup_s=0)
    chip.set_voltage(2, 0.0)
    with pytest.raises(ValueError, match="unplugged or shorted"):
        mq.read(1.0)
    with pytest.raises(ValueError, match="curves for"):
        MQSensor(MODELS["mq7"], "methane", channel)


def test_calibration_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    entry = SensorCalibration(model="mq2", r0_ohm=9876.5, calibrated_at=datetime(2026, 11, 26, tzinfo=UTC), samples=50)
    save_calibration(path, "mq2-hall", entry)
    save_calibration(path, "mq7-hall", entry.model_copy(update={"model": "mq7"}))
    loaded = load_calibrations(path)
    assert loaded.sensors["mq2-hall"] == entry
    assert json.loads(path.read_text())["sensors"]["mq7-hall"]["model"] == "mq7"
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="recalibrate"):
        load_calibrations(path)
