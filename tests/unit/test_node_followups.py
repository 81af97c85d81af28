"""Node follow-ups: the heartbeat's vision figures from what cameras write into Health,
the SoC temperature file from config, and Ed25519 command signatures."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from s4edge.cloud_sync.fleet.provision import NodeRequest, board_names, load_board, node_config
from s4edge.cloud_sync.messages import Command, ModelRef, encode, signing_bytes, topic_for
from s4edge.drivers.sim.frames import SimulatedCamera
from s4edge.edge.alerts import IncidentBook
from s4edge.edge.app import Node
from s4edge.edge.config import ConfigError, parse_config, parse_config_text
from s4edge.edge.health import Health, find_thermal_zone
from s4edge.edge.sources import SourceContext
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.capture import Capture
from s4edge.edge.vision.pipeline import VisionPipeline
from s4edge.edge.vision.tracker import Tracker
from s4edge.edge.vision.types import Detection
from s4edge.testing import eventually as wait_until
from s4edge.testing import free_port

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"


def config_data(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(SIM.read_text())
    data["outbox"]["path"] = str(tmp_path / "outbox.db")
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: no broker needed
    data["sources"] = []
    data.update(changes)
    return data




@pytest.fixture
def make_node(tmp_path: Path):
    made: list[Node] = []

    def make(**changes: Any) -> Node:
        node = Node(parse_config(config_data(tmp_path, **changes)), base_dir=tmp_path)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close(flush_s=0)


# -- heartbeat vision figures ---------------------------------------------------------


class FakeCamera:
    """Writes what VisionPipeline.report writes, with figures the test chose."""

    def __init__(self, name: str, fps: float, inference_ms: float, dropped: int) -> None:
        self.name = name
        self.figures = {"camera_fps": fps, "inference_ms": inference_ms, "dropped_frames": dropped}

    def run(self, ctx: SourceContext) -> None:
        ctx.health.set(self.name, "ok")
        for key, value in self.figures.items():
            ctx.health.set(key, value)
        ctx.health.set(f"{self.name}.stages_ms", {"preprocess": 1.0, "inference": 12.0})
        ctx.health.set(f"{self.name}.model", "fastestdet")
        ctx.stop.wait()


def test_heartbeat_carries_camera_figures_over_all_cameras(make_node) -> None:
    node = make_node()
    node._start_sources([(FakeCamera("cam0", 15.0, 10.0, 3), None), (FakeCamera("cam1", 5.0, 30.0, 4), None)])
    assert wait_until(lambda: node.heartbeat().dropped_frames == 7)
    beat = node.heartbeat()
    assert beat.camera_fps == pytest.approx(10.0)  # mean: a per-camera rate
    assert beat.inference_ms == pytest.approx(20.0)  # mean
    assert beat.dropped_frames == 7  # sum
    assert beat.sensors["cam0"] == "ok" and beat.sensors["cam1.model"] == "fastestdet"
    assert "preprocess" in beat.sensors["cam0.stages_ms"]
    assert not {"camera_fps", "inference_ms", "dropped_frames"} & set(beat.sensors)


def test_a_stopped_camera_no_longer_counts(make_node) -> None:
    node = make_node()
    node._start_sources([(FakeCamera("cam0", 15.0, 10.0, 3), None)])
    assert wait_until(lambda: node.heartbeat().camera_fps == 15.0)
    node._stop_sources()
    beat = node.heartbeat()
    assert (beat.camera_fps, beat.inference_ms, beat.dropped_frames) == (None, None, None)


def test_a_node_without_cameras_reports_no_figures(make_node) -> None:
    node = make_node()
    node.health.set("mq4", "ok")
    beat = node.heartbeat()
    assert (beat.camera_fps, beat.inference_ms, beat.dropped_frames) == (None, None, None)
    assert beat.sensors == {"mq4": "ok"}


def test_health_keeps_a_figure_that_is_not_a_number_as_a_state() -> None:
    health = Health()
    view = health.of_source("cam0")
    view.set("camera_fps", "n/a")
    view.set("dropped_frames", True)
    assert health.vision().camera_fps is None and health.vision().dropped_frames is None
    assert health.states() == {"camera_fps": "n/a", "dropped_frames": "True"}


class CameraSource:
    """A real VisionPipeline on a simulated camera, as the vision plugin runs one."""

    def __init__(self, name: str) -> None:
        class Scripted:
            model_ref = ModelRef(name="scripted", version="1", sha256="1" * 64)

            def detect(self, frame_bgr: Any) -> list[Detection]:
                return [Detection(0, "person", 0.9, (0.1, 0.1, 0.2, 0.3))]

        book = IncidentBook(lambda draft: None)
        scene = SceneAnalytics(name, SceneConfig.model_validate({"zones": [], "rules": []}), book)
        self.name = name
        self.pipeline = VisionPipeline(name, Scripted(), Tracker(), scene, book)

    def run(self, ctx: SourceContext) -> None:
        self.pipeline.run(ctx, Capture(SimulatedCamera(period_s=0.01)))


def test_the_vision_pipelines_own_keys_reach_the_heartbeat_fields(make_node) -> None:
    node = make_node()
    node._start_sources([(CameraSource("cam0"), None)])
    assert wait_until(lambda: (node.heartbeat().camera_fps or 0) > 0 and node.heartbeat().inference_ms is not None)
    beat = node.heartbeat()
    assert beat.dropped_frames is not None, "the pipeline's dropped-frame count reaches the heartbeat"
    assert beat.sensors["cam0"] == "ok" and beat.sensors["cam0.model"] == "scripted"


# -- SoC temperature ------------------------------------------------------------------


def test_heartbeat_reads_the_configured_thermal_zone(make_node, tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("51250\n")
    node = make_node(heartbeat={"interval_s": 30, "thermal_zone": str(zone)})
    assert node.heartbeat().soc_temp_c == pytest.approx(51.25)
    zone.write_text("garbage\n")  # a driver glitch is no temperature, not a crash
    assert node.heartbeat().soc_temp_c is None


def test_a_relative_thermal_zone_and_verify_key_resolve_against_the_config_folder(tmp_path: Path) -> None:
    data = config_data(tmp_path, heartbeat={"thermal_zone": "zone/temp"}, commands={"verify_key": "command.pub"})
    config = parse_config_text(yaml.safe_dump(data), "node.yaml", tmp_path)
    assert config.heartbeat.thermal_zone == tmp_path / "zone/temp"
    assert config.commands.verify_key == tmp_path / "command.pub"


def test_default_zone_is_the_lowest_numbered_one_with_a_temp_file(tmp_path: Path) -> None:
    for zone in ("thermal_zone10", "thermal_zone2", "thermal_zone1"):
        (tmp_path / zone).mkdir()
    (tmp_path / "thermal_zone10" / "temp").write_text("40000")
    (tmp_path / "thermal_zone2" / "temp").write_text("45000")  # zone1 has no temp file
    assert find_thermal_zone(tmp_path) == tmp_path / "thermal_zone2" / "temp"
    assert find_thermal_zone(tmp_path / "absent") is None


@pytest.mark.parametrize("board", board_names())
def test_each_board_profiles_thermal_zone_is_a_valid_node_setting(board: str, tmp_path: Path) -> None:
    profile = load_board(board)
    request = NodeRequest(node_id="n1", site="s1", lat=1.0, lon=2.0, broker="mqtts://broker.example:8883")
    data = node_config(request, profile, {"password_file": "mqtt.password", "ca_file": "ca.crt"})
    parse_config(data, board)  # what provisioning writes still validates
    data["heartbeat"] = {**data.get("heartbeat", {}), "thermal_zone": profile["hardware"]["thermal_zone"]}
    config = parse_config(data, board)
    assert config.heartbeat.thermal_zone == Path(profile["hardware"]["thermal_zone"])


# -- command signatures ---------------------------------------------------------------


def command(name: str = "ping", **args: Any) -> Command:
    return Command(
        node_id="sim-node-1",
        site="demo-city",
        seq=1,
        name=name,
        issuer="aggregator",
        expires=datetime.now(UTC) + timedelta(seconds=60),
        args=args,
    )


def signed(cmd: Command, key: Ed25519PrivateKey) -> Command:
    return cmd.model_copy(update={"signature": base64.b64encode(key.sign(signing_bytes(cmd))).decode()})


def public_pem(path: Path, key: Any) -> Path:
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
def command_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signing_node(make_node, tmp_path: Path, command_key: Ed25519PrivateKey) -> Node:
    pem = public_pem(tmp_path / "command.pub", command_key)
    return make_node(commands={"issuers": ["aggregator"], "verify_key": str(pem)})


def test_a_well_signed_command_runs(signing_node: Node, command_key: Ed25519PrivateKey) -> None:
    result = signing_node.execute(signed(command("ping"), command_key))
    assert result.ok and result.detail == "pong"
    assert signing_node.rejected == {}


def test_tampered_missing_and_foreign_signatures_are_refused_and_counted(
    signing_node: Node, command_key: Ed25519PrivateKey
) -> None:
    good = signed(command("swap_model", model="fastestdet"), command_key)
    tampered = good.model_copy(update={"args": {"model": "evil-model"}})
    unsigned = command("ping")
    foreign = signed(command("ping"), Ed25519PrivateKey.generate())
    not_base64 = command("ping").model_copy(update={"signature": "%%%not-base64%%%"})
    details = [signing_node.execute(cmd) for cmd in (tampered, unsigned, foreign, not_base64)]
    assert all(not r.ok and (r.detail or "").startswith("bad signature: ") for r in details)
    assert "does not verify" in (details[0].detail or "") and "does not verify" in (details[2].detail or "")
    assert "unsigned" in (details[1].detail or "") and "base64" in (details[3].detail or "")
    assert signing_node.rejected == {"bad_signature": 4}


def test_a_refused_forgery_does_not_burn_the_real_commands_id(
    signing_node: Node, command_key: Ed25519PrivateKey
) -> None:
    real = signed(command("ping"), command_key)
    forged = real.model_copy(update={"signature": None})
    assert not signing_node.execute(forged).ok
    assert signing_node.execute(real).ok
    assert "replay" in (signing_node.execute(real).detail or "")  # replay protection still applies


def test_a_signature_survives_the_wire(signing_node: Node, command_key: Ed25519PrivateKey) -> None:
    # what the node verifies is the decoded payload, not the object the signer held
    cmd = signed(
        command("swap_model", model="fastestdet", threshold=0.35, retries=2, force=True, zone="Bahnhöfe"), command_key
    )
    signing_node._on_command(topic_for(cmd), encode(cmd))
    received = signing_node._commands.get(timeout=1)
    result = signing_node.execute(received)
    assert result.detail == "no vision source"  # past the signature check: this node has no camera
    assert signing_node.rejected == {}


def test_without_a_verify_key_unsigned_commands_run_as_before(make_node) -> None:
    assert make_node().execute(command("ping")).ok


def test_a_bad_verify_key_file_stops_the_node_with_a_clear_error(make_node, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        make_node(commands={"verify_key": str(tmp_path / "absent.pub")})
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        make_node(commands={"verify_key": str(tmp_path / "junk.pub")})
    rsa = public_pem(tmp_path / "rsa.pub", generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ConfigError, match="not an Ed25519"):
        make_node(commands={"verify_key": str(rsa)})
    assert not (tmp_path / "outbox.db").exists()  # refused before the node opened anything


def test_a_signed_reload_can_switch_signing_on(make_node, tmp_path: Path, command_key: Ed25519PrivateKey) -> None:
    node = make_node()
    pem = public_pem(tmp_path / "command.pub", command_key)
    new = config_data(tmp_path, commands={"issuers": ["aggregator"], "verify_key": str(pem)})
    new["mqtt"] = node.config.mqtt.model_dump(mode="json", exclude_none=True)
    assert node.execute(command("reload_config", config=yaml.safe_dump(new))).ok
    assert not node.execute(command("ping")).ok
    assert node.execute(signed(command("ping"), command_key)).ok
