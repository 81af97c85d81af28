"""The sensors source on a simulated bus: scenario → chips → drivers → alarms, and
sensor faults (I2C error, CRC error, stuck, disconnected) that raise and clear
``sensor_fault``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from s4edge.drivers.sim import SimBME280, SimSCD4x, SimSGP30
from s4edge.edge.alerts import AlertDraft, AlertNotStored, IncidentBook
from s4edge.edge.sensing import rig
from s4edge.edge.sensing.rig import build_source
from s4edge.edge.sensing.source import Config, SensorsSource


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


SENSORS: list[dict[str, Any]] = [
    {"name": "climate", "kind": "bme280"},
    {"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 30,
     "sim": {"signal": "methane_lel", "scale": 500}},
    {"name": "mq7", "kind": "mq7", "channel": 1, "r0_ohm": 10000, "warmup_s": 30, "sim": {"signal": "co_ppm"}},
    {"name": "co2", "kind": "scd4x"},
    {"name": "voc", "kind": "sgp30"},
    {"name": "flame", "kind": "flame", "sim": {"signal": "flame"}, "debounce_s": 1.0},
]  # fmt: skip


def make(tmp_path: Path, **extra: Any) -> tuple[SensorsSource, list[AlertDraft], Clock]:
    drafts: list[AlertDraft] = []
    clock = Clock()
    config = Config.model_validate(
        {"type": "sensors", "bus": "sim", "scenario": "gas_leak", "calibration_file": tmp_path / "cal.json",
         "sensors": SENSORS, **extra}
    )  # fmt: skip
    book = IncidentBook(drafts.append, update_interval_s=5.0)
    return build_source(config, book, clock=clock), drafts, clock


def run(source: SensorsSource, clock: Clock, until: float, scenario_offset: float = 0.0) -> None:
    while clock.t < until:
        assert source.world is not None
        source.world.apply(clock.t - scenario_offset)
        source.poll_once(clock.t)
        clock.t += 1.0


def test_gas_leak_scenario_raises_gas_and_flame_alerts(tmp_path: Path) -> None:
    source, drafts, clock = make(tmp_path)
    run(source, clock, 100, scenario_offset=40)  # 40 s of clean air first: the MQ heaters warm up
    kinds = {(d.kind, d.severity) for d in drafts}
    assert ("gas", "Moderate") in kinds and ("gas", "Severe") in kinds
    assert ("flame", "Extreme") in kinds
    assert {d.title for d in drafts if d.kind == "flame" and d.state == "new"} == {"Flame detected (flame)"}
    assert {d.kind for d in drafts if d.state == "end"} == {"gas", "flame"}
    assert not any(d.kind == "sensor_fault" for d in drafts)
    severe = next(d for d in drafts if d.severity == "Severe")
    lel = next(m.value for m in severe.measurements if m.unit == "%LEL")
    assert 40 <= lel <= 60


def test_no_gas_alarm_during_warmup(tmp_path: Path) -> None:
    source, drafts, clock = make(tmp_path)
    run(source, clock, 28)  # the leak reaches 40 %LEL at ~24 s, inside the 30 s warm-up
    assert not any(d.kind == "gas" for d in drafts)
    assert source.health["mq2"].state.startswith("warming up")


def _faults(drafts: list[AlertDraft], sensor: str) -> list[str]:
    return [d.state for d in drafts if d.kind == "sensor_fault" and sensor in (d.title or "")]


def test_i2c_errors_raise_a_fault_with_backoff_and_recover(tmp_path: Path) -> None:
    source, drafts, clock = make(tmp_path)
    run(source, clock, 5)
    assert source.world is not None
    source.world.bus.disconnect(0x77)
    run(source, clock, 60)
    assert _faults(drafts, "climate")[:1] == ["new"]
    assert source.health["climate"].delay(1.0) > 1.0  # backing off
    polls_while_down = source.world.bus.transactions
    source.world.bus.reconnect(0x77)
    run(source, clock, 100)
    assert _faults(drafts, "climate")[-1] == "end"
    assert source.health["climate"].state == "ok"
    assert source.world.bus.transactions > polls_while_down


def test_crc_errors_become_a_fault_and_clear(tmp_path: Path) -> None:
    source, drafts, clock = make(tmp_path)
    assert source.world is not None
    chip = source.world.chips["co2"]
    assert isinstance(chip, SimSCD4x)
    run(source, clock, 12)
    chip.corrupt_next(100)
    run(source, clock, 80)
    assert _faults(drafts, "co2")[0] == "new"
    assert "CRC" in next(d.detail or "" for d in drafts if d.kind == "sensor_fault")
    chip.repair()
    run(source, clock, 200)
    assert _faults(drafts, "co2")[-1] == "end"


def test_stuck_converter_and_out_of_range_value(tmp_path: Path) -> None:
    source, drafts, clock = make(tmp_path, health={"stuck_after_s": 20})
    assert source.world is not None
    adc = source.world.adcs[0x48]
    run(source, clock, 5)
    adc.stick(12345)
    run(source, clock, 40)
    assert "stuck" in (next(d for d in drafts if d.kind == "sensor_fault").detail or "")
    adc.stick(None)
    run(source, clock, 50)
    assert all(_faults(drafts, n)[-1] == "end" for n in ("mq2", "mq7"))
    bme = source.world.chips["climate"]
    assert isinstance(bme, SimBME280)
    bme.humidity_rh = 0.0
    bme.pressure_pa = 20000.0  # below any physical air pressure at ground level
    run(source, clock, 55)
    assert "outside the physical range" in (
        next(d for d in drafts if d.kind == "sensor_fault" and "climate" in (d.title or "")).detail or ""
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"levels": [{"on_at": float("nan"), "severity": "Severe"}]}, "finite number"),  # would never trigger
        ({"levels": [{"on_at": -5, "severity": "Severe"}]}, "greater than 0"),  # always on
        ({"levels": [{"on_at": 10, "severity": "Severe", "hysteresis": 50}]}, "must be below on_at"),  # never clears
        ({"levels": []}, "at least 1 item"),  # silently the defaults
        ({"supply_v": float("inf")}, "finite number"),
        ({"warmup_s": float("inf")}, "finite number"),  # never warm
        ({"full_scale_v": 5.0}, "PGA ranges"),
        ({"gas": "methan"}, r"gas must be one of \['lpg', 'methane', 'propane', 'smoke'\]"),  # doctor passed it
        ({"gas": "smoke", "levels": [{"on_at": 5, "severity": "Severe"}]}, "smoke has no lower explosive limit"),
    ],
)
def test_impossible_sensor_settings_are_refused(change: dict[str, Any], says: str) -> None:
    mq2 = {"name": "mq2", "kind": "mq2", "channel": 0, **change}
    with pytest.raises(ValueError, match=says):
        Config.model_validate({"type": "sensors", "sensors": [mq2]})


def test_mq_sensors_on_one_converter_share_its_range() -> None:
    # one ADS1115, one PGA: a sensor set to a wider range read clipped values as valid
    two = [
        {"name": "a", "kind": "mq2", "channel": 0, "full_scale_v": 2.048},
        {"name": "b", "kind": "mq7", "channel": 1},
    ]
    with pytest.raises(ValueError, match="need one full_scale_v"):
        Config.model_validate({"type": "sensors", "sensors": two})
    two[1]["address"] = 0x49  # a second converter: its own range
    Config.model_validate({"type": "sensors", "sensors": two})


@pytest.mark.parametrize(
    ("second", "says"),
    [
        ({"name": "b", "kind": "mq7", "channel": 0}, "a and b are both on input 0 of the ADS1115 at 0x48"),
        ({"name": "b", "kind": "bme280", "address": 0x48}, "a and b both use I2C address 0x48"),
        ({"name": "b", "kind": "sgp30"}, "a and b both use I2C address 0x58"),
    ],
)
def test_two_devices_on_one_input_or_address_are_refused(second: dict[str, Any], says: str) -> None:
    # both read one voltage (a leak at one sensor vanished into the other's reading), or two
    # chips answered at one address
    first = {"name": "a", "kind": "sgp30"} if second["kind"] == "sgp30" else {"name": "a", "kind": "mq2", "channel": 0}
    with pytest.raises(ValueError, match=says):
        Config.model_validate({"type": "sensors", "sensors": [first, second]})


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the ADS1115 'channel'"):
        Config.model_validate({"type": "sensors", "sensors": [{"name": "x", "kind": "mq2"}]})
    with pytest.raises(ValueError, match="must be 'sim' or an I2C device"):
        Config.model_validate({"type": "sensors", "bus": "COM3", "sensors": SENSORS})
    with pytest.raises(ValueError, match="no signal"):
        make(tmp_path, sensors=[{"name": "f", "kind": "smoke", "sim": {"signal": "nope"}}])


def test_clipped_adc_and_missing_calibration_are_reported(tmp_path: Path) -> None:
    sensors = [
        {"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 0, "full_scale_v": 2.048},
        {"name": "mq7", "kind": "mq7", "channel": 1, "warmup_s": 0, "full_scale_v": 2.048},  # no R0 anywhere
    ]
    source, drafts, clock = make(tmp_path, sensors=sensors, scenario=None)
    assert source.world is not None
    source.world.adcs[0x48].set_voltage(0, 3.0)  # above the ±2.048 V PGA range: the code clips
    source.world.adcs[0x48].set_voltage(1, 0.5)
    run(source, clock, 3)
    fault = next(d for d in drafts if d.kind == "sensor_fault")
    assert "mq2" in (fault.title or "") and "outside the physical range" in (fault.detail or "")
    assert source.health["mq7"].state.startswith("not calibrated")


def test_sgp30_gets_absolute_humidity_from_the_bme280(tmp_path: Path) -> None:
    source, _, clock = make(tmp_path)
    assert source.world is not None
    bme, sgp = source.world.chips["climate"], source.world.chips["voc"]
    assert isinstance(bme, SimBME280) and isinstance(sgp, SimSGP30)
    bme.temperature_c, bme.humidity_rh = 25.0, 50.0
    run(source, clock, 3)
    assert sgp.absolute_humidity == pytest.approx(11.5 * 256, abs=0.2 * 256)  # 25 °C, 50 %RH ≈ 11.5 g/m³


def test_close_releases_what_the_source_opened_even_when_one_device_is_gone(tmp_path: Path) -> None:
    source, _, _ = make(tmp_path)
    released: list[str] = []

    def gone() -> None:
        raise OSError("No such device")

    source.closers = [gone, lambda: released.append("bus")]
    source.close()
    source.close()  # closing twice releases once
    assert released == ["bus"]


def test_a_clipping_adc_keeps_the_gas_alarm_it_raised(tmp_path: Path) -> None:
    # as the gas rose past the PGA's range, the reading became a sensor_fault alone: the gas
    # rule was no longer fed, and the Severe alarm ended as stale at the worst moment
    sensors = [{"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 0, "full_scale_v": 4.096}]
    source, drafts, clock = make(tmp_path, sensors=sensors, scenario=None)
    assert source.world is not None
    adc = source.world.adcs[0x48]
    adc.set_voltage(0, 3.5)  # 75 %LEL: Severe
    run(source, clock, 20)
    adc.set_voltage(0, 4.5)  # more gas still: the converter clips at 4.096 V
    run(source, clock, 200)
    book = source.book
    book.expire(clock.t)
    assert book.is_open("sensors:mq2"), [(d.kind, d.state, d.detail) for d in drafts]
    assert [d.state for d in drafts if d.kind == "gas"][-1] != "end"
    assert "outside the physical range" in (next(d for d in drafts if d.kind == "sensor_fault").detail or "")


def test_a_short_read_is_that_sensors_fault_and_the_others_are_still_read(tmp_path: Path) -> None:
    # a BME280 block read that came back short raised IndexError out of the whole round: no
    # sensor_fault, and the flame detector polled after it was never read again
    sensors = [{"name": "climate", "kind": "bme280"}, {"name": "flame", "kind": "flame", "sim": {"signal": "flame"}}]
    source, drafts, clock = make(tmp_path, sensors=sensors, scenario=None)
    assert source.world is not None
    chip = source.world.chips["climate"]
    whole = chip.read_register
    chip.read_register = lambda reg, length: whole(reg, length)[: length - 2] if reg == 0xF7 else whole(reg, length)
    pin = source.world.pins["flame"][0]
    pin.set(True)
    run(source, clock, 10)
    assert pin.reads >= 5 and [d.kind for d in drafts if d.state == "new"] == ["flame", "sensor_fault"]
    assert "6 of 8 bytes" in source.health["climate"].state


@pytest.mark.parametrize("change", [{"period_s": 90}, {"health": {"backoff_max_s": 120}}])
def test_a_poll_slower_than_the_books_stale_time_is_refused(tmp_path: Path, change: dict[str, Any]) -> None:
    # a steady alarm (or fault) ended as stale between two polls and opened again as a new incident
    with pytest.raises(ValueError, match=r"within half of alerts\.stale_after_s"):
        make(tmp_path, **change)


def test_an_sgp30_in_clean_air_is_well_not_warming_up_for_ever(tmp_path: Path) -> None:
    # after its 15 s warm-up the chip's fixed 400 ppm / 0 ppb is also clean air's floor: the
    # probe took every such reading for the warm-up and said "warming up" for hours
    source, drafts, clock = make(tmp_path, sensors=[{"name": "voc", "kind": "sgp30"}], scenario=None)
    assert source.world is not None
    chip = source.world.chips["voc"]
    assert isinstance(chip, SimSGP30)
    chip.co2eq_ppm, chip.tvoc_ppb, chip.noise = 400.0, 0.0, 0.0
    run(source, clock, 10)
    assert source.health["voc"].state.startswith("warming up")
    run(source, clock, 3600)
    assert source.health["voc"].state == "ok" and not drafts  # the floor is no stuck reading


def test_an_output_shorted_to_the_supply_is_a_fault_never_a_gas_alarm(tmp_path: Path) -> None:
    # 4.99 V of 5 V is Rs ≈ 20 Ω: 6e10 ppm, thousands of times past any curve; it raised a
    # Severe gas alarm (and with NG112, a call) where the wiring was at fault
    sensors = [{"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 0}]  # PGA ±6.144 V
    source, drafts, clock = make(tmp_path, sensors=sensors, scenario=None)
    assert source.world is not None
    source.world.adcs[0x48].set_voltage(0, 4.99)
    run(source, clock, 20)
    assert [d.kind for d in drafts if d.state == "new"] == ["sensor_fault"]
    assert "outside the physical range" in (drafts[0].detail or "")


def test_an_open_element_or_unplugged_sensor_is_a_fault_not_clean_air(tmp_path: Path) -> None:
    # RL pulls the output to 0 V with no element in series: a few LSB above 0 V read as Rs of
    # tens of MΩ, "very clean air", and the sensor stayed ok for ever, blind to any leak
    sensors = [{"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 0}]
    source, drafts, clock = make(tmp_path, sensors=sensors, scenario=None)
    assert source.world is not None
    source.world.adcs[0x48].set_voltage(0, 0.0006)
    run(source, clock, 20)
    assert [d.kind for d in drafts if d.state == "new"] == ["sensor_fault"]
    assert "voltage" in (drafts[0].detail or "") and source.health["mq2"].state.startswith("fault")
    source.world.adcs[0x48].set_voltage(0, 0.46)  # clean air again: Rs/R0 ≈ 9.8
    run(source, clock, 40)
    assert source.health["mq2"].state == "ok"


def test_a_reading_past_the_whole_air_is_a_fault_and_its_alarm_holds(tmp_path: Path) -> None:
    # 4.5 V of 5 V gave 1.4 million ppm, 140 % of the air, with the sensor "ok"
    sensors = [{"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000, "warmup_s": 0}]
    source, drafts, clock = make(tmp_path, sensors=sensors, scenario=None)
    assert source.world is not None
    source.world.adcs[0x48].set_voltage(0, 4.5)
    run(source, clock, 20)
    assert sorted(d.kind for d in drafts if d.state == "new") == ["gas", "sensor_fault"]
    assert "methane" in (next(d for d in drafts if d.kind == "sensor_fault").detail or "")


def test_the_heat_alarm_holds_past_the_bme280s_rated_85_degrees(tmp_path: Path) -> None:
    # above 85 °C the reading was out of range: a fault alone, the heat alarm starved of
    # readings, and ended as stale while the fire went on
    source, drafts, clock = make(tmp_path, sensors=[{"name": "climate", "kind": "bme280"}], scenario=None)
    assert source.world is not None
    chip = source.world.chips["climate"]
    assert isinstance(chip, SimBME280)
    for temperature in range(25, 121, 5):
        chip.temperature_c = float(temperature)
        run(source, clock, clock.t + 10)
    run(source, clock, clock.t + 200)
    source.book.expire(clock.t)
    heat = [d for d in drafts if d.kind == "temperature"]
    assert heat and heat[-1].state != "end", [(d.kind, d.state, d.detail) for d in drafts]
    assert source.book.is_open("sensor_fault:climate")


def _real_board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sensor: dict[str, Any]) -> Config:
    """An ADS1115 at 0x48 on a bus the rig takes for a real /dev/i2c-N (no simulated world),
    with the process's heaters and CO alarms forgotten; the config of ``sensor`` on it."""
    from s4edge.drivers.sim import SimADS1115, SimBus
    from s4edge.edge.sensing import rig

    def board(config: Config, clock: Any) -> tuple[SimBus, None]:
        bus = SimBus()
        bus.attach(0x48, SimADS1115(0x48))
        return bus, None

    monkeypatch.setattr(rig, "open_bus", board)
    monkeypatch.setattr(rig, "_HEATERS_ON_SINCE", {})
    monkeypatch.setattr(rig, "_CO_ALARMS", {})
    return Config.model_validate(
        {"type": "sensors", "bus": "/dev/i2c-7", "calibration_file": tmp_path / "cal.json", "sensors": [sensor]}
    )


def test_a_reload_keeps_an_mq_heaters_warm_up_on_real_hardware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a reload rebuilt the sensor and started its 180 s warm-up again, though the heater never
    # lost power: the sensor was blind for minutes, and its open gas alarm ended as stale
    config = _real_board(monkeypatch, tmp_path, {"name": "mq2", "kind": "mq2", "channel": 0, "r0_ohm": 10000})
    clock = Clock()
    first = build_source(config, IncidentBook(lambda draft: None), clock=clock)
    clock.t = 600.0  # warm long since; then the config is reloaded
    again = build_source(config, IncidentBook(lambda draft: None), clock=clock)
    heaters = [probe.sensor for probe in (*first.probes, *again.probes) if isinstance(probe, rig.MQProbe)]
    assert [h.warmup_left(clock.t) for h in heaters] == [0.0, 0.0]
    moved = config.model_copy(update={"sensors": [config.sensors[0].model_copy(update={"channel": 1})]})
    (other,) = build_source(moved, IncidentBook(lambda draft: None), clock=clock).probes
    assert isinstance(other, rig.MQProbe) and other.sensor.warmup_left(clock.t) == 180.0  # another heater


def test_a_missing_i2c_adapter_is_the_sensors_fault_and_the_node_starts(tmp_path: Path) -> None:
    # building the source opened /dev/i2c-N at once: a missing or forbidden adapter stopped the
    # whole node (no uplink, no status, no camera) with one line
    config = Config.model_validate(
        {"type": "sensors", "bus": "/dev/i2c-97", "calibration_file": tmp_path / "cal.json",
         "sensors": [{"name": "climate", "kind": "bme280"}]}
    )  # fmt: skip
    drafts: list[AlertDraft] = []
    source = build_source(config, IncidentBook(drafts.append))
    for t in range(0, 200, 10):  # its reads back off
        source.poll_once(float(t))
    assert "cannot open /dev/i2c-97" in source.health["climate"].state
    assert "i2c group" in source.health["climate"].state
    assert [d.kind for d in drafts if d.state == "new"] == ["sensor_fault"]
    source.close()


def test_a_glitched_bme280_read_past_85_degrees_is_a_fault_not_a_heat_alarm(tmp_path: Path) -> None:
    # an all-ones data read (a bus glitch, a chip mid-reset) decodes to 187.6 °C with -9541 Pa:
    # taken as "at least this hot", it raised a Severe heat alarm on one sample
    source, drafts, clock = make(tmp_path, sensors=[{"name": "climate", "kind": "bme280"}], scenario=None)
    assert source.world is not None
    chip = source.world.chips["climate"]
    whole = chip.read_register
    chip.read_register = lambda reg, length: [0xFF] * length if reg == 0xF7 else whole(reg, length)
    run(source, clock, 5)
    assert [d.kind for d in drafts if d.state == "new"] == ["sensor_fault"]


def test_a_reload_keeps_a_co_sensors_exposure_on_real_hardware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the rebuilt CO alarm started its time-weighted exposure from 0: an hour towards EN 50291's
    # alarm began again at every reload
    config = _real_board(monkeypatch, tmp_path, {"name": "mq7", "kind": "mq7", "channel": 1, "r0_ohm": 10000})
    book = IncidentBook(lambda draft: None)
    (first,) = build_source(config, book).probes
    assert isinstance(first, rig.MQProbe) and first.co_alarm is not None
    first.co_alarm.observe(60.0, 0.0)
    first.co_alarm.observe(60.0, 1800.0)
    (again,) = build_source(config, book).probes  # the config reloaded
    assert isinstance(again, rig.MQProbe) and again.co_alarm is first.co_alarm
    (elsewhere,) = build_source(config, IncidentBook(lambda draft: None)).probes  # another node's book
    assert isinstance(elsewhere, rig.MQProbe) and elsewhere.co_alarm is not first.co_alarm


def test_an_alarm_the_node_could_not_take_is_no_sensor_fault(tmp_path: Path) -> None:
    # on a full disk, past the alerts the node keeps in memory, its emit refuses (AlertNotStored):
    # the disk's fault, not the sensor's, and the book raises the alarm again with a later sample
    drafts: list[AlertDraft] = []
    refusing = [True]

    def emit(draft: AlertDraft) -> None:
        if refusing[0]:
            raise AlertNotStored(f"{draft.kind} alert not stored: the disk is full")
        drafts.append(draft)

    clock = Clock()
    config = Config.model_validate(
        {"type": "sensors", "bus": "sim", "scenario": "gas_leak", "calibration_file": tmp_path / "cal.json",
         "sensors": SENSORS}
    )  # fmt: skip
    source = build_source(config, IncidentBook(emit, update_interval_s=5.0), clock=clock)
    run(source, clock, 70, scenario_offset=40)  # the leak is past its Moderate level by now
    assert not [h.state for h in source.health.values() if "not stored" in h.state]
    refusing[0] = False
    run(source, clock, 100, scenario_offset=40)
    assert ("gas", "new") in {(d.kind, d.state) for d in drafts}, "raised again once the node takes it"
    assert not any(d.kind == "sensor_fault" for d in drafts)
