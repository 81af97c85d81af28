"""What a field technician hits commissioning a node from docs/deploy-raspberry-pi.md and
``--help``: every error names the key as the file spells it and says what to do."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.edge.doctor import check_gpio, check_simulation
from s4edge.edge.sensing.cli import EXAMPLE
from s4edge.edge.sensing.source import Config as SensorsConfig
from s4edge.testing import free_port

CONFIGS = Path(__file__).resolve().parents[2] / "firmware_configs"
SIM = CONFIGS / "sim-node.yaml"
runner = CliRunner()


def node_with_sensors(tmp_path: Path) -> dict:
    """The simulated node with the example's simulated sensors beside its scenarios."""
    data = yaml.safe_load(SIM.read_text())
    data["outbox"]["path"] = str(tmp_path / "state" / "outbox.db")
    data["sources"].append({"name": "gas", **yaml.safe_load(EXAMPLE.read_text())})
    return data


def test_a_config_error_names_the_key_as_the_file_spells_it(tmp_path: Path) -> None:
    data = node_with_sensors(tmp_path)
    gas = data["sources"][2]
    gas["period_s"] = -1
    gas["sensors"][3]["kind"] = "scd41"
    data["sources"][0].pop("file")
    camera = yaml.safe_load((CONFIGS / "vision-demo.yaml").read_text())["sources"][0]
    camera["scene"]["rules"][0]["dwel_s"] = 3
    data["sources"].append(camera)
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["agent", "check", "--config", str(tmp_path / "node.yaml")])
    assert result.exit_code == 2, result.output
    said = result.output
    # pydantic's location holds the source's type, which is no key of the file
    assert "sources.2.period_s: Input should be greater than 0" in said
    assert "sources.2.sensors.3.kind: Input should be" in said
    assert "sources.0.file: Field required" in said
    assert "sources.3.scene.rules.0.dwel_s: Extra inputs are not permitted" in said  # a rule's type: too
    assert "sources.2.sensors.period_s" not in said and "sources.0.scenario." not in said


def sensors_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sensors.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(EXAMPLE.read_text()), **changes}))
    return path


def test_sensors_commands_take_c_for_the_config_as_doctor_and_agent_do(tmp_path: Path) -> None:
    # provision's node.yaml says `s4edge doctor -c node.yaml`; `sensors read -c` was "No such option: -c"
    config = str(sensors_file(tmp_path))
    read = runner.invoke(app, ["sensors", "read", "-c", config, "--heater-on-s", "600"])
    assert read.exit_code == 0, read.output
    calibrate = runner.invoke(
        app,
        ["sensors", "calibrate", "-c", config, "--sensor", "mq2-concourse", "--samples", "3", "--heater-on-s", "600"],
    )
    assert calibrate.exit_code == 0, calibrate.output


def test_sensors_read_names_the_extra_a_detector_pin_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a flame detector on a real board without gpiozero: "error: No module named 'gpiozero'",
    # where the agent, for the same file, names the extra to install
    monkeypatch.setitem(sys.modules, "gpiozero", None)
    config = sensors_file(
        tmp_path, bus="/dev/i2c-97", scenario=None, sensors=[{"name": "flame-1", "kind": "flame", "pin": 17}]
    )
    result = runner.invoke(app, ["sensors", "read", "--config", str(config)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "needs the gpio extra" in said and "pip install" in said and "Traceback" not in said


def test_calibrate_says_what_to_do_when_the_calibration_file_cannot_be_written(tmp_path: Path) -> None:
    # the service user reads /etc/s4edge but may not write there: a PermissionError traceback
    config = sensors_file(tmp_path, calibration_file="no-such-folder/sensor_calibration.json")
    args = ["sensors", "calibrate", "--config", str(config), "--sensor", "mq2-concourse", "--samples", "3"]
    result = runner.invoke(app, [*args, "--heater-on-s", "600"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "sensor_calibration.json cannot be written" in said and "R0 = " in said
    assert "sudo" in said and "calibration_file" in said
    assert result.exception is None or isinstance(result.exception, SystemExit)


def detectors(bus: str) -> SimpleNamespace:
    return SimpleNamespace(
        sources=[
            SensorsConfig.model_validate(
                {
                    "type": "sensors",
                    "name": "gas",
                    "bus": bus,
                    "sensors": [{"name": "flame-1", "kind": "flame", "pin": 17}, {"name": "climate", "kind": "bme280"}],
                }
            )
        ]
    )


def test_doctor_opens_the_detectors_gpio_lines_as_the_agent_will() -> None:
    # every check passed, then the agent refused to start: "Unable to load any default pin factory!"
    def no_pin_library(pin: int | str, active_high: bool) -> object:
        raise RuntimeError("Unable to load any default pin factory!")

    (check,) = check_gpio(detectors("/dev/i2c-1"), open_pin=no_pin_library)
    assert check.name == "gpio gas" and check.status == "FAIL"
    assert "GPIO 17 flame-1 (flame)" in check.detail and "pin factory" in check.detail
    assert "python3-lgpio" in check.hint and "gpio group" in check.hint
    opened: list[tuple[int | str, bool]] = []

    def line(pin: int | str, active_high: bool) -> SimpleNamespace:
        opened.append((pin, active_high))
        return SimpleNamespace(close=lambda: None)

    (check,) = check_gpio(detectors("/dev/i2c-1"), open_pin=line)
    assert check.status == "PASS" and opened == [(17, False)]
    assert check_gpio(detectors("sim"), open_pin=no_pin_library) == []  # simulated lines need no library


def test_doctor_warns_that_a_simulated_node_reports_as_actual(tmp_path: Path) -> None:
    # a node commissioned on simulated sensors and a replayed clip passed every check, and its
    # scripted gas leak went out as status Actual: to the operators, and on to a PSAP
    data = node_with_sensors(tmp_path)
    data.pop("status")
    (check,) = check_simulation(parse_config(data))
    assert check.status == "WARN" and "status Actual" in check.detail
    assert "concourse: scenario gas_leak" in check.detail and "gas: simulated sensors" in check.detail
    assert "status: Exercise" in check.hint
    (check,) = check_simulation(parse_config({**data, "status": "Exercise"}))
    assert check.status == "PASS"
    assert check_simulation(parse_config({**data, "sources": []})) == []


def test_a_refused_sighup_reload_names_the_file_not_the_remote_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "node.yaml not applied, the running config stays: reload_config: 2 problem(s)": the
    # technician sent SIGHUP, and reload_config is the centre's command
    data = node_with_sensors(tmp_path)
    data["sources"] = data["sources"][:1]
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: no broker is reached
    node = Node(parse_config(data), base_dir=tmp_path)
    try:
        node_yaml = tmp_path / "node.yaml"
        node_yaml.write_text(yaml.safe_dump({**data, "heartbaet": {"interval_s": 5}}))
        with caplog.at_level(logging.ERROR, logger="s4edge.edge.app"):
            node._reload_file(node_yaml)
    finally:
        node.close(flush_s=0)
    (said,) = [r.getMessage() for r in caplog.records if "not applied" in r.getMessage()]
    assert said.startswith(f"{node_yaml} not applied, the running config stays: 1 problem(s)")
    assert "heartbaet" in said and "reload_config" not in said


def test_agent_run_help_shows_no_source_markup() -> None:
    # `s4edge agent run --help` read "then publish ``offline`` and stop cleanly"
    result = runner.invoke(app, ["agent", "run", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "SIGHUP" in result.output
    assert "``" not in result.output


def test_a_detector_line_that_does_not_open_is_named_with_its_sensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Pi 5 whose venv lacks lgpio: "error: Unable to load any default pin factory!", no sensor,
    # no pin, nothing to do; the agent refused to start with the same words
    from s4edge.edge.sensing import rig

    def no_pin_library(pin: int | str, *, active_high: bool) -> None:
        from gpiozero.exc import BadPinFactory  # an ImportError, though gpiozero itself is there

        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr(rig, "GpioInput", no_pin_library)
    config = sensors_file(
        tmp_path, bus="/dev/i2c-97", scenario=None, sensors=[{"name": "flame-1", "kind": "flame", "pin": 17}]
    )
    result = runner.invoke(app, ["sensors", "read", "--config", str(config)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "flame detector flame-1: GPIO 17 does not open: Unable to load any default pin factory!" in said
    assert "s4edge doctor" in said
