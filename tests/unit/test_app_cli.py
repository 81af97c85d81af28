"""``s4edge agent check|run``: a bad config is refused before anything starts, naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"
runner = CliRunner()


def test_check_accepts_the_simulated_node_config() -> None:
    result = runner.invoke(app, ["agent", "check", "--config", str(SIM)])
    assert result.exit_code == 0, result.output
    assert "demo-city/sim-node-1" in result.output


def test_check_names_file_key_and_expected_value(tmp_path: Path) -> None:
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"]["url"] = "tcp://broker:1883"
    data["location"]["lat"] = 123
    bad = tmp_path / "node.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["agent", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert str(bad) in result.output
    assert "mqtt.url" in result.output and "mqtt://" in result.output
    assert "location.lat" in result.output and "less than or equal to 90" in result.output


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load(SIM.read_text())
    data["heartbeat"]["intervall_s"] = 5
    bad = tmp_path / "node.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["agent", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert "heartbeat.intervall_s" in result.output and "Extra inputs are not permitted" in result.output


def test_run_with_a_bad_config_exits_2_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("node_id: [unclosed\n")
    result = runner.invoke(app, ["agent", "run", "--config", str(bad)])
    assert result.exit_code == 2
    assert str(bad) in result.output and "not valid YAML" in result.output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("blocker", ["a file where its folder should be", "a folder where the file should be"])
def test_run_with_an_outbox_that_cannot_be_opened_exits_1_in_one_line(tmp_path: Path, blocker: str) -> None:
    if blocker.startswith("a file"):
        (tmp_path / "state").write_text("")
        outbox = tmp_path / "state" / "outbox.db"  # its folder cannot be created: OSError
    else:
        outbox = tmp_path / "outbox.db"
        outbox.mkdir()  # sqlite3 cannot open a folder: sqlite3.Error
    data = yaml.safe_load(SIM.read_text())
    data["outbox"] = {"path": str(outbox)}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["agent", "run", "--config", str(tmp_path / "node.yaml"), "--log-format", "text"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: cannot open the outbox {outbox}: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["agent", "check", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "cannot read the config file" in result.output


def test_run_with_a_missing_scenario_exits_2(tmp_path: Path) -> None:
    data = yaml.safe_load(SIM.read_text())
    data["sources"][0]["file"] = "no_such_scenario"
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    bad = tmp_path / "node.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["agent", "run", "--config", str(bad)])
    assert result.exit_code == 2
    assert "no_such_scenario" in result.output and "sources" in result.output


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"node_id: n\xff1\n", "not UTF-8 text"),
        (b"node_id: n1\nheartbeat: {interval_s: " + b"9" * 5000 + b"}\n", "YAML this node cannot read"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "YAML this node cannot read"),
        (
            yaml.safe_dump({**yaml.safe_load(SIM.read_text()), "outbox": {"path": "out\0box.db"}}).encode(),
            "no file can",
        ),
    ],
)
def test_a_config_python_cannot_read_is_a_clear_error(tmp_path: Path, content: bytes, said: str) -> None:
    (tmp_path / "node.yaml").write_bytes(content)
    result = runner.invoke(app, ["agent", "check", "--config", str(tmp_path / "node.yaml")])
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("content", "says"), [(None, "cannot read"), ("not a cert\n", "is not a PEM certificate")])
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_ca_file_tls_cannot_use_is_named_at_start(
    tmp_path: Path, command: str, content: str | None, says: str
) -> None:
    # 'agent check' said ok, and 'agent run' blamed the outbox with exit 1, which systemd restarts for ever
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"] = {"url": "mqtts://127.0.0.1:1", "ca_file": "ca.crt"}
    data["outbox"] = {"path": str(tmp_path / "outbox.db")}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    if content is not None:
        (tmp_path / "ca.crt").write_text(content)
    result = runner.invoke(app, ["agent", command, "--config", str(tmp_path / "node.yaml")])
    assert result.exit_code == 2, result.output
    assert f"mqtt.ca_file: {'cannot read ' if content is None else ''}{tmp_path / 'ca.crt'}" in result.output
    assert says in result.output and "outbox" not in result.output


def test_tls_files_are_not_read_for_a_plain_broker(tmp_path: Path) -> None:
    # a config that worked before: over mqtt:// the CA file is never read, so its absence is no error
    data = yaml.safe_load(SIM.read_text())
    data["mqtt"] = {"url": "mqtt://127.0.0.1:1", "ca_file": "ca.crt"}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["agent", "check", "--config", str(tmp_path / "node.yaml")])
    assert result.exit_code == 0, result.output
