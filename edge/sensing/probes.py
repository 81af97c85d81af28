"""A probe is one configured sensor: it reads its driver (``poll``) and feeds its alarm
rules (``judge``). The poll loop in source.py handles timing, health and telemetry the
same way for all of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from s4edge.cloud_sync.messages import Measurement
from s4edge.drivers.bme280 import BME280
from s4edge.drivers.digital_input import DigitalInput
from s4edge.drivers.errors import DriverError, I2CError
from s4edge.drivers.scd4x import SCD4x
from s4edge.drivers.sgp30 import SGP30, WARMUP_S
from s4edge.edge.alerts import Content, ValueAlarm
from s4edge.edge.sensing.alarms import HeatAlarm, lel_percent
from s4edge.edge.sensing.co import COAlarm
from s4edge.edge.sensing.mq import Climate, MQSensor


class MissedRead(DriverError):
    """The sensor answered, but has produced no new data for too long."""


@dataclass
class Sample:
    readings: list[Measurement]
    raw: Hashable = None  # what must change over time (stuck detection); None: not checked
    valid: bool = True  # False while warming up: telemetry only, no alarms
    note: str = ""
    values: dict[str, float] = field(default_factory=dict)
    # out of range, and the true value at least this (a converter clipped, a chip past its
    # rated range, a gas past the whole air): an alarm on it must hold (source._judge), beside
    # the fault; any other value out of range is only a fault
    saturated: bool = False


class Probe(Protocol):
    name: str

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """Quantity → its physically possible values; a reading outside is the sensor's fault."""

    def poll(self, now: float) -> Sample | None:
        """Read the sensor; None when it has no new data yet (not a failure)."""

    def judge(self, sample: Sample, now: float) -> None: ...


def _m(quantity: str, value: float, unit: str, sensor: str) -> Measurement:
    return Measurement(quantity=quantity, value=round(value, 4), unit=unit, sensor=sensor)


# The most an MQ element's Rs can be: its clean-air ratio × R0, three times over (cold, dry
# air raises Rs by up to 1.4×: the datasheets' temperature figures); 10 MΩ before R0 is known,
# 20 times the clean-air Rs of any MQ datasheet's range. Above it, the divider's output is
# what RL pulls it to with no element in series: an open element or heater, a sensor unplugged.
MQ_RS_OVER_CLEAN_AIR = 3.0
MQ_OPEN_RS_OHM = 10e6
MOST_PPM = 1e6  # the whole air: a reading above it is an extrapolation no gas can reach


class MQProbe:
    """An MQ sensor; flammable gases alarm on % LEL, CO on exposure (co.py)."""

    def __init__(
        self,
        name: str,
        sensor: MQSensor,
        climate: Callable[[], Climate | None],
        *,
        gas_alarm: ValueAlarm | None = None,
        lel_percent_vol: float | None = None,
        co_alarm: COAlarm | None = None,
        adc_full_scale_v: float = 6.144,
    ) -> None:
        self.name = name
        self.sensor = sensor
        self.climate = climate
        self.gas_alarm = gas_alarm
        self.lel_percent_vol = lel_percent_vol
        self.co_alarm = co_alarm
        # A reading at the ADC's full scale is a clipped one: the PGA range is too small, and
        # the gas is at least that much. One within 1 % of the supply rail is no gas at all:
        # Rs near 0 Ω, thousands of times below any curve's range, is a shorted output.
        self._clips_v, self._rail_v = adc_full_scale_v * 0.999, sensor.supply_v * 0.99

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """The divider's output between an open element (``MQ_OPEN_RS_OHM``; R0 may come
        with a calibration) and the rail or the ADC's full scale; ppm up to the whole air."""
        sensor = self.sensor
        most_rs = (
            sensor.model.clean_air_ratio * sensor.r0_ohm * MQ_RS_OVER_CLEAN_AIR if sensor.r0_ohm else MQ_OPEN_RS_OHM
        )
        floor_v = sensor.supply_v * sensor.load_ohm / (most_rs + sensor.load_ohm)
        return {"voltage": (floor_v, min(self._rail_v, self._clips_v)), sensor.gas: (0.0, MOST_PPM)}

    def poll(self, now: float) -> Sample:
        r = self.sensor.read(now, self.climate())
        readings = [_m("voltage", r.voltage_v, "V", self.name)]
        values = {"ppm": r.ppm}
        if r.valid:
            readings.append(_m(self.sensor.gas, r.ppm, "ppm", self.name))
            if self.lel_percent_vol is not None:
                values["lel"] = lel_percent(r.ppm, self.lel_percent_vol)
                readings.append(_m("flammable_gas", values["lel"], "%LEL", self.name))
        saturated = self._clips_v < self._rail_v and r.voltage_v >= self._clips_v
        # fail-safe: past the whole air the sensor needs a look (the fault says so), and the
        # gas is high all the same; the alarm holds, as on a clipped converter. At the rail
        # it is the wiring (a shorted output), never gas: a fault alone.
        saturated = saturated or (r.valid and r.ppm > MOST_PPM and r.voltage_v < self._rail_v)
        return Sample(
            readings, raw=round(r.voltage_v, 6), valid=r.valid, note=r.note, values=values, saturated=saturated
        )

    def judge(self, sample: Sample, now: float) -> None:
        if self.gas_alarm is not None and "lel" in sample.values:
            lel = round(sample.values["lel"], 1)
            title = f"{self.sensor.gas} {lel:g} %LEL ({sample.values['ppm']:.0f} ppm)"
            self.gas_alarm.observe(lel, now, Content(title=title))
        if self.co_alarm is not None:
            self.co_alarm.observe(sample.values["ppm"], now)


class SCD4xProbe:
    """Periodic measurement every 5 s; a sample older than ``stale_after_s`` is a missed read."""

    def __init__(self, name: str, chip: SCD4x, stale_after_s: float = 20.0) -> None:
        self.name = name
        self.chip = chip
        self.stale_after_s = stale_after_s
        self.ranges = {"co2": (0.0, 40000.0), "temperature": (-10.0, 60.0), "humidity": (0.0, 100.0)}
        self._last_data: float | None = None

    def poll(self, now: float) -> Sample | None:
        if self._last_data is None:
            try:
                self.chip.start_periodic_measurement()  # raises on a bus error: retried at the next poll
            except I2CError:
                # Measuring already (the node restarted, or its config was reloaded): in
                # periodic mode the chip takes only a few commands (SCD4x datasheet, command
                # overview table) and NACKs a start: stop it (500 ms), then start it again.
                self.chip.stop_periodic_measurement()
                self.chip.start_periodic_measurement()
            self._last_data = now
        if not self.chip.data_ready():
            if now - self._last_data > self.stale_after_s:
                self._last_data = None  # restart periodic mode next time (the chip may have lost power)
                raise MissedRead(f"{self.name}: no new measurement for {self.stale_after_s:g} s")
            return None
        self._last_data = now
        r = self.chip.read_measurement()
        readings = [
            _m("co2", r.co2_ppm, "ppm", self.name),
            _m("temperature", r.temperature_c, "Cel", self.name),
            _m("humidity", r.humidity_rh, "%RH", self.name),
        ]
        return Sample(readings, raw=(r.co2_ppm, r.temperature_c, r.humidity_rh))

    def judge(self, sample: Sample, now: float) -> None:
        """CO₂ is an air-quality quantity here: telemetry only."""


def absolute_humidity(climate: Climate) -> float:
    """g/m³ from temperature and relative humidity (Magnus formula, as in the SGP30 datasheet's
    humidity-compensation section)."""
    t = climate.temperature_c
    return 216.7 * (climate.humidity_rh / 100.0 * 6.112 * math.exp(17.62 * t / (243.12 + t))) / (273.15 + t)


class SGP30Probe:
    """TVOC/eCO₂, humidity-compensated from the climate sensor when there is one."""

    def __init__(self, name: str, chip: SGP30, climate: Callable[[], Climate | None] = lambda: None) -> None:
        self.name = name
        self.chip = chip
        self.climate = climate
        self.ranges = {"tvoc": (0.0, 60000.0), "co2eq": (400.0, 60000.0)}  # SGP30 datasheet output ranges
        self._started = False
        self._began = 0.0  # when init_air_quality ran
        self._humidity_sent: float | None = None

    def poll(self, now: float) -> Sample:
        if not self._started:
            self.chip.begin()
            self._started, self._began = True, now
            self._humidity_sent = None
        climate = self.climate()
        try:
            if climate is not None:
                ah = round(absolute_humidity(climate), 1)
                if ah != self._humidity_sent:
                    self.chip.set_absolute_humidity(ah)
                    self._humidity_sent = ah
            r = self.chip.measure_air_quality()
        except I2CError:
            self._started = False  # the chip may have lost power: run init_air_quality again
            raise
        readings = [_m("co2eq", r.co2eq_ppm, "ppm", self.name), _m("tvoc", r.tvoc_ppb, "ppb", self.name)]
        # 400 ppm / 0 ppb is the warm-up's fixed answer, and clean air's floor after it: a
        # warm-up only in the first seconds after init; never a stuck reading (clean air holds it)
        warming = r.warming_up and now - self._began < WARMUP_S
        note = "warming up (first 15 s after init)" if warming else ""
        return Sample(readings, raw=None if r.warming_up else (r.co2eq_ppm, r.tvoc_ppb), valid=not warming,
                      note=note)  # fmt: skip

    def judge(self, sample: Sample, now: float) -> None:
        """TVOC/eCO₂ are air-quality quantities here: telemetry only."""


class BME280Probe:
    """Climate for the MQ compensation, and the heat alarm."""

    def __init__(self, name: str, chip: BME280, heat: HeatAlarm | None) -> None:
        self.name = name
        self.chip = chip
        self.heat = heat
        self.ranges = {"temperature": (-40.0, 85.0), "humidity": (0.0, 100.0), "pressure": (30000.0, 110000.0)}
        self.climate: Climate | None = None  # last good reading, used by the MQ probes

    def poll(self, now: float) -> Sample:
        r = self.chip.read()
        readings = [
            _m("temperature", r.temperature_c, "Cel", self.name),
            _m("humidity", r.humidity_rh, "%RH", self.name),
            _m("pressure", r.pressure_pa, "Pa", self.name),
        ]
        values = {"temperature": r.temperature_c, "humidity": r.humidity_rh}
        # past the chip's rated 85 °C (BME280 datasheet, operating range) in a fire: the
        # reading goes on rising, so the heat alarm holds on it while the fault says it is
        # unrated. Only a read whose humidity and pressure are possible too: an all-ones
        # glitch decodes to 187.6 °C with -9541 Pa, and must not raise a heat alarm
        plausible = all(
            low <= value <= high
            for (low, high), value in (
                (self.ranges["humidity"], r.humidity_rh),
                (self.ranges["pressure"], r.pressure_pa),
            )
        )
        hot = r.temperature_c > self.ranges["temperature"][1] and plausible
        return Sample(readings, raw=(r.temperature_c, r.humidity_rh, r.pressure_pa), values=values, saturated=hot)

    def judge(self, sample: Sample, now: float) -> None:
        if not sample.saturated:  # the MQ compensation holds over the chip's rated range only
            self.climate = Climate(sample.values["temperature"], sample.values["humidity"])
        if self.heat is not None:
            self.heat.observe(sample.values["temperature"], now)


class DetectorProbe:
    """A smoke or flame detector's dry contact, debounced by its alarm rule."""

    def __init__(self, name: str, pin: DigitalInput, alarm: ValueAlarm) -> None:
        self.name = name
        self.pin = pin
        self.alarm = alarm
        self.ranges: dict[str, tuple[float, float]] = {}

    def poll(self, now: float) -> Sample:
        active = 1.0 if self.pin.read() else 0.0
        return Sample([_m(self.alarm.kind, active, "state", self.name)], values={"state": active})

    def judge(self, sample: Sample, now: float) -> None:
        what = "Flame detected" if self.alarm.kind == "flame" else f"{self.alarm.kind.capitalize()} detected"
        self.alarm.observe(sample.values["state"], now, Content(title=f"{what} ({self.name})"))
