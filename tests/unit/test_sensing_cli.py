"""`s4edge sensors` and `s4edge nir` through the root app, all with --sim."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.edge.sensing.cli import EXAMPLE

runner = CliRunner()


def sim_config(tmp_path: Path) -> Path:
    path = tmp_path / "sensors.yaml"
    shutil.copy(EXAMPLE, path)
    return path


def test_scan_sim_lists_the_chips() -> None:
    result = runner.invoke(app, ["sensors", "scan", "--sim"])
    assert result.exit_code == 0, result.output
    for addr in ("0x48", "0x58", "0x62", "0x77"):
        assert addr in result.output


def test_read_sim_prints_readings(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sensors", "read", "--config", str(sim_config(tmp_path)), "--heater-on-s", "600"])
    assert result.exit_code == 0, result.output
    assert "flammable_gas" in result.output and "%LEL" in result.output and "pressure" in result.output


def test_calibrate_stores_r0_and_refuses_during_warmup(tmp_path: Path) -> None:
    config = sim_config(tmp_path)
    args = ["sensors", "calibrate", "--config", str(config), "--sensor", "mq2-concourse", "--samples", "5"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "warm-up" in said and "--heater-on-s SECONDS" in said  # waiting and running it again never helped
    done = runner.invoke(app, [*args, "--heater-on-s", "600"])
    assert done.exit_code == 0, done.output
    # the example fixes r0_ohm in its config, which wins over the file: saved, and never used
    assert "remove it there for this calibration to take effect" in " ".join(done.output.split())
    stored = json.loads((tmp_path / "sensor_calibration.json").read_text())["sensors"]["mq2-concourse"]
    assert abs(stored["r0_ohm"] - 10_000) < 50  # the simulated sensor's true R0
    assert stored["calibrated_at"].startswith("20")
    wrong = runner.invoke(app, ["sensors", "calibrate", "--config", str(config), "--sensor", "climate"])
    assert wrong.exit_code == 2 and "no MQ sensor named" in wrong.output


def test_nir_train_and_predict_sim(tmp_path: Path) -> None:
    out = tmp_path / "models" / "precursors.json"
    args = ["nir", "train", "--sim", "--out", str(out), "--name", "precursors", "--max-components", "5"]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    assert out.exists() and out.with_suffix(".npz").exists()
    predicted = runner.invoke(app, ["nir", "predict", "--model", str(out), "--sim", "ammonium_nitrate"])
    assert predicted.exit_code == 0, predicted.output
    assert "ammonium_nitrate" in predicted.output
    missing = runner.invoke(app, ["nir", "predict", "--model", str(tmp_path / "none.json"), "--sim", "urea"])
    assert missing.exit_code == 2 and "train it again" in missing.output


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: sensors\nsensors:\n  - {name: a, kind: mq2}\n")
    result = runner.invoke(app, ["sensors", "read", "--config", str(bad)])
    assert result.exit_code == 2 and "channel" in result.output


SECRET = "Hunter2-S3cret"
NODE = f"node_id: n1\nsite: s1\nlocation: {{lat: 1, lon: 2}}\nmqtt: {{url: 'mqtt://127.0.0.1:1', password: {SECRET}}}\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (NODE, "no source with type: sensors"),  # as provision writes it: a raw pydantic dump with the password
        (NODE.replace(f"password: {SECRET}}}", f'password: "{SECRET}\n  x: 1}}'), "not valid YAML (line"),
        (b"\x00\x01garbage\xff\xfe", "not UTF-8 text"),  # a traceback
        ("type: sensors\nsensors: {name: a}\npassword: " + SECRET, "sensors: Input should be a valid list"),
    ],
)
def test_a_config_it_cannot_use_is_one_line_that_quotes_nothing_from_it(
    tmp_path: Path, text: str | bytes, says: str
) -> None:
    path = tmp_path / "node.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = runner.invoke(app, ["sensors", "read", "--config", str(path)])
    assert result.exit_code == 2 and says in result.output, result.output
    assert SECRET not in result.output and len(result.output.strip().splitlines()) == 1


def test_scan_of_a_missing_adapter_says_what_to_check() -> None:
    result = runner.invoke(app, ["sensors", "scan", "--bus", "/dev/i2c-99"])
    assert result.exit_code == 2
    assert "cannot open /dev/i2c-99" in result.output


def test_read_takes_a_node_config(tmp_path: Path) -> None:
    node = tmp_path / "node.yaml"
    sensors = EXAMPLE.read_text().replace("\n", "\n    ")
    node.write_text(
        "node_id: n1\nsite: s1\nlocation: {lat: 1, lon: 2}\nmqtt: {url: 'mqtt://127.0.0.1:1'}\n"
        f"sources:\n  - {sensors}\n"
    )
    result = runner.invoke(app, ["sensors", "read", "--config", str(node), "--heater-on-s", "600"])
    assert result.exit_code == 0, result.output
    assert "mq7-concourse" in result.output


def test_nir_train_on_corn_mat_and_on_real_exports_with_gaps(tmp_path: Path, shared: Path) -> None:
    corn = shared / "data/nir/corn/Data_Corn.mat"
    out = tmp_path / "corn.json"
    result = runner.invoke(app, ["nir", "train", "--data", str(corn), "--out", str(out), "--max-components", "8"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["kind"] == "regression"
    # Real InnoSpectra exports, one folder per class: their absorbance has NaN where
    # the sample signal went negative, which training refuses with a clear message.
    for cls, name in (("a", "demo0"), ("a", "demo1"), ("b", "demo2")):
        (tmp_path / "exports" / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / f"data/nir/innospectra/{name}.csv", tmp_path / "exports" / cls)
    refused = runner.invoke(app, ["nir", "train", "--data", str(tmp_path / "exports"), "--out", str(out)])
    assert refused.exit_code == 2
    assert "NaN" in refused.output
