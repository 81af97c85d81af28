"""The shipped systemd unit: restart policy, a dedicated user, hardening, and a unit file
that systemd itself accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.aggregator.cli import aggregator_app

UNIT = Path(__file__).resolve().parents[2] / "firmware_configs" / "systemd" / "s4edge-agent.service"


def test_agent_unit_prints_the_shipped_unit_for_an_install_without_a_checkout() -> None:
    result = CliRunner().invoke(app, ["agent", "unit"])
    assert result.exit_code == 0, result.output
    assert result.stdout == UNIT.read_text()


def settings(path: Path = UNIT) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_agent_restarts_on_failure_as_its_own_user_under_a_sandbox() -> None:
    unit = settings()
    assert unit["Restart"] == ["on-failure"] and unit["User"] == ["s4edge"]
    assert unit["ExecStart"][0].endswith("s4edge agent run --config /etc/s4edge/node.yaml")
    assert unit["StateDirectory"] == ["s4edge"]  # holds the outbox named by the board profiles
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[key] == [value], key
    # A watchdog only makes sense if the agent sends WATCHDOG=1 over sd_notify.
    assert ("WatchdogSec" in unit) == (unit["Type"] == ["notify"])
    # Any DeviceAllow (ProtectClock adds one) would hide the I2C, camera and serial devices.
    assert "ProtectClock" not in unit and "DeviceAllow" not in unit and "PrivateDevices" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists: point it at a binary this machine has.
    unit = tmp_path / "s4edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/s4edge/venv/bin/s4edge", shutil.which("true") or "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    complaints = [line for line in done.stderr.splitlines() if "s4edge-agent.service" in line]
    assert done.returncode == 0 and not complaints, done.stderr


AGGREGATOR_UNIT = UNIT.with_name("s4edge-aggregator.service")


def test_aggregator_unit_prints_the_shipped_unit() -> None:
    result = CliRunner().invoke(app, ["aggregator", "unit"])
    assert result.exit_code == 0, result.output
    assert result.stdout == AGGREGATOR_UNIT.read_text()


def test_the_aggregator_keeps_restarting_until_its_broker_and_store_answer() -> None:
    # after a power cut the centre may boot before the broker: it exits "did not start", and a
    # start limit would leave it down for good
    unit = settings(AGGREGATOR_UNIT)
    assert unit["Restart"] == ["on-failure"] and unit["StartLimitIntervalSec"] == ["0"]
    assert unit["ExecStart"][0].endswith("s4edge aggregator run $S4EDGE_AGGREGATOR_ARGS")
    assert unit["User"] == ["s4edge"] and unit["EnvironmentFile"] == ["/etc/s4edge/aggregator.env"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateDevices": "yes"}.items():
        assert unit[key] == [value], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_aggregator_unit(tmp_path: Path) -> None:
    unit = tmp_path / "s4edge-aggregator.service"
    text = AGGREGATOR_UNIT.read_text().replace("/opt/s4edge/venv/bin/s4edge", shutil.which("true") or "/bin/true")
    unit.write_text(text.replace("/etc/s4edge/aggregator.env", str(tmp_path / "aggregator.env")))
    (tmp_path / "aggregator.env").write_text("S4EDGE_AGGREGATOR_ARGS=--db sqlite:///x.db\n")
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    complaints = [line for line in done.stderr.splitlines() if "s4edge-aggregator.service" in line]
    assert done.returncode == 0 and not complaints, done.stderr


def test_the_aggregator_unit_takes_the_broker_password_from_a_file() -> None:
    # the unit's recipe put the password in aggregator.env (S4EDGE_BROKER_PASSWORD): in the
    # service's environment, where `ps e` and /proc/PID/environ show it, for want of a file option
    header = [line.removeprefix("#").strip() for line in AGGREGATOR_UNIT.read_text().splitlines() if line[:1] == "#"]
    assert not [line for line in header if line.startswith("S4EDGE_BROKER_PASSWORD")]
    documented = next(line for line in header if line.startswith("S4EDGE_AGGREGATOR_ARGS="))
    # the args as systemd passes them ($VAR unbraced: split at whitespace), parsed by the CLI itself
    args = shlex.split(documented.partition("=")[2])
    options = typer.main.get_group(aggregator_app).commands["run"].make_context("run", args).params
    assert options["password_file"] == Path("/etc/s4edge/broker.password") and "--password" not in args
    commands = [shlex.split(line, comments=True) for line in header if line.startswith("sudo install ")]
    installs = {command[-1]: command for command in commands}
    # readable by the service's group, not by other users (which `aggregator run` warns about)
    secret, folder = installs["/etc/s4edge/broker.password"], installs["/etc/s4edge"]
    assert secret[secret.index("-m") + 1] == "0640" and secret[secret.index("-g") + 1] == "s4edge"
    assert "-d" in folder and folder[folder.index("-g") + 1] == "s4edge"  # systemd sets the folder's mode only
