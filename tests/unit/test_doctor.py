"""``s4edge doctor``: each check on real inputs or the chip simulators, and the CLI's JSON."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.drivers.sim import SimADS1115, SimBus
from s4edge.edge.doctor import (
    check_camera,
    check_clock,
    check_disk,
    check_i2c,
    check_model,
    check_serial,
)
from s4edge.edge.sensing.source import Config as SensorsConfig
from s4edge.edge.vision.catalogue import Catalogue, default_models_dir
from s4edge.edge.vision.source import Config as VisionConfig
from s4edge.testing import free_port

REPO = Path(__file__).resolve().parents[2]
SIM_NODE = REPO / "firmware_configs" / "sim-node.yaml"


def doctor_json(config: Path) -> tuple[int, dict[str, dict[str, str]]]:
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--json", "--broker-timeout", "3"])
    return result.exit_code, {c["name"]: c for c in json.loads(result.output)}


def sim_config(tmp_path: Path, url: str) -> Path:
    data = yaml.safe_load(SIM_NODE.read_text())
    data["mqtt"]["url"] = url
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_simulated_node_passes_config_and_fails_an_unreachable_broker(tmp_path: Path) -> None:
    code, checks = doctor_json(sim_config(tmp_path, f"mqtts://127.0.0.1:{free_port()}"))
    assert code == 1
    assert checks["config"]["status"] == "PASS" and "sim-node-1" in checks["config"]["detail"]
    assert checks["broker"]["status"] == "FAIL"
    assert "refused" in checks["broker"]["detail"].lower() and "broker running" in checks["broker"]["hint"]
    assert checks["disk"]["status"] == "PASS"
    assert checks["clock"]["status"] in ("PASS", "WARN")


def test_a_bad_config_is_a_fail_that_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("node_id: n1\nsite: s\nlocation: {lat: 95, lon: 0}\nmqtt: {url: mqtts://b:8883}\n")
    code, checks = doctor_json(bad)
    assert code == 1 and checks["config"]["status"] == "FAIL"
    assert "location.lat" in checks["config"]["detail"] and checks["config"]["hint"]


def test_the_table_output_names_every_check(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["doctor", "-c", str(sim_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}")), "--broker-timeout", "2"]
    )
    assert result.exit_code == 1
    for name in ("config", "broker", "clock", "disk"):
        assert name in result.output


def sensors(bus: str) -> SensorsConfig:
    return SensorsConfig.model_validate(
        {
            "type": "sensors",
            "bus": bus,
            "sensors": [
                {"name": "mq2-hall", "kind": "mq2", "channel": 0, "address": 0x48},
                {"name": "climate", "kind": "bme280", "address": 0x77},
                {"name": "flame-1", "kind": "flame", "pin": 17},
            ],
        }
    )


def test_i2c_reports_the_sensor_that_does_not_answer() -> None:
    bus = SimBus()
    bus.attach(0x48, SimADS1115(0x48))
    (check,) = check_i2c(SimpleNamespace(sources=[sensors("/dev/i2c-1")]), open_bus=lambda _: bus)
    assert check.status == "FAIL"
    assert "0x77 climate (bme280)" in check.detail and "0x48" not in check.detail
    assert "i2cdetect -y 1" in check.hint


def test_i2c_passes_when_every_address_answers() -> None:
    from s4edge.drivers.sim import SimBME280

    bus = SimBus()
    bus.attach(0x48, SimADS1115(0x48))
    bus.attach(0x77, SimBME280(0x77))
    (check,) = check_i2c(SimpleNamespace(sources=[sensors("/dev/i2c-1")]), open_bus=lambda _: bus)
    assert check.status == "PASS" and "0x48 mq2-hall" in check.detail and "0x77 climate" in check.detail


def test_a_missing_i2c_adapter_says_how_to_enable_it() -> None:
    if Path("/dev/i2c-9").exists():
        pytest.skip("this machine has a /dev/i2c-9")
    (check,) = check_i2c(SimpleNamespace(sources=[sensors("/dev/i2c-9")]))
    assert check.status == "FAIL" and "raspi-config" in check.hint


def test_serial_ports_are_opened_by_url() -> None:
    config = SimpleNamespace(sources=[{"type": "nir", "port": "loop://"}, {"type": "nir", "port": "/dev/ttyUSB97"}])
    good, bad = check_serial(config)
    assert (good.status, bad.status) == ("PASS", "FAIL")
    assert "dialout" in bad.hint and "/dev/ttyUSB97" in bad.detail


def test_the_clock_is_checked_for_ntp_and_for_a_sane_year() -> None:
    now = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    assert check_clock(lambda: "yes", lambda: now).status == "PASS"
    assert check_clock(lambda: "no", lambda: now).status == "WARN"
    assert check_clock(lambda: None, lambda: now).status == "WARN"
    unset = check_clock(lambda: "no", lambda: dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    assert unset.status == "FAIL" and "certificates" in unset.hint


def test_disk_space_for_the_outbox(tmp_path: Path) -> None:
    config = SimpleNamespace(outbox=SimpleNamespace(path=tmp_path / "outbox.db"))
    assert check_disk(config, min_mb=1, low_mb=2).status == "PASS"
    assert check_disk(config, min_mb=10**12, low_mb=10**12).status == "FAIL"
    later = SimpleNamespace(outbox=SimpleNamespace(path=tmp_path / "not-yet" / "outbox.db"))
    assert check_disk(later, min_mb=1, low_mb=2).status == "WARN"


def test_a_read_only_outbox_folder_fails_the_disk_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # doctor said PASS with 2 GB free on a read-only mount; the agent then refused to start:
    # "cannot open the outbox …: unable to open database file"
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o555)
    real_access = os.access
    # root writes any folder whatever its mode: what the node's own user's os.access says
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != state and real_access(path, mode))
    config = SimpleNamespace(outbox=SimpleNamespace(path=state / "outbox.db"))
    check = check_disk(config, min_mb=1, low_mb=2)
    assert check.status == "FAIL" and "not writable" in check.detail and str(state) in check.detail
    assert "agent's user" in check.hint


def test_a_config_that_is_not_yaml_says_what_to_fix(tmp_path: Path) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("node_id: n1\nlocation:\n\tlat: 1\n")
    code, checks = doctor_json(bad)
    assert code == 1 and checks["config"]["status"] == "FAIL"
    assert "line 3" in checks["config"]["detail"] and "tab" in checks["config"]["detail"]
    assert "keys named" not in checks["config"]["hint"]  # there are none: the file is not YAML


def vision(url: str, fps: float | None = None) -> VisionConfig:
    camera: dict[str, object] = {"url": url}
    if fps:
        camera["fps"] = fps
    return VisionConfig.model_validate({"type": "vision", "camera": camera, "model": {"name": "fastestdet"}})


def test_a_camera_that_is_not_there_fails_with_a_hint() -> None:
    (check,) = check_camera(SimpleNamespace(sources=[vision("replay:/nonexistent/clip.avi")]))
    assert check.status == "FAIL" and "v4l2-ctl" in check.hint


def test_a_camera_delivering_frames_at_its_rate_passes(shared: Path) -> None:
    clip = shared / "data" / "video" / "bench_people_640x480_15fps.avi"
    (check,) = check_camera(SimpleNamespace(sources=[vision(f"replay:{clip}", fps=15)]), frames=5)
    assert check.status == "PASS" and "5 frames" in check.detail


def test_the_shipped_default_model_passes_with_no_cache(tmp_path: Path) -> None:
    config = SimpleNamespace(sources=[vision("0", fps=1)])
    (shipped,) = check_model(config, Catalogue(default_models_dir(), tmp_path / "empty-cache"))
    assert shipped.status == "PASS" and "sha256 ok" in shipped.detail


def test_the_model_must_be_cached_with_the_right_sha256_and_run(shared: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"  # the catalogue without the shipped weights: as for any other model
    shutil.copytree(default_models_dir() / "fastestdet", models / "fastestdet", ignore=shutil.ignore_patterns("*.onnx"))
    catalogue = Catalogue(models, tmp_path / "cache")
    config = SimpleNamespace(sources=[vision("0", fps=1)])
    (missing,) = check_model(config, catalogue)
    assert missing.status == "FAIL" and "s4edge models pull fastestdet" in missing.hint

    weights = catalogue.pull("fastestdet", shared / "models")
    (ok,) = check_model(config, catalogue)
    assert ok.status == "PASS" and "sha256 ok" in ok.detail

    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    (tampered,) = check_model(config, catalogue)
    assert tampered.status == "FAIL" and "sha256" in tampered.detail


@pytest.mark.skipif(shutil.which("timedatectl") is None, reason="no timedatectl on this machine")
def test_the_real_ntp_state_is_read() -> None:
    assert check_clock().status in ("PASS", "WARN")
