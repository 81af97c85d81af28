"""``s4edge sensors``: find, read and calibrate sensors (``s4edge nir`` is in nir_cli).
Every command has ``--sim`` so that it works with no hardware."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from s4edge.yaml_text import load_yaml, yaml_problem

if TYPE_CHECKING:
    from s4edge.edge.alerts import AlertDraft

sensors_app = typer.Typer(help="Gas, CO, smoke/flame and climate sensors.", no_args_is_help=True)
console = Console()
EXAMPLE = Path(__file__).parent / "examples" / "sensors-sim.yaml"


def _fail(message: str) -> typer.Exit:
    # unwrapped and unstyled inside: a path or a hint must survive a narrow terminal and a grep
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=2)


NODE_KEYS = frozenset({"sources", "node_id", "site", "mqtt"})  # what tells a node config from a bare source's


def load_sensors_config(path: Path, sim: bool = False) -> Any:
    """A sensors source config: a bare one, or the first ``type: sensors`` of a node config.
    Errors name the key, never a value read from the file: a node config holds the broker's
    credentials (``edge.config``'s rule)."""
    from pydantic import ValidationError

    from s4edge.edge.config import ConfigError, load_config, problems_by_key
    from s4edge.edge.sensing.source import Config

    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise _fail(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:  # PyYAML's message quotes the line, a password perhaps
        raise _fail(f"{path}: {yaml_problem(exc)}") from None
    except (ValueError, RecursionError) as exc:
        raise _fail(f"{path}: YAML this tool cannot read ({type(exc).__name__})") from None
    try:
        if isinstance(data, dict) and NODE_KEYS & data.keys():  # a node config, as provision writes it
            found = [s for s in load_config(path).sources if isinstance(s, Config)]  # type: ignore[attr-defined]
            if not found:
                raise _fail(f"{path}: no source with type: sensors")
            config = found[0]
        else:
            config = Config.model_validate(data)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        raise _fail(f"{path}: {problems_by_key(exc)}") from None
    base = path.resolve().parent
    updates: dict[str, Any] = {}
    if not config.calibration_file.is_absolute():
        updates["calibration_file"] = base / config.calibration_file
    if config.scenario is not None and (base / config.scenario).exists():
        updates["scenario"] = base / config.scenario
    if sim:
        updates["bus"] = "sim"
    return config.model_copy(update=updates)


def _build(config: Any, on_alert: Callable[[AlertDraft], None], heater_on_s: float) -> Any:
    from s4edge.edge.alerts import IncidentBook
    from s4edge.edge.sensing.calibration import CalibrationError
    from s4edge.edge.sensing.probes import MQProbe
    from s4edge.edge.sources import PluginError, build_source

    try:  # as the agent builds it: a package it lacks (gpiozero for a pin) is named with its extra
        source: Any = build_source(config, IncidentBook(on_alert))
    except (PluginError, CalibrationError, ValueError, OSError, ImportError) as exc:
        raise _fail(str(exc)) from None
    for probe in source.probes:
        if isinstance(probe, MQProbe):
            probe.sensor.powered_at -= heater_on_s
    return source


@sensors_app.command("scan")
def scan(
    bus: str = typer.Option("/dev/i2c-1", help="I2C adapter to probe (a /dev/i2c-N device)."),
    sim: bool = typer.Option(False, "--sim", help="Probe the simulated bus of the example config instead."),
) -> None:
    """List I2C addresses that answer, and the serial ports that exist."""
    from serial.tools import list_ports

    from s4edge.drivers.i2c import scan as scan_bus

    if sim:
        source = _build(load_sensors_config(EXAMPLE, sim=True), lambda d: None, 0.0)
        addresses = scan_bus(source.world.bus)
    else:
        from s4edge.drivers.i2c import SMBus2Bus

        try:
            real = SMBus2Bus(bus)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot open {bus}: {exc} (is I2C enabled, and are you in the i2c group?)") from None
        addresses = scan_bus(real)
        real.close()
    table = Table(title=f"I2C {'sim' if sim else bus}")
    table.add_column("address")
    for addr in addresses:
        table.add_row(f"0x{addr:02x}")
    console.print(table)
    ports = Table(title="serial ports")
    ports.add_column("device")
    ports.add_column("description")
    for port in list_ports.comports():
        ports.add_row(port.device, port.description)
    console.print(ports)


def _table(source: Any, readings: list[Any], alerts: list[AlertDraft]) -> Table:
    table = Table(title=f"{source.name} ({source.config.bus})")
    for col in ("sensor", "quantity", "value", "unit"):
        table.add_column(col)
    for m in readings:
        table.add_row(m.sensor or "", m.quantity, f"{m.value:.4g}", m.unit)
    for name, health in source.health.items():
        table.add_row(name, "state", health.state, "")
    for draft in alerts[-5:]:
        table.add_row("[bold]alert[/bold]", draft.kind, f"{draft.severity} {draft.state}", draft.title or "")
    return table


@sensors_app.command("read")
def read(
    config: Path = typer.Option(..., "--config", "-c", help="Sensors config, or a node config with a sensors source."),
    watch: bool = typer.Option(False, "--watch", help="Keep polling in a live table (Ctrl-C to stop)."),
    count: int = typer.Option(1, help="Poll rounds without --watch (count; one config period_s apart)."),
    sim: bool = typer.Option(False, "--sim", help="Use simulated chips instead of the configured bus."),
    heater_on_s: float = typer.Option(
        0.0, help="Seconds the MQ heaters have already been on (their warm-up counts from then)."
    ),
) -> None:
    """Poll the configured sensors and print what they read."""
    cfg = load_sensors_config(config, sim)
    alerts: list[AlertDraft] = []
    source = _build(cfg, alerts.append, heater_on_s)
    start = time.monotonic()

    def poll() -> list[Any]:
        now = time.monotonic()
        if source.world is not None:
            source.world.apply(now - start)
        return list(source.poll_once(now))

    if not watch:
        readings: list[Any] = []
        for i in range(count):
            if i:
                time.sleep(cfg.period_s)
            readings = poll()
        console.print(_table(source, readings, alerts))
        return
    with Live(_table(source, poll(), alerts), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(cfg.period_s)
                live.update(_table(source, poll(), alerts))
        except KeyboardInterrupt:
            pass


@sensors_app.command("calibrate")
def calibrate(
    config: Path = typer.Option(
        ...,
        "--config",
        "-c",
        help="Sensors config, or a node config with a sensors source; its calibration_file is written.",
    ),
    sensor: str = typer.Option(..., "--sensor", help="Name of the MQ sensor to calibrate in clean air."),
    samples: int = typer.Option(50, min=1, help="Readings averaged into R0 (count, at least 1)."),
    heater_on_s: float = typer.Option(
        0.0, help="Seconds the heater has been on before this command (its warm-up is enforced)."
    ),
    sim: bool = typer.Option(False, "--sim", help="Calibrate a simulated chip in simulated clean air instead."),
) -> None:
    """Measure R0 in clean air and store it, with the date, in the calibration file."""
    from s4edge.edge.sensing.calibration import SensorCalibration, save_calibration
    from s4edge.edge.sensing.mq import WarmingUp
    from s4edge.edge.sensing.probes import BME280Probe, MQProbe

    cfg = load_sensors_config(config, sim)
    source = _build(cfg, lambda d: None, heater_on_s)
    probe = next((p for p in source.probes if p.name == sensor), None)
    if not isinstance(probe, MQProbe):
        names = [p.name for p in source.probes if isinstance(p, MQProbe)]
        raise _fail(f"no MQ sensor named {sensor!r}; MQ sensors in {config}: {names}")
    if source.world is not None:
        source.world.set_ppm(sensor, 0.0)  # the simulator's clean air
    climate = None
    for p in source.probes:
        if isinstance(p, BME280Probe):
            sample = p.poll(time.monotonic())
            p.judge(sample, time.monotonic())
            climate = p.climate
    try:
        r0 = probe.sensor.calibrate(time.monotonic(), samples, climate)
    except WarmingUp as exc:  # counted from this command's start: the board may have been on for hours
        raise _fail(f"{exc} If it has been powered longer, say how long with --heater-on-s SECONDS.") from None
    except Exception as exc:  # a driver fault during calibration: say what and stop
        raise _fail(f"{sensor}: calibration read failed: {exc}") from None
    entry = SensorCalibration(
        model=probe.sensor.model.name, r0_ohm=round(r0, 1), calibrated_at=datetime.now(UTC), samples=samples,
        temperature_c=climate.temperature_c if climate else None, humidity_rh=climate.humidity_rh if climate else None,
    )  # fmt: skip
    try:
        save_calibration(cfg.calibration_file, sensor, entry)
    except OSError as exc:  # /etc/s4edge is the service user's to read, not to write
        raise _fail(
            f"{sensor}: R0 = {r0:.0f} Ω measured, but {cfg.calibration_file} cannot be written "
            f"({exc.strerror or exc}): run this as a user who may write there (sudo), or set the "
            "source's calibration_file to a path that user may write"
        ) from None
    console.print(f"{sensor}: R0 = {r0:.0f} Ω, saved to {cfg.calibration_file}")
    fixed = next(s.r0_ohm for s in cfg.sensors if s.name == sensor)
    if fixed is not None:  # the config's r0_ohm wins over the file (rig.build_source)
        console.print(
            f"[yellow]warning:[/] {config} sets r0_ohm: {fixed:g} for {sensor}, which the node uses instead of "
            "the calibration file: remove it there for this calibration to take effect"
        )
