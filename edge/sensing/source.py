"""The ``sensors`` source plugin: polls gas, CO, climate and detector sensors through
the real drivers, feeds the alarm rules, and reports telemetry and health.

    sources:
      - type: sensors
        bus: sim                      # or /dev/i2c-1
        scenario: gas_leak            # sim only: drives the simulated chips
        period_s: 1.0
        calibration_file: sensor_calibration.json
        sensors:
          - {name: mq2-hall, kind: mq2, gas: methane, address: 0x48, channel: 0,
             sim: {signal: methane_lel, scale: 500}}     # %LEL → ppm for the simulator
          - {name: mq7-hall, kind: mq7, gas: co, channel: 1, profile: en50291, sim: {signal: co_ppm}}
          - {name: climate, kind: bme280, address: 0x77}
          - {name: flame-1, kind: flame, pin: 17, sim: {signal: flame}}

Severity on CAP's scale: gas warning (10 %LEL) Moderate, alarm (40 %LEL) Severe; CO
pre-alarm Minor (local only, never forwarded), alarm Severe, alarm at ≥ 300 ppm
(EN 50291) / 400 ppm (UL 2034) Extreme; smoke Severe; flame Extreme; heat (EN 54-5 A1R)
Severe; sensor_fault Minor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from s4edge.cloud_sync.messages import Measurement, Severity
from s4edge.drivers import ads1115, bme280, scd4x, sgp30
from s4edge.drivers.ads1115 import FULL_SCALE_BITS
from s4edge.drivers.errors import DriverError
from s4edge.edge.alerts import AlertNotStored, IncidentBook
from s4edge.edge.config import NodeFile
from s4edge.edge.sensing.alarms import LEL_PERCENT_VOL
from s4edge.edge.sensing.co import ProfileName
from s4edge.edge.sensing.health import HealthPolicy, SensorHealth
from s4edge.edge.sensing.mq import MODELS
from s4edge.edge.sensing.probes import Probe, Sample
from s4edge.edge.sources import SourceContext

SensorKind = Literal["mq2", "mq7", "mq135", "scd4x", "sgp30", "bme280", "smoke", "flame"]
DEFAULT_GAS = {"mq2": "methane", "mq7": "co", "mq135": "co2"}
DEFAULT_ADDRESS = {
    "mq2": ads1115.DEFAULT_ADDRESS, "mq7": ads1115.DEFAULT_ADDRESS, "mq135": ads1115.DEFAULT_ADDRESS,
    "scd4x": scd4x.DEFAULT_ADDRESS, "sgp30": sgp30.DEFAULT_ADDRESS, "bme280": bme280.DEFAULT_ADDRESS,
}  # fmt: skip


class SimSignal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: str = Field(description="Scenario signal driving this sensor in the simulator")
    scale: float = Field(default=1.0, description="Multiplier from the signal's unit to the sensor's (e.g. %LEL→ppm)")


class LevelSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_at: float = Field(gt=0, allow_inf_nan=False)
    severity: Severity
    hysteresis: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _clears(self) -> LevelSetting:
        if self.hysteresis >= self.on_at:  # it would have to fall below zero to clear: it never would
            raise ValueError(f"hysteresis {self.hysteresis:g} must be below on_at {self.on_at:g}")
        return self


class SensorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: SensorKind
    address: int | None = Field(default=None, ge=0x08, le=0x77, description="I2C address; default: the chip's")
    channel: int | None = Field(default=None, ge=0, le=3, description="ADS1115 input of an MQ sensor")
    pin: int | str | None = Field(default=None, description="GPIO of a smoke/flame contact")
    active_high: bool = False
    gas: str | None = Field(default=None, description="MQ curve: mq2 methane|propane|lpg|smoke, mq7 co, mq135 co2|nh3")
    load_ohm: float = Field(default=10_000.0, gt=0, description="MQ load resistor RL")
    supply_v: float = Field(default=5.0, gt=0, allow_inf_nan=False, description="MQ circuit voltage Vc")
    full_scale_v: float = Field(default=6.144, description="ADS1115 PGA full-scale range, V (datasheet table 8)")
    r0_ohm: float | None = Field(default=None, gt=0, description="MQ R0; default: from the calibration file")
    warmup_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="MQ heater warm-up; default: the model's"
    )
    profile: ProfileName = Field(default="en50291", description="CO alarm standard: en50291 or ul2034")
    lel_percent_vol: float | None = Field(default=None, gt=0, description="Override the gas's LEL, %vol")
    levels: list[LevelSetting] | None = Field(default=None, min_length=1, description="% LEL alarm levels (gas)")
    debounce_s: float = Field(default=2.0, ge=0, description="Detector contact debounce")
    heat_alarm: bool = Field(default=True, description="bme280: rate-of-rise / fixed-temperature alarm")
    sim: SimSignal | None = None

    @field_validator("full_scale_v")
    @classmethod
    def _pga(cls, value: float) -> float:
        if value not in FULL_SCALE_BITS:
            raise ValueError(f"must be one of the ADS1115's PGA ranges {sorted(FULL_SCALE_BITS)} V")
        return value

    @model_validator(mode="after")
    def _wiring(self) -> SensorConfig:
        if self.kind.startswith("mq") and self.channel is None:
            raise ValueError(f"sensor {self.name}: an {self.kind} needs the ADS1115 'channel' (0..3)")
        if self.kind in ("smoke", "flame") and self.pin is None and self.sim is None:
            raise ValueError(f"sensor {self.name}: a {self.kind} detector needs a GPIO 'pin' (or 'sim')")
        if self.kind.startswith("mq"):
            self.gas = self.gas or DEFAULT_GAS[self.kind]
            curves = sorted(MODELS[self.kind].curves)
            if self.gas not in curves:  # a typo passed doctor, and the agent then refused to start
                raise ValueError(
                    f"sensor {self.name}: gas must be one of {curves} for an {self.kind}, not {self.gas!r}"
                )
            if self.levels and not (self.lel_percent_vol or LEL_PERCENT_VOL.get(self.gas)):
                raise ValueError(
                    f"sensor {self.name}: levels are % LEL alarm levels, and {self.gas} has no lower explosive "
                    "limit here: remove them, or give its LEL in lel_percent_vol"
                )
        return self


def address_of(sensor: SensorConfig) -> int:
    """The sensor's I2C address: its own, or its chip's default."""
    return sensor.address if sensor.address is not None else DEFAULT_ADDRESS[sensor.kind]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["sensors"]
    name: str = "sensors"
    bus: str = Field(default="sim", description="'sim', or an I2C adapter such as /dev/i2c-1")
    scenario: Annotated[Path | None, NodeFile()] = Field(
        default=None, description="sim only: scenario file or built-in name"
    )
    scenario_speed: float = Field(default=1.0, gt=0)
    period_s: float = Field(default=1.0, gt=0, description="Poll period per sensor")
    calibration_file: Annotated[Path, NodeFile()] = Path("sensor_calibration.json")
    health: HealthPolicy = HealthPolicy()
    sensors: list[SensorConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        names = [s.name for s in self.sensors]
        if len(names) != len(set(names)):
            raise ValueError(f"sensor names must be unique: {names}")
        if self.bus != "sim" and not self.bus.startswith("/dev/i2c-"):
            raise ValueError(f"bus must be 'sim' or an I2C device such as /dev/i2c-1, not {self.bus!r}")
        ranges: dict[int | None, set[float]] = {}
        for sensor in self.sensors:
            if sensor.kind.startswith("mq"):
                ranges.setdefault(sensor.address, set()).add(sensor.full_scale_v)
        shared = {
            f"0x{address:02x}" if address is not None else "the default 0x48": sorted(fsr)
            for address, fsr in ranges.items()
            if len(fsr) > 1
        }
        if shared:  # one converter, one PGA: the others' readings would clip unseen below their range
            raise ValueError(f"MQ sensors on one ADS1115 need one full_scale_v; these differ: {shared}")
        self._one_device_per_address()
        unwired = [s.name for s in self.sensors if s.kind in ("smoke", "flame") and s.pin is None]
        if self.bus != "sim" and unwired:
            raise ValueError(f"detectors {unwired} need a GPIO 'pin' on real hardware")
        return self

    def _one_device_per_address(self) -> None:
        """One ADS1115 input per MQ sensor, one chip per I2C address: two MQ sensors on one
        input read one voltage (a leak at one vanished into the other's reading), and two
        chips at one address answer at once, or one of them for both."""
        inputs: dict[tuple[int, int | None], str] = {}
        chips: dict[int, tuple[str, str]] = {}
        for sensor in self.sensors:
            if sensor.kind not in DEFAULT_ADDRESS:
                continue
            address = address_of(sensor)
            chip = "ads1115" if sensor.kind.startswith("mq") else sensor.kind
            if sensor.kind.startswith("mq"):
                taken = inputs.setdefault((address, sensor.channel), sensor.name)
                if taken != sensor.name:
                    raise ValueError(
                        f"sensors {taken} and {sensor.name} are both on input {sensor.channel} of the ADS1115 at "
                        f"0x{address:02x}: give each MQ sensor its own channel (0..3) or converter address"
                    )
            owner, kind = chips.setdefault(address, (sensor.name, chip))
            if kind != chip or (chip != "ads1115" and owner != sensor.name):
                raise ValueError(
                    f"sensors {owner} and {sensor.name} both use I2C address 0x{address:02x}: give one of them "
                    "its other address (address: …), as wired"
                )


class World(Protocol):
    """The simulated chips, set to a scenario's values at scenario time ``t``."""

    def apply(self, t: float) -> None: ...


class SensorsSource:
    def __init__(
        self,
        config: Config,
        book: IncidentBook,
        probes: list[Probe],
        world: World | None = None,
        closers: list[Callable[[], None]] | None = None,
    ) -> None:
        self.name = config.name
        self.closers = closers or []  # the bus and GPIO lines this source opened
        self.config = config
        self.book = book
        self.probes = probes
        self.world = world
        self.health = {p.name: SensorHealth(p.name, book, config.health) for p in probes}
        self.due = {p.name: 0.0 for p in probes}

    def poll_once(self, now: float) -> list[Measurement]:
        """Poll every sensor that is due; return the telemetry of this round."""
        telemetry: list[Measurement] = []
        for probe in self.probes:
            if now < self.due[probe.name]:
                continue
            health = self.health[probe.name]
            try:
                sample = probe.poll(now)
            except Exception as exc:  # a driver's error, or a bug: this probe's fault, never the others' silence
                expected = isinstance(exc, DriverError | OSError | ValueError)
                health.failed(now, str(exc) if expected else f"{type(exc).__name__}: {exc}")
                self.due[probe.name] = now + health.delay(self.config.period_s)
                continue
            self.due[probe.name] = now + self.config.period_s
            if sample is None:
                continue
            telemetry.extend(sample.readings)
            try:
                self._judge(probe, health, sample, now)
            except AlertNotStored:  # the node's full disk, not this sensor's fault: the book raises it again
                pass
            except Exception as exc:  # a rule's bug: as above
                health.failed(now, f"{type(exc).__name__}: {exc}")
        return telemetry

    def _judge(self, probe: Probe, health: SensorHealth, sample: Sample, now: float) -> None:
        bad = next(
            (m for m in sample.readings if m.quantity in probe.ranges
             and not probe.ranges[m.quantity][0] <= m.value <= probe.ranges[m.quantity][1]),
            None,
        )  # fmt: skip
        if bad is not None:
            health.out_of_range(now, bad, *probe.ranges[bad.quantity])
            if sample.saturated and sample.valid:
                # an ADC at full scale as the gas rises: at least this much, so the alarm holds;
                # starved of readings it would end as stale at the worst moment
                probe.judge(sample, now)
        elif health.succeeded(now, sample.raw) and sample.valid:
            probe.judge(sample, now)
        elif sample.note:
            health.state = sample.note

    def close(self) -> None:
        """Release the bus and GPIO lines, so that a reloaded config can open them again."""
        for close in self.closers:
            with contextlib.suppress(Exception):  # a device already gone has nothing to release
                close()
        self.closers = []

    def next_due(self) -> float:
        return min(self.due.values())

    def run(self, ctx: SourceContext) -> None:
        start = ctx.clock()
        while not ctx.stop.is_set():
            now = ctx.clock()
            if self.world is not None:
                self.world.apply((now - start) * self.config.scenario_speed)
            readings = self.poll_once(now)
            if readings:
                ctx.telemetry(readings)
            for name, health in self.health.items():
                ctx.health.set(f"{self.name}.{name}", health.state)
            ctx.stop.wait(max(0.0, self.next_due() - ctx.clock()))


def build(config: Config, book: IncidentBook) -> SensorsSource:
    from s4edge.edge.sensing.rig import build_source

    return build_source(config, book)
