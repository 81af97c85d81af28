"""Composition of the sensors source: opens the bus the config names, builds the real
drivers on it, and wraps them in probes with their alarm rules. With ``bus: sim`` the
bus is a ``drivers.sim.SimBus`` whose chips a scenario drives, in physical units
converted to what each chip would put on the wire."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from s4edge.cloud_sync.messages import Severity
from s4edge.drivers.ads1115 import ADS1115, AnalogIn
from s4edge.drivers.bme280 import BME280
from s4edge.drivers.digital_input import DigitalInput, GpioInput
from s4edge.drivers.i2c import I2CBus, SMBus2Bus
from s4edge.drivers.scd4x import SCD4x
from s4edge.drivers.sgp30 import SGP30
from s4edge.drivers.sim import SimADS1115, SimBME280, SimBus, SimPin, SimSCD4x, SimSGP30
from s4edge.edge.alerts import IncidentBook, Level
from s4edge.edge.scenario import Scenario
from s4edge.edge.sensing.alarms import DEFAULT_GAS_LEVELS, LEL_PERCENT_VOL, HeatAlarm, detector_alarm, gas_alarm
from s4edge.edge.sensing.calibration import load_calibrations
from s4edge.edge.sensing.co import PROFILES, COAlarm
from s4edge.edge.sensing.mq import MODELS, Climate, MQSensor
from s4edge.edge.sensing.probes import BME280Probe, DetectorProbe, MQProbe, Probe, SCD4xProbe, SGP30Probe
from s4edge.edge.sensing.source import Config, SensorConfig, SensorsSource, address_of

SIM_R0_OHM = 10_000.0  # the simulated MQ sensors' true R0 when none is configured
SIM_NOISE_LSB = 1.0  # simulated chips are as noisy as real ones, so a steady room is not "stuck"


# When each MQ heater on a real bus was first powered, by (bus, address, channel), for this
# process: a config reload rebuilds the sensor, not the heater, which stays warm. Starting its
# warm-up again blinded the sensor for minutes, and ended its open gas alarm as stale.
_HEATERS_ON_SINCE: dict[tuple[str, int, int], float] = {}
# And each CO sensor's alarm, with its time-weighted exposure: rebuilt at a reload, an hour of
# exposure towards EN 50291's alarm started again from 0.
_CO_ALARMS: dict[tuple[str, int, int, str, str], COAlarm] = {}


def _co_alarm(
    config: Config, sensor: SensorConfig, address: int, key: str, book: IncidentBook, time_scale: float, *, real: bool
) -> COAlarm:
    """A CO sensor's alarm; on a real bus, the one it had before a reload, exposure and all,
    while it is the same sensor on the same incident book."""
    if not real:
        return COAlarm(key, PROFILES[sensor.profile], book, sensor.name, time_scale=time_scale)
    assert sensor.channel is not None
    held = _CO_ALARMS.get(which := (config.bus, address, sensor.channel, sensor.profile, key))
    if held is None or held.book is not book:
        _CO_ALARMS[which] = held = _co_alarm(config, sensor, address, key, book, time_scale, real=False)
    return held


def _no_wait(_s: float) -> None:
    """Simulated chips answer at once; the drivers' documented delays are skipped."""


class SimWorld:
    """The simulated chips of a sim rig, and the scenario that drives them."""

    def __init__(self, bus: SimBus, clock: Callable[[], float]) -> None:
        self.bus = bus
        self.clock = clock
        self.scenario: Scenario | None = None
        self.adcs: dict[int, SimADS1115] = {}
        self.chips: dict[str, SimSCD4x | SimSGP30 | SimBME280] = {}
        self.pins: dict[str, tuple[SimPin, SensorConfig]] = {}
        self.configs: dict[str, SensorConfig] = {}
        self.mq: dict[str, tuple[SensorConfig, MQSensor, float]] = {}

    def adc(self, address: int) -> SimADS1115:
        if address not in self.adcs:
            self.adcs[address] = SimADS1115(address, noise_lsb=SIM_NOISE_LSB)
            self.bus.attach(address, self.adcs[address])
        return self.adcs[address]

    def climate(self) -> Climate | None:
        bme = next((c for c in self.chips.values() if isinstance(c, SimBME280)), None)
        return Climate(bme.temperature_c, bme.humidity_rh) if bme else None

    def set_ppm(self, sensor: str, ppm: float) -> None:
        cfg, mq, r0 = self.mq[sensor]
        assert cfg.channel is not None
        self.adc(address_of(cfg)).set_voltage(cfg.channel, mq.voltage_for(ppm, r0, self.climate()))

    def apply(self, t: float) -> None:
        """Set every chip with a ``sim`` signal to the scenario's value at ``t``: MQ
        sensors as the ADC voltage of that ppm, the SCD4x's CO₂, the SGP30's TVOC, the
        BME280's temperature and the detectors' contacts."""
        if self.scenario is None:
            return
        for name, (cfg, _, _) in self.mq.items():
            if cfg.sim is not None:
                self.set_ppm(name, self.scenario.value(cfg.sim.signal, t) * cfg.sim.scale)
        for pin, cfg in self.pins.values():
            if cfg.sim is not None:
                pin.set(self.scenario.value(cfg.sim.signal, t) * cfg.sim.scale >= 0.5)
        for name, chip in self.chips.items():
            cfg = self.configs[name]
            if cfg.sim is None:
                continue
            value = self.scenario.value(cfg.sim.signal, t) * cfg.sim.scale
            if isinstance(chip, SimSCD4x):
                chip.co2_ppm = value
            elif isinstance(chip, SimSGP30):
                chip.tvoc_ppb = value
            else:
                chip.temperature_c = value

    def attach(self, cfg: SensorConfig, chip: SimSCD4x | SimSGP30 | SimBME280) -> None:
        if isinstance(chip, SimBME280):
            chip.noise_lsb = SIM_NOISE_LSB
        else:
            chip.noise = SIM_NOISE_LSB
        self.chips[cfg.name] = chip
        self.configs[cfg.name] = cfg
        self.bus.attach(address_of(cfg), chip)


def open_bus(config: Config, clock: Callable[[], float]) -> tuple[I2CBus, SimWorld | None]:
    if config.bus == "sim":
        bus = SimBus()
        return bus, SimWorld(bus, clock)
    return SMBus2Bus(config.bus, lazy=True), None  # a missing adapter is the sensors' fault, not the node's end


def build_source(
    config: Config,
    book: IncidentBook,
    *,
    clock: Callable[[], float] = time.monotonic,
    calibration_file: Path | None = None,
) -> SensorsSource:
    stale = book.stale_after_s
    slowest = max(config.period_s, config.health.backoff_max_s)
    if stale is not None and slowest > stale / 2:  # a report would come too late to keep its incident open
        raise ValueError(
            f"sensors source {config.name}: period_s ({config.period_s:g} s) and health.backoff_max_s "
            f"({config.health.backoff_max_s:g} s) must stay within half of alerts.stale_after_s ({stale:g} s), "
            "or an alarm or a fault ends as stale between two polls and opens again as a new incident"
        )
    bus, world = open_bus(config, clock)
    closers: list[Callable[[], None]] = [bus.close] if isinstance(bus, SMBus2Bus) else []
    if world is not None and config.scenario is not None:
        world.scenario = Scenario.load(config.scenario)
        missing = {s.sim.signal for s in config.sensors if s.sim} - world.scenario.signals.keys()
        if missing:
            raise ValueError(f"scenario {world.scenario.name!r} has no signal(s) {sorted(missing)}")
    calibrations = load_calibrations(calibration_file or config.calibration_file).sensors
    wait = _no_wait if world is not None else time.sleep
    adcs: dict[int, ADS1115] = {}
    probes: list[Probe] = []
    bme: BME280Probe | None = None
    now = clock()
    # simulated CO exposure runs on the scenario's clock, as the simulated room does (co.py)
    exposure_clock = config.scenario_speed if world is not None else 1.0

    def climate() -> Climate | None:
        return bme.climate if bme is not None else None

    for s in config.sensors:
        key = f"{config.name}:{s.name}"
        if s.kind in MODELS:
            assert s.channel is not None and s.gas is not None
            addr = address_of(s)
            if world is not None:
                world.adc(addr)
            if addr not in adcs:
                adcs[addr] = ADS1115(bus, addr, full_scale_v=s.full_scale_v, sleep=wait)
            entry = calibrations.get(s.name)
            r0 = s.r0_ohm or (entry.r0_ohm if entry else None)
            powered_at = now if world is not None else _HEATERS_ON_SINCE.setdefault((config.bus, addr, s.channel), now)
            sensor = MQSensor(
                MODELS[s.kind], s.gas, AnalogIn(adcs[addr], s.channel), load_ohm=s.load_ohm,
                supply_v=s.supply_v, r0_ohm=r0, warmup_s=s.warmup_s, powered_at=powered_at,
            )  # fmt: skip
            lel = s.lel_percent_vol or LEL_PERCENT_VOL.get(s.gas)
            levels = tuple(Level(lv.on_at, lv.severity, lv.hysteresis) for lv in s.levels or ()) or DEFAULT_GAS_LEVELS
            probes.append(
                MQProbe(
                    s.name, sensor, climate,
                    gas_alarm=gas_alarm(key, book, levels) if lel is not None else None,
                    lel_percent_vol=lel,
                    co_alarm=_co_alarm(config, s, addr, key, book, exposure_clock, real=world is None)
                    if s.gas == "co" else None,
                    adc_full_scale_v=s.full_scale_v,
                )
            )  # fmt: skip
            if world is not None:
                world.mq[s.name] = (s, sensor, r0 or SIM_R0_OHM)
        elif s.kind == "scd4x":
            if world is not None:
                world.attach(s, SimSCD4x(address_of(s), clock=clock))
            probes.append(SCD4xProbe(s.name, SCD4x(bus, address_of(s), sleep=wait)))
        elif s.kind == "sgp30":
            if world is not None:
                world.attach(s, SimSGP30(address_of(s), clock=clock))
            probes.append(SGP30Probe(s.name, SGP30(bus, address_of(s), sleep=wait), climate))
        elif s.kind == "bme280":
            if world is not None:
                world.attach(s, SimBME280(address_of(s)))
            heat = HeatAlarm(f"{config.name}:heat:{s.name}", book, s.name) if s.heat_alarm else None
            bme = BME280Probe(s.name, BME280(bus, address_of(s), sleep=wait), heat)
            probes.insert(0, bme)  # climate first, so MQ readings of the same round use it
        else:
            pin: DigitalInput
            if world is not None:
                pin = SimPin()
                world.pins[s.name] = (pin, s)
            else:
                assert s.pin is not None  # Config refuses a detector without a pin on real hardware
                try:
                    gpio = GpioInput(s.pin, active_high=s.active_high)
                except ModuleNotFoundError:
                    raise  # no gpiozero: edge.sources names the extra that installs it
                except Exception as exc:  # gpiozero's own: BadPinFactory (an ImportError: no pin library), GPIOPinInUse
                    raise OSError(
                        f"{s.kind} detector {s.name}: GPIO {s.pin} does not open: {exc} "
                        "(`s4edge doctor` says what to install or check)"
                    ) from None
                closers.append(gpio.close)
                pin = gpio
            severity: Severity = "Extreme" if s.kind == "flame" else "Severe"
            probes.append(DetectorProbe(s.name, pin, detector_alarm(key, s.kind, book, severity, s.debounce_s)))
    return SensorsSource(config, book, probes, world, closers)
