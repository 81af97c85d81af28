"""Hanwei MQ-series metal-oxide gas sensors read through an ADC channel.

The sensor's resistance Rs is in series with the load resistor RL across the supply
Vc; the ADC sees Vout across RL, so ``Rs = RL·(Vc − Vout)/Vout`` (MQ-2 datasheet,
"basic test loop"). Gas concentration follows a straight line on the datasheet's
log-log sensitivity figure: ``ppm = a·(Rs/R0)^b``, with R0 the sensor's resistance at
the datasheet's reference condition, found by calibrating in clean air, where
``Rs/R0`` is the datasheet's clean-air ratio.

Rs also depends on temperature and humidity. The datasheets plot Rs/Rs(20 °C, 33 %RH)
against temperature for 33 %RH and 85 %RH; the sensitivity curves hold at the
standard test condition 20 °C / 65 %RH. :func:`climate_factor` interpolates those
plots (points read off the figures, about ±0.03), and Rs is brought back to 20 °C /
65 %RH before the curve is applied.

The MQ-7 datasheet measures CO during the low-voltage (1.4 V) half of a 60 s / 90 s
heater cycle; this module reads whatever the ADC sees, so the heater cycling (and
reading at the end of the low phase) is the sensor board's job.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

STANDARD_T_C = 20.0  # "standard test conditions", MQ-2/MQ-7/MQ-135 datasheets
STANDARD_RH = 65.0


@dataclass(frozen=True)
class GasCurve:
    """``ppm = a·ratio^b`` on the datasheet's log-log figure, valid over ``range_ppm``."""

    a: float
    b: float
    range_ppm: tuple[float, float]
    source: str

    def ppm(self, ratio: float) -> float:
        return float(self.a * ratio**self.b)

    def ratio(self, ppm: float) -> float:
        return float((ppm / self.a) ** (1.0 / self.b))


# (temperature °C, Rs/Rs(20 °C, 33 %RH)) at 33 %RH and at 85 %RH
ClimateTable = tuple[tuple[tuple[float, float], ...], tuple[tuple[float, float], ...]]


@dataclass(frozen=True)
class MQModel:
    name: str
    clean_air_ratio: float
    curves: dict[str, GasCurve]
    climate: ClimateTable
    warmup_s: float


_MQSL = "exponential regression of the datasheet figure by MQSensorsLib (miguel5612)"
_FIG = "fitted through two points read off the datasheet's sensitivity figure (200 and 10000 ppm)"

MODELS: dict[str, MQModel] = {
    "mq2": MQModel(
        name="MQ-2",
        clean_air_ratio=9.83,  # MQ-2 datasheet sensitivity figure: air line ≈ 9.8
        curves={
            "lpg": GasCurve(574.25, -2.222, (200, 10000), _MQSL),
            "propane": GasCurve(658.71, -2.168, (200, 10000), _MQSL),
            "methane": GasCurve(3834.0, -2.688, (200, 10000), _FIG + ": Rs/R0 3.0 and 0.70"),
            "smoke": GasCurve(3158.0, -2.255, (200, 10000), _FIG + ": Rs/R0 3.4 and 0.60"),
        },
        climate=(
            ((-10, 1.30), (0, 1.16), (10, 1.07), (20, 1.00), (30, 0.94), (40, 0.89), (50, 0.86)),
            ((-10, 1.18), (0, 1.05), (10, 0.97), (20, 0.90), (30, 0.85), (40, 0.81), (50, 0.78)),
        ),
        warmup_s=180.0,
    ),
    "mq7": MQModel(
        name="MQ-7",
        clean_air_ratio=27.5,  # air line of the datasheet figure, as MQSensorsLib reads it
        curves={"co": GasCurve(99.042, -1.518, (20, 2000), _MQSL)},
        climate=(
            ((-10, 1.12), (0, 1.07), (10, 1.03), (20, 1.00), (30, 0.97), (40, 0.95), (50, 0.93)),
            ((-10, 1.03), (0, 0.98), (10, 0.94), (20, 0.92), (30, 0.89), (40, 0.87), (50, 0.85)),
        ),
        warmup_s=180.0,
    ),
    "mq135": MQModel(
        name="MQ-135",
        clean_air_ratio=3.6,  # MQ-135 datasheet sensitivity figure: air line ≈ 3.6
        curves={
            "co2": GasCurve(110.47, -2.862, (10, 200), _MQSL),
            "nh3": GasCurve(102.2, -2.473, (10, 300), _MQSL),
        },
        climate=(
            ((-10, 1.70), (0, 1.40), (10, 1.15), (20, 1.00), (30, 0.97), (40, 0.93), (50, 0.90)),
            ((-10, 1.60), (0, 1.30), (10, 1.05), (20, 0.90), (30, 0.87), (40, 0.83), (50, 0.80)),
        ),
        warmup_s=180.0,
    ),
}


def _interp(points: tuple[tuple[float, float], ...], x: float) -> float:
    xs = [p[0] for p in points]
    i = min(max(bisect.bisect_right(xs, x), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    x = min(max(x, xs[0]), xs[-1])  # no extrapolation past the datasheet's figure
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def climate_factor(model: MQModel, temperature_c: float, humidity_rh: float) -> float:
    """Rs(T, RH) / Rs(20 °C, 33 %RH), interpolated between the 33 % and 85 %RH curves."""
    dry, wet = (_interp(table, temperature_c) for table in model.climate)
    w = (min(max(humidity_rh, 20.0), 95.0) - 33.0) / (85.0 - 33.0)
    return dry + (wet - dry) * w


class Voltmeter(Protocol):
    def read_voltage(self) -> float: ...


class WarmingUp(RuntimeError):
    """The heater has not run long enough for Rs to be meaningful."""


@dataclass(frozen=True)
class MQReading:
    voltage_v: float
    rs_ohm: float
    ratio: float
    ppm: float
    valid: bool
    note: str = ""


@dataclass(frozen=True)
class Climate:
    temperature_c: float
    humidity_rh: float


class MQSensor:
    """One MQ sensor: divider physics, R0, compensation, and its warm-up."""

    def __init__(
        self,
        model: MQModel,
        gas: str,
        channel: Voltmeter,
        *,
        load_ohm: float = 10_000.0,
        supply_v: float = 5.0,
        r0_ohm: float | None = None,
        warmup_s: float | None = None,
        powered_at: float = 0.0,
    ) -> None:
        if gas not in model.curves:
            raise ValueError(f"{model.name} has curves for {sorted(model.curves)}, not {gas!r}")
        self.model = model
        self.gas = gas
        self.curve = model.curves[gas]
        self.channel = channel
        self.load_ohm = load_ohm
        self.supply_v = supply_v
        self.r0_ohm = r0_ohm
        self.warmup_s = model.warmup_s if warmup_s is None else warmup_s
        self.powered_at = powered_at

    def warmup_left(self, now: float) -> float:
        return max(0.0, self.powered_at + self.warmup_s - now)

    def rs_ohm(self, vout: float) -> float:
        if not 0.0 < vout < self.supply_v:
            raise ValueError(
                f"{self.model.name}: {vout:.3f} V is outside (0, {self.supply_v}) V: sensor unplugged or shorted"
            )
        return self.load_ohm * (self.supply_v - vout) / vout

    def standard_rs(self, rs: float, climate: Climate | None) -> float:
        """Rs referred to 20 °C / 65 %RH, where the sensitivity curves hold."""
        if climate is None:
            return rs
        here = climate_factor(self.model, climate.temperature_c, climate.humidity_rh)
        return rs * climate_factor(self.model, STANDARD_T_C, STANDARD_RH) / here

    def read(self, now: float, climate: Climate | None = None) -> MQReading:
        volts = self.channel.read_voltage()
        rs = self.standard_rs(self.rs_ohm(volts), climate)
        if self.r0_ohm is None:
            note = "not calibrated: run s4edge sensors calibrate"
            return MQReading(volts, rs, float("nan"), float("nan"), False, note)
        ratio = rs / self.r0_ohm
        ppm = self.curve.ppm(ratio)
        left = self.warmup_left(now)
        if left > 0:
            return MQReading(volts, rs, ratio, ppm, False, f"warming up, {left:.0f} s left")
        return MQReading(volts, rs, ratio, ppm, True)

    def calibrate(self, now: float, samples: int, climate: Climate | None = None) -> float:
        """R0 from ``samples`` readings in clean air: mean Rs / clean-air ratio."""
        left = self.warmup_left(now)
        if left > 0:
            raise WarmingUp(
                f"{self.model.name} heater has run {now - self.powered_at:.0f} s of its {self.warmup_s:.0f} s "
                f"warm-up: calibrating now would store a wrong R0. Wait {left:.0f} s and run it again."
            )
        rs = [self.standard_rs(self.rs_ohm(self.channel.read_voltage()), climate) for _ in range(samples)]
        self.r0_ohm = sum(rs) / len(rs) / self.model.clean_air_ratio
        return self.r0_ohm

    def voltage_for(self, ppm: float, r0_ohm: float, climate: Climate | None = None) -> float:
        """What Vout a sensor with ``r0_ohm`` shows at ``ppm`` (the simulator's inverse):
        clean air caps Rs at the clean-air ratio."""
        ratio = self.model.clean_air_ratio if ppm <= 0 else min(self.curve.ratio(ppm), self.model.clean_air_ratio)
        rs = ratio * r0_ohm
        if climate is not None:
            rs *= climate_factor(self.model, climate.temperature_c, climate.humidity_rh) / climate_factor(
                self.model, STANDARD_T_C, STANDARD_RH
            )
        return self.supply_v * self.load_ohm / (rs + self.load_ohm)
