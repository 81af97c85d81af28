"""Scripted incidents: a scenario file is a timeline of named signals, and the
``scenario`` source plays it as a simulated sensor so that a drill or a test can
replay an incident with no hardware.

Scenario file (YAML)::

    name: gas leak in the concourse
    duration_s: 60
    signals:                      # (seconds, value) points, linearly interpolated
      methane_lel: [[0, 0], [10, 30], [20, 50], [45, 50], [55, 0]]

A sensor alarms by threshold ``levels``, except CO, which alarms by exposure after
EN 50291-1 or UL 2034 (``profile``, edge/sensing/co.py) as a real CO sensor does. The
source's ``speed`` is its scenario clock (scenario seconds per wall second); the CO
exposure runs on that clock too, and a CO alert on a clock other than ×1 names it.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s4edge.cloud_sync.messages import Measurement, Severity
from s4edge.edge.alerts import Content, IncidentBook, Level, ThresholdRule, ValueAlarm
from s4edge.edge.config import NodeFile, problems_by_key
from s4edge.edge.sensing.co import PROFILES, COAlarm, ProfileName
from s4edge.edge.sources import SourceContext
from s4edge.yaml_text import load_yaml, yaml_problem

BUILTIN_DIR = Path(__file__).parent / "scenarios"


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    duration_s: float = Field(gt=0)
    signals: dict[str, list[tuple[float, float]]]

    @field_validator("signals")
    @classmethod
    def _sorted(cls, signals: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
        for name, points in signals.items():
            if not points:
                raise ValueError(f"signal {name!r} has no points")
            times = [t for t, _ in points]
            if times != sorted(times):
                raise ValueError(f"signal {name!r}: times must increase")
        return signals

    def value(self, signal: str, t: float) -> float:
        points = self.signals[signal]
        times = [p[0] for p in points]
        i = bisect.bisect_right(times, t)
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (t0, v0), (t1, v1) = points[i - 1], points[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1

    @classmethod
    def load(cls, path: Path) -> Scenario:
        path = resolve(path)
        try:
            return cls.model_validate(load_yaml(path.read_text()))
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the scenario file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not a valid scenario file: {yaml_problem(exc)}") from None
        except ValidationError as exc:
            raise ValueError(f"{path}: not a valid scenario file: {problems_by_key(exc)}") from None


def resolve(path: Path) -> Path:
    """A scenario is a file path, or the name of a built-in (``gas_leak``)."""
    path = Path(path)
    if path.exists():
        return path
    builtin = BUILTIN_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if builtin.exists():
        return builtin
    raise ValueError(f"scenario {str(path)!r} not found; built-ins: {', '.join(builtins())}")


def builtins() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


class LevelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_at: float
    severity: Severity
    hysteresis: float = Field(default=0.0, ge=0)


class SimulatedSensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: str
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{1,31}$")
    quantity: str
    unit: str
    direction: Literal["above", "below"] = "above"
    levels: list[LevelConfig] | None = Field(default=None, min_length=1, description="Threshold alarm levels")
    profile: ProfileName | None = Field(
        default=None, description="co only: alarm by exposure after en50291 (EN 50291-1) or ul2034 (UL 2034)"
    )
    raise_after_s: float = Field(default=0.0, ge=0)
    clear_after_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _one_alarm_model(self) -> SimulatedSensor:
        if self.kind == "co" and self.profile is None:
            # a CO threshold would alarm at 50 ppm at once; EN 50291-1 forbids any alarm before 60 min
            raise ValueError(
                f"sensor {self.signal}: CO alarms by exposure, not by threshold: "
                "set 'profile: en50291' (or ul2034) instead of 'levels'"
            )
        if self.profile is not None and self.kind != "co":
            raise ValueError(f"sensor {self.signal}: 'profile' is for kind co only; give 'levels' instead")
        if self.profile is not None and self.levels is not None:
            raise ValueError(f"sensor {self.signal}: give either 'profile' (CO exposure) or 'levels', not both")
        if self.profile is None and self.levels is None:
            raise ValueError(f"sensor {self.signal}: give the alarm 'levels'")
        return self


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["scenario"]
    name: str = "scenario"
    file: Annotated[Path, NodeFile()] = Field(description="Scenario YAML, or a built-in name such as gas_leak")
    period_s: float = Field(default=1.0, gt=0, description="Poll period of the simulated sensors")
    speed: float = Field(
        default=1.0, gt=0, description="Scenario clock: scenario seconds per wall second (60: one minute a second)"
    )
    loop: bool = False
    sensors: list[SimulatedSensor] = Field(min_length=1)


class ScenarioSource:
    """Plays a scenario through threshold rules, as a real sensor poll loop would."""

    def __init__(self, config: Config, scenario: Scenario, book: IncidentBook) -> None:
        missing = {s.signal for s in config.sensors} - scenario.signals.keys()
        if missing:
            raise ValueError(f"scenario {scenario.name!r} has no signal(s) {sorted(missing)}")
        self.name = config.name
        self.config = config
        self.scenario = scenario
        self.alarms = [self._alarm(s, book) for s in config.sensors]
        self.finished = False

    def _alarm(self, sensor: SimulatedSensor, book: IncidentBook) -> ValueAlarm | COAlarm:
        key = f"{self.config.name}:{sensor.signal}"
        if sensor.profile is not None:
            return COAlarm(key, PROFILES[sensor.profile], book, sensor.signal, time_scale=self.config.speed)
        assert sensor.levels is not None  # SimulatedSensor asks for one or the other
        rule = ThresholdRule(
            [Level(lv.on_at, lv.severity, lv.hysteresis) for lv in sensor.levels],
            direction=sensor.direction,
            raise_after_s=sensor.raise_after_s,
            clear_after_s=sensor.clear_after_s,
        )
        return ValueAlarm(key=key, kind=sensor.kind, rule=rule, book=book, quantity=sensor.quantity, unit=sensor.unit)

    def step(self, t: float, now: float, ctx: SourceContext) -> None:
        """One poll at scenario time ``t`` (node monotonic time ``now``)."""
        readings = []
        for sensor, alarm in zip(self.config.sensors, self.alarms, strict=True):
            value = self.scenario.value(sensor.signal, t)
            if isinstance(alarm, COAlarm):
                alarm.observe(value, now)
            else:
                alarm.observe(value, now, Content(title=f"{sensor.quantity} {value:g} {sensor.unit}"))
            readings.append(Measurement(quantity=sensor.quantity, value=value, unit=sensor.unit, sensor=sensor.signal))
        ctx.telemetry(readings)
        ctx.health.set(self.name, "ok")

    def run(self, ctx: SourceContext) -> None:
        start = ctx.clock()
        while not ctx.stop.is_set():
            now = ctx.clock()
            t = (now - start) * self.config.speed
            if t > self.scenario.duration_s:
                if not self.config.loop:
                    self.step(self.scenario.duration_s, now, ctx)
                    self.finished = True
                    ctx.health.set(self.name, "finished")
                    return
                start, t = now, 0.0
            self.step(t, now, ctx)
            ctx.stop.wait(self.config.period_s)


def build(config: Config, book: IncidentBook) -> ScenarioSource:
    return ScenarioSource(config, Scenario.load(config.file), book)
