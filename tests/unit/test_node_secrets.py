"""A node keeps its secrets from a remote config: a file a config names must lie in the node's own
folders, no error quotes what a file holds, and a command cannot pin its id for ever."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from s4edge.cloud_sync.messages import Command, signing_bytes
from s4edge.edge.app import Node
from s4edge.edge.config import ConfigError, load_config, parse_config_text
from s4edge.testing import free_port

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"
SECRET = "Zx9-not-for-anyone_4f7e"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def etc(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """A node's config folder as `s4edge provision` leaves it: node.yaml, its password, the command key."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "mqtt.password").write_text(SECRET + "\n")
    (folder / "command.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    data = yaml.safe_load(SIM.read_text())
    data["sources"] = data["sources"][:1]  # the concourse scenario alone
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: no broker needed
    data["mqtt"] = {"url": url, "username": "sim-node-1", "password_file": "mqtt.password"}
    data["outbox"] = {"path": str(tmp_path / "state" / "outbox.db")}
    data["commands"] = {"issuers": ["aggregator"], "verify_key": "command.pub"}
    (folder / "node.yaml").write_text(yaml.safe_dump(data))
    return folder


@pytest.fixture
def node(etc: Path) -> Iterator[Node]:
    (etc.parent / "state").mkdir()
    running = Node(load_config(etc / "node.yaml"), base_dir=etc)
    yield running
    running.close(flush_s=0)


def signed(key: Ed25519PrivateKey, name: str, expires_in: timedelta = timedelta(minutes=1), **args: Any) -> Command:
    command = Command(
        **({"id": args.pop("cmd_id")} if "cmd_id" in args else {}),
        node_id="sim-node-1",
        site="demo-city",
        seq=1,
        name=name,
        issuer="aggregator",
        expires=datetime.now(UTC) + expires_in,
        args=args,
    )
    signature = base64.b64encode(key.sign(signing_bytes(command))).decode()
    return command.model_copy(update={"signature": signature})


def reload_with(etc: Path, **scenario: Any) -> str:
    data = yaml.safe_load((etc / "node.yaml").read_text())
    data["sources"][0].update(scenario)
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    "content",
    [
        SECRET + "\n",  # a password file: one YAML string
        f"root:$6${SECRET}$:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",  # /etc/shadow
        f'key: "{SECRET}\n',  # text that is not YAML at all
        f"{{signals: {{methane: []}}, name: x, duration_s: 1, {SECRET}: 1}}\n",  # a mapping, wrong keys
    ],
)
def test_a_reload_naming_a_secret_file_is_refused_without_quoting_it(
    node: Node, etc: Path, key: Ed25519PrivateKey, content: str
) -> None:
    # a secret beside the password file (which, rotated, a reload refuses before reading any scenario)
    (etc / "wifi.psk").write_text(content)  # inside the config folder: path confinement allows it
    result = node.execute(signed(key, "reload_config", config=reload_with(etc, file="wifi.psk")))
    detail = result.detail or ""
    assert not result.ok and "the running one stays" in detail
    assert str(etc / "wifi.psk") in detail and "not a valid scenario file" in detail
    assert SECRET not in detail and "$6$" not in detail
    assert [s.name for s in node.config.sources] == ["concourse"]


@pytest.mark.parametrize(
    "mqtt",
    [
        {"url": f"tcp://node-a:{SECRET}@broker.example:1883"},  # a scheme no broker speaks
        {"url": f"mqtts://node-a:20/{SECRET}@broker.example:8883"},  # a '/' in the password
        {"url": f"mqtts:node-a:{SECRET}@broker.example:8883"},  # the '//' forgotten
        {"url": "mqtts://broker.example:8883", "password": 20240117},  # a password YAML read as a number
    ],
)
def test_a_reload_with_a_refused_broker_setting_never_quotes_its_password(
    node: Node, etc: Path, key: Ed25519PrivateKey, mqtt: dict[str, Any]
) -> None:
    # the refusal goes into the log and into the cmd_result that the centre stores
    data = yaml.safe_load((etc / "node.yaml").read_text())
    data["mqtt"].update(mqtt)
    result = node.execute(signed(key, "reload_config", config=yaml.safe_dump(data)))
    detail = result.detail or ""
    assert not result.ok and "the running one stays" in detail and "mqtt." in detail
    assert SECRET not in detail and "20240117" not in detail


def test_a_password_rotated_in_its_file_is_not_said_applied_by_a_reload(node: Node, etc: Path) -> None:
    # `s4edge provision` again rotates it; SIGHUP said "applied" and the node stayed Not authorized
    text = (etc / "node.yaml").read_text()
    node.reload(text)  # the same password: applied
    (etc / "mqtt.password").write_text("a-new-one-for-node-1\n")
    with pytest.raises(ConfigError, match="restart it to use the new one") as refused:
        node.reload(text)
    assert "a-new-one" not in str(refused.value) and SECRET not in str(refused.value)


@pytest.mark.parametrize("where", ["/etc/shadow", "../elsewhere/scenario.yaml", "{tmp}/elsewhere/scenario.yaml"])
def test_a_config_naming_a_file_outside_the_nodes_folders_is_refused_by_path(
    node: Node, etc: Path, key: Ed25519PrivateKey, where: str
) -> None:
    elsewhere = etc.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "scenario.yaml").write_text(SECRET)
    result = node.execute(signed(key, "reload_config", config=reload_with(etc, file=where.format(tmp=etc.parent))))
    detail = result.detail or ""
    assert not result.ok and "sources.0.file" in detail and "outside the node's own folders" in detail
    assert SECRET not in detail


def test_node_files_resolve_into_the_nodes_folders_and_nowhere_else(etc: Path) -> None:
    state = etc.parent / "state"
    data = yaml.safe_load((etc / "node.yaml").read_text())
    data["heartbeat"] = {"thermal_zone": "/sys/class/thermal/thermal_zone0/temp"}  # sysfs: allowed
    data["sources"] = [
        {"type": "vision", "camera": {"url": "0"}, "model": {"name": "fastestdet"}, "snapshots": {"enabled": True}}
    ]
    config = parse_config_text(yaml.safe_dump(data), "node.yaml", etc)
    assert config.mqtt.password_file == etc / "mqtt.password" and config.commands.verify_key == etc / "command.pub"
    assert config.sources[0].snapshots.folder == state / "snapshots"  # what the node writes: beside the outbox

    for key, value in (
        ("snapshots", {"enabled": True, "folder": "/etc/cron.d"}),
        ("snapshots", {"enabled": True, "folder": "../../etc"}),
    ):
        data["sources"][0][key] = value
        with pytest.raises(ConfigError, match=r"sources\.0\.snapshots\.folder: .* outside the node's own folders"):
            parse_config_text(yaml.safe_dump(data), "node.yaml", etc)
    data["sources"] = []
    data["commands"]["verify_key"] = "/etc/ssh/ssh_host_ed25519_key.pub"
    with pytest.raises(ConfigError, match=r"commands\.verify_key: .* outside"):
        parse_config_text(yaml.safe_dump(data), "node.yaml", etc)


JETSON = (
    "gst:nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv ! "
    "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true"
)


def camera_config(etc: Path, url: str) -> str:
    data = yaml.safe_load((etc / "node.yaml").read_text())
    data["sources"] = [{"type": "vision", "camera": {"url": url}, "model": {"name": "fastestdet"}}]
    return yaml.safe_dump(data)


def load_config_text(etc: Path, text: str) -> Any:
    (etc / "node.yaml").write_text(text)
    return load_config(etc / "node.yaml")


def test_a_camera_url_naming_a_file_is_placed_and_confined_like_any_node_file(etc: Path) -> None:
    for url, placed in (
        ("replay:clips/a.avi", f"replay:{etc / 'clips' / 'a.avi'}"),
        ("clip.mp4", str(etc / "clip.mp4")),
        *((same, same) for same in ("0", "/dev/video0", "/dev/v4l/by-id/usb-cam-index0", "rtsp://cam/1")),
        *((same, same) for same in ("https://cam/mjpeg", "picamera2:", JETSON)),
    ):
        config = load_config_text(etc, camera_config(etc, url))
        assert config.sources[0].camera.url == placed
    for url in ("replay:/etc/shadow", "/etc/shadow", "replay:../elsewhere", "/dev/video0/../../etc/shadow"):
        with pytest.raises(ConfigError, match=r"sources\.0\.camera\.url: .* outside the node's own folders"):
            parse_config_text(camera_config(etc, url), "node.yaml", etc)


def test_a_gst_pipeline_comes_only_from_the_installed_config_not_a_reload(
    node: Node, etc: Path, key: Ed25519PrivateKey
) -> None:
    assert load_config_text(etc, camera_config(etc, JETSON)).sources[0].camera.url == JETSON
    hostile = "gst:videotestsrc ! filesink location=/etc/cron.d/x"
    for url in (JETSON, hostile):
        result = node.execute(signed(key, "reload_config", config=camera_config(etc, url)))
        assert not result.ok and "sources.0.camera.url: a gst: pipeline is taken only from the config file" in (
            result.detail or ""
        )
    result = node.execute(signed(key, "reload_config", config=camera_config(etc, "replay:/etc/shadow")))
    assert not result.ok and "outside the node's own folders" in (result.detail or "")
    assert [s.name for s in node.config.sources] == ["concourse"]


def test_a_config_error_names_the_line_of_broken_yaml_not_its_text(etc: Path) -> None:
    text = (etc / "node.yaml").read_text().replace("password_file: mqtt.password", f'password: "{SECRET}')
    with pytest.raises(ConfigError) as refused:
        parse_config_text(text, "node.yaml", etc)
    assert "node.yaml: not valid YAML (line" in str(refused.value) and SECRET not in str(refused.value)


@pytest.mark.parametrize("name", ["passwd", "pwd", "pass", "key"])
def test_a_misspelled_secret_key_is_named_and_its_value_never_shown(etc: Path, name: str) -> None:
    # 'mqtt.passwd: Extra inputs are not permitted (got <the password>)', in the log and in a
    # refused reload's cmd_result
    data = yaml.safe_load((etc / "node.yaml").read_text())
    data["mqtt"][name] = SECRET
    with pytest.raises(ConfigError) as refused:
        parse_config_text(yaml.safe_dump(data), "node.yaml", etc)
    assert f"mqtt.{name}: Extra inputs are not permitted" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_a_command_expiring_further_ahead_than_the_maximum_is_refused(node: Node, key: Ed25519PrivateKey) -> None:
    far = signed(key, "ping", expires_in=datetime(9999, 1, 1, tzinfo=UTC) - datetime.now(UTC))
    result = node.execute(far)
    assert not result.ok and "further ahead than commands.max_expiry_s (86400 s)" in (result.detail or "")
    # its id is not kept: the replay store is not pinned until the year 9999
    assert node.execute(signed(key, "ping", cmd_id=far.id)).ok
    assert node.execute(signed(key, "ping", expires_in=timedelta(days=1))).ok  # the aggregator's longest ttl


def test_the_maximum_expiry_is_configurable(etc: Path, key: Ed25519PrivateKey) -> None:
    (etc.parent / "state").mkdir()
    data = yaml.safe_load((etc / "node.yaml").read_text())
    data["commands"]["max_expiry_s"] = 60
    node = Node(parse_config_text(yaml.safe_dump(data), "node.yaml", etc), base_dir=etc)
    try:
        assert not node.execute(signed(key, "ping", expires_in=timedelta(minutes=10))).ok
        assert node.execute(signed(key, "ping", expires_in=timedelta(minutes=2))).ok  # within the clock skew
    finally:
        node.close(flush_s=0)
