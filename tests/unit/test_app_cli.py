"""``s4edge agent check|run``: a bad config is refused before anything starts, naming file and key."""

from __future__ import annotations

import subprocess
import sys
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


def test_the_config_option_points_to_a_file_a_wheel_install_has() -> None:
    # "see firmware_configs/sim-node.yaml": a node installed from the wheel has no such file
    import typer

    from s4edge.edge.cli import agent_app

    helps = {
        name: param.help
        for name, command in typer.main.get_group(agent_app).commands.items()
        for param in command.params
        if param.name == "config"
    }
    assert set(helps) == {"check", "run", "status"}
    for name, text in helps.items():
        assert "firmware_configs" not in text and "`s4edge provision` writes" in text, (name, text)


def camera_node(tmp_path: Path, model: dict, url: str = "replay:clip.avi") -> Path:
    """node.yaml with one replayed camera through ``model``; the clip is there (build opens nothing)."""
    data = yaml.safe_load(SIM.read_text())
    data["outbox"] = {"path": str(tmp_path / "state" / "outbox.db")}
    data["sources"] = [{"type": "vision", "name": "cam0", "camera": {"url": url}, "model": model}]
    (tmp_path / "clip.avi").write_bytes(b"")
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "node.yaml"


@pytest.fixture
def empty_model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model cache with nothing pulled, and no mirror to pull from."""
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("S4EDGE_MODEL_MIRROR", raising=False)
    return tmp_path / "cache"


def test_check_refuses_a_model_the_catalogue_does_not_have(tmp_path: Path) -> None:
    # `agent check` passed `model: no-such-model`, and the agent then failed as it started
    node_yaml = camera_node(tmp_path, {"name": "no-such-model"})
    result = runner.invoke(app, ["agent", "check", "--config", str(node_yaml)])
    assert result.exit_code == 2, result.output
    assert f"{node_yaml}: sources.0.model.name: unknown model 'no-such-model'" in result.output
    assert "fastestdet" in result.output and "s4edge models list" in result.output


def test_check_reads_the_catalogue_without_loading_a_model_or_opening_the_camera(tmp_path: Path) -> None:
    node_yaml = camera_node(tmp_path, {"name": "fastestdet"})
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom s4edge.cli import app\n"
        f"result = CliRunner().invoke(app, ['agent', 'check', '--config', {str(node_yaml)!r}])\n"
        "print(result.exit_code, 'onnxruntime' in sys.modules, 'cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "False"], out.stdout + out.stderr


def test_check_refuses_a_model_whose_weights_are_not_cached_and_cannot_be_pulled(
    tmp_path: Path, empty_model_cache: Path
) -> None:
    # offline, with nothing in the cache and nowhere to pull from, the agent could not start
    for model in ({"name": "fastestdet-tflite"}, {"name": "fastestdet-tflite", "pull": False}):
        node_yaml = camera_node(tmp_path, model)
        result = runner.invoke(app, ["agent", "check", "--config", str(node_yaml)])
        assert result.exit_code == 2, result.output
        assert "sources.0.model.name: the weights of fastestdet-tflite are not in the model cache" in result.output
        assert str(empty_model_cache) in result.output
        assert "`s4edge models pull fastestdet-tflite --from DIR`" in result.output


def test_check_warns_of_weights_the_agent_will_pull_as_it_starts(
    tmp_path: Path, empty_model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S4EDGE_MODEL_MIRROR", str(tmp_path / "mirror"))
    node_yaml = camera_node(tmp_path, {"name": "fastestdet-tflite"})
    result = runner.invoke(app, ["agent", "check", "--config", str(node_yaml)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "the agent pulls them as it starts" in result.output
    assert "`s4edge models pull fastestdet-tflite`" in result.output and ": ok (" in result.output
    shipped = runner.invoke(app, ["agent", "check", "--config", str(camera_node(tmp_path, {"name": "fastestdet"}))])
    assert shipped.exit_code == 0 and "warning" not in shipped.output, shipped.output


def test_check_warns_of_a_replay_file_that_is_not_there(tmp_path: Path) -> None:
    # the camera faults until the file is there, as an unplugged one does: the node still starts
    node_yaml = camera_node(tmp_path, {"name": "fastestdet"}, url="replay:clips/missing.avi")
    result = runner.invoke(app, ["agent", "check", "--config", str(node_yaml)])
    assert result.exit_code == 0, result.output
    assert f"sources.0.camera.url: nothing at {tmp_path / 'clips' / 'missing.avi'} to replay" in result.output
    assert "warning" in result.output
