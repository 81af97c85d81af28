"""Fleet provisioning offline: CA, certificates, mosquitto password and ACL files, node config."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.fleet.ca import CAError, issue_client_cert, issue_server_cert, load_ca
from s4edge.cloud_sync.fleet.mosquitto_files import password_hash, verify_password
from s4edge.cloud_sync.fleet.provision import board_names, load_board
from s4edge.cloud_sync.fleet.registry import Fleet, FleetError, Identity
from s4edge.edge.config import load_config, parse_config


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def provision(tmp_path: Path, node: str, site: str = "plaza", *extra: str) -> tuple[int, str]:
    args = f"--site {site} --lat 40.4168 --lon -3.7038 --broker mqtts://broker.city.example:8883".split()
    return run("provision", node, *args, "--ca-dir", tmp_path / "fleet", "--out", tmp_path / node, *extra)


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    assert run("fleet", "ca", "init", "--out", tmp_path / "fleet")[0] == 0
    return tmp_path / "fleet"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_a_path_length_zero_ca_with_a_private_key(fleet_dir: Path) -> None:
    ca = load_ca(fleet_dir)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert mode(fleet_dir / "ca.key") == 0o600
    validity = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert 3600 <= validity.days <= 3660


def test_a_second_ca_init_refuses_to_orphan_the_fleet(fleet_dir: Path) -> None:
    code, output = run("fleet", "ca", "init", "--out", fleet_dir)
    assert code == 2 and "already exists" in output


def test_a_ca_whose_key_is_kept_apart_asks_for_the_key_and_is_not_replaced(fleet_dir: Path, tmp_path: Path) -> None:
    # the key on an encrypted stick, as advised: provision said "create the fleet CA first", and
    # `ca init` then replaced ca.crt without --force, orphaning the broker's and every node's certificate
    before = (fleet_dir / "ca.crt").read_bytes()
    (fleet_dir / "ca.key").rename(tmp_path / "ca.key.on-the-stick")
    code, output = provision(tmp_path, "node-x")
    assert code == 2 and "put the fleet CA's key back" in output and "ca init" not in output
    code, output = run("fleet", "ca", "init", "--out", fleet_dir)
    assert code == 2 and "ca.crt already exists" in output
    assert (fleet_dir / "ca.crt").read_bytes() == before


def test_the_server_certificate_names_the_broker_and_chains_to_the_ca(fleet_dir: Path) -> None:
    code, _ = run(
        "fleet", "ca", "server-cert", "--ca-dir", fleet_dir, "--host", "broker.city.example", "--ip", "10.20.0.5"
    )
    assert code == 0
    ca = load_ca(fleet_dir)
    cert = x509.load_pem_x509_certificate((fleet_dir / "server.crt").read_bytes())
    cert.verify_directly_issued_by(ca.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.city.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.20.0.5"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode(fleet_dir / "server.key") == 0o600


def test_a_server_certificate_needs_a_name_and_real_addresses(fleet_dir: Path) -> None:
    ca = load_ca(fleet_dir)
    with pytest.raises(CAError, match="at least one"):
        issue_server_cert(ca, [], [], fleet_dir)
    with pytest.raises(CAError, match="not an IPv4"):
        issue_server_cert(ca, ["b"], ["10.0.0.300"], fleet_dir)


def test_a_missing_ca_says_how_to_make_one(tmp_path: Path) -> None:
    code, output = provision(tmp_path, "node-a")
    assert code == 2 and "s4edge fleet ca init" in output


def test_a_client_certificate_carries_the_node_id_as_cn(fleet_dir: Path, tmp_path: Path) -> None:
    cert_path, key_path = issue_client_cert(load_ca(fleet_dir), "node-a", tmp_path / "n", "node")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "node-a"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert mode(key_path) == 0o600


def test_password_hashes_use_mosquittos_pbkdf2_format() -> None:
    encoded = password_hash("s3cret", salt=b"\x00" * 12)
    assert encoded.startswith("$7$101$AAAAAAAAAAAAAAAA$")
    assert verify_password(encoded, "s3cret")
    assert not verify_password(encoded, "s3cres")
    assert not verify_password("$6$garbage", "s3cret")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed (apt mosquitto)")
def test_a_hash_made_by_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "node-a", "correct horse"], check=True)
    user, encoded = pw.read_text().strip().split(":", 1)
    assert user == "node-a" and verify_password(encoded, "correct horse")


def test_provisioning_writes_a_config_the_node_accepts(fleet_dir: Path, tmp_path: Path) -> None:
    code, output = provision(tmp_path, "node-a", "plaza", "--board", "jetson-orin-nano", "--zone", "north gate")
    assert code == 0, output
    node_dir = tmp_path / "node-a"
    data = yaml.safe_load((node_dir / "node.yaml").read_text())
    parsed = parse_config(data)
    assert (parsed.node_id, parsed.site, parsed.location.zone) == ("node-a", "plaza", "north gate")
    assert parsed.mqtt.url == "mqtts://broker.city.example:8883" and parsed.mqtt.username == "node-a"
    config = load_config(node_dir / "node.yaml")
    password = config.mqtt.password_file.read_text().strip()
    assert len(password) >= 40 and mode(config.mqtt.password_file) == 0o600
    assert config.mqtt.ca_file.read_bytes() == (fleet_dir / "ca.crt").read_bytes()
    # The board's hardware is written beside the config for the technician.
    assert "TensorrtExecutionProvider" in (node_dir / "node.yaml").read_text()
    hashed = Fleet(fleet_dir).identities["node-a"].password_hash
    assert hashed and verify_password(hashed, password)
    assert f"node-a:{hashed}\n" in (fleet_dir / "passwords").read_text()


def test_with_a_client_certificate_the_config_names_key_and_cert(fleet_dir: Path, tmp_path: Path) -> None:
    assert provision(tmp_path, "node-c", "plaza", "--client-cert")[0] == 0
    config = load_config(tmp_path / "node-c" / "node.yaml")
    assert config.mqtt.cert_file.exists() and mode(config.mqtt.key_file) == 0o600
    assert config.mqtt.password_file is None
    assert "node-c:" not in (fleet_dir / "passwords").read_text()


def test_the_acl_lets_a_node_write_its_own_topics_and_read_its_own_commands_and_receipts(
    fleet_dir: Path, tmp_path: Path
) -> None:
    assert provision(tmp_path, "node-a")[0] == 0
    acl = (fleet_dir / "acl").read_text()
    block = acl[acl.index("user node-a") :].split("\n\n")[0].splitlines()
    assert block == [
        "user node-a",
        "topic write s4edge/v1/plaza/node-a/alert",
        "topic write s4edge/v1/plaza/node-a/cmd_result",
        "topic write s4edge/v1/plaza/node-a/heartbeat",
        "topic write s4edge/v1/plaza/node-a/status",
        "topic write s4edge/v1/plaza/node-a/telemetry",
        "topic read s4edge/v1/plaza/node-a/cmd/#",
        "topic read s4edge/v1/plaza/node-a/receipt",
    ]


def test_provisioning_twice_rotates_the_password_without_duplicating_entries(fleet_dir: Path, tmp_path: Path) -> None:
    assert provision(tmp_path, "node-a")[0] == 0
    first = (tmp_path / "node-a" / "mqtt.password").read_text()
    assert provision(tmp_path, "node-a")[0] == 0
    second = (tmp_path / "node-a" / "mqtt.password").read_text()
    assert first != second
    passwords = (fleet_dir / "passwords").read_text()
    assert passwords.count("node-a:") == 1
    assert verify_password(passwords.split(":", 1)[1].strip(), second.strip())
    assert (fleet_dir / "acl").read_text().count("user node-a\n") == 1


def test_provisioning_again_keeps_what_the_technician_wrote_in_node_yaml(fleet_dir: Path, tmp_path: Path) -> None:
    # a password rotation rewrote node.yaml from the board profile: the sources the technician had
    # wired and tuned on site were gone without a word, and the node came back up sensing nothing
    assert provision(tmp_path, "node-a")[0] == 0
    node_yaml = tmp_path / "node-a" / "node.yaml"
    data = yaml.safe_load(node_yaml.read_text())
    data["heartbeat"] = {"interval_s": 12}
    data["outbox"]["path"] = "state/outbox.db"
    data["sources"] = [{"type": "sensors", "bus": "sim", "sensors": [{"name": "mq2-1", "kind": "mq2", "channel": 0}]}]
    node_yaml.write_text(yaml.safe_dump(data))
    before = (tmp_path / "node-a" / "mqtt.password").read_text()
    code, output = provision(tmp_path, "node-a", "plaza", "--zone", "north gate")
    assert code == 0, output
    config = load_config(node_yaml)
    assert [s.type for s in config.sources] == ["sensors"] and config.heartbeat.interval_s == 12
    assert config.outbox.path == tmp_path / "node-a" / "state" / "outbox.db"
    assert config.location.zone == "north gate"  # what the command says is the command's
    assert config.mqtt.password_file.read_text() != before


ADAPTED_ON_SITE = """
sources:
  - type: sensors
    bus: sim
    sensors:
      # the hall's MQ-2, on the ADS1115 at 0x48 (ADDR to GND)
      - {name: mq2-1, kind: mq2, gas: methane, address: 0x48, channel: 0}
"""


def adapt_on_site(node_yaml: Path) -> str:
    """node.yaml as a technician leaves it: a tuned, commented heartbeat and a sensor by its hex address."""
    text = node_yaml.read_text()
    assert "heartbeat:\n  interval_s: 30\n" in text
    text = text.replace("heartbeat:\n  interval_s: 30\n", "heartbeat:\n  interval_s: 0x1e  # 30 s, on battery\n")
    node_yaml.write_text(text + ADAPTED_ON_SITE)
    return text + ADAPTED_ON_SITE


def test_provisioning_again_keeps_node_yaml_as_the_technician_wrote_it(fleet_dir: Path, tmp_path: Path) -> None:
    # a re-provisioning turned `address: 0x48` into `address: 72`, and every comment the
    # technician had written was gone
    assert provision(tmp_path, "node-a")[0] == 0
    node_yaml = tmp_path / "node-a" / "node.yaml"
    adapted = adapt_on_site(node_yaml)
    code, output = provision(tmp_path, "node-a")  # a password rotation
    assert code == 0, output
    assert node_yaml.read_text() == adapted  # the password is in its own file
    code, output = provision(tmp_path, "node-a", "plaza", "--zone", "north gate", "--client-cert")
    assert code == 0, output
    text = node_yaml.read_text()
    assert text.endswith(ADAPTED_ON_SITE) and "  interval_s: 0x1e  # 30 s, on battery\n" in text
    config = load_config(node_yaml)
    assert config.location.zone == "north gate" and config.mqtt.password_file is None
    assert config.mqtt.cert_file == tmp_path / "node-a" / "node.crt"
    assert config.sources[0].sensors[0].address == 0x48 and config.heartbeat.interval_s == 30


def test_provisioning_again_says_to_copy_the_credentials_not_node_yaml(fleet_dir: Path, tmp_path: Path) -> None:
    # "next: copy node-a/ to the node's /etc/s4edge/" would put the laptop's node.yaml over the
    # one the node was adapted with on site
    out = tmp_path / "node-a"
    code, first = provision(tmp_path, "node-a")
    assert code == 0 and f"next: copy {out}/ to the node's /etc/s4edge/" in first
    adapt_on_site(out / "node.yaml")
    code, again = provision(tmp_path, "node-a")
    assert code == 0, again
    (hint,) = [line for line in again.splitlines() if line.startswith("next:")]
    assert f"copy {out}/ " not in hint
    credentials = f"{out / 'ca.crt'}, {out / 'mqtt.password'} and {out / 'command.pub'}"
    assert hint.startswith(f"next: copy only {credentials} to the node's /etc/s4edge/")
    assert "not node.yaml" in hint and "systemctl restart s4edge-agent" in hint
    assert "changed" not in again
    code, moved = provision(tmp_path, "node-a", "plaza", "--zone", "north gate")
    assert code == 0 and f"{out / 'node.yaml'}: location changed" in moved, moved


def test_provisioning_over_a_node_yaml_it_cannot_read_rotates_nothing(fleet_dir: Path, tmp_path: Path) -> None:
    assert provision(tmp_path, "node-a")[0] == 0
    node_yaml = tmp_path / "node-a" / "node.yaml"
    edited = node_yaml.read_text().replace("  lat:", "\tlat:")  # a tab: YAML indents with spaces only
    node_yaml.write_text(edited)
    before = (tmp_path / "node-a" / "mqtt.password").read_text()
    code, output = provision(tmp_path, "node-a")
    assert code == 2 and "node.yaml" in output and "tab" in output and "Traceback" not in output
    assert node_yaml.read_text() == edited
    assert (tmp_path / "node-a" / "mqtt.password").read_text() == before


def test_a_node_id_cannot_be_taken_by_another_site_or_role(fleet_dir: Path, tmp_path: Path) -> None:
    assert provision(tmp_path, "node-a", "plaza")[0] == 0
    code, output = provision(tmp_path, "node-a", "metro")
    assert code == 2 and "s4edge fleet revoke node-a" in output
    fleet = Fleet(fleet_dir)
    with pytest.raises(FleetError):
        fleet.put(Identity("node-a", "aggregator"))
    assert run("fleet", "revoke", "node-a", "--fleet-dir", fleet_dir)[0] == 0
    assert provision(tmp_path, "node-a", "metro")[0] == 0
    assert "s4edge/v1/metro/node-a/alert" in (fleet_dir / "acl").read_text()
    assert "s4edge/v1/plaza/node-a" not in (fleet_dir / "acl").read_text()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("Node_A", "--site", "plaza"), "node id"),
        (("node-a", "--site", "plaza/x"), "site"),
        (("node-a", "--site", "plaza", "--board", "pi-zero"), "unknown board"),
    ],
)
def test_bad_provisioning_input_gets_a_clear_error(
    fleet_dir: Path, tmp_path: Path, args: tuple[str, ...], complaint: str
) -> None:
    rest = ["--lat", "1", "--lon", "2", "--broker", "mqtts://b:8883"]
    code, output = run("provision", *args, *rest, "--ca-dir", fleet_dir, "--out", tmp_path / "n")
    assert code == 2 and complaint in output


def test_the_fleet_speaks_tls_only(fleet_dir: Path, tmp_path: Path) -> None:
    args = ["node-a", "--site", "plaza", "--lat", "1", "--lon", "2", "--broker", "mqtt://broker:1883"]
    code, output = run("provision", *args, "--ca-dir", fleet_dir, "--out", tmp_path / "n")
    assert code == 2 and "mqtts://HOST:PORT" in output


def test_the_aggregator_reads_the_fleet_and_writes_commands_and_receipts_only(fleet_dir: Path, tmp_path: Path) -> None:
    assert run("fleet", "aggregator-credentials", "--fleet-dir", fleet_dir, "--out", tmp_path / "agg")[0] == 0
    acl = (fleet_dir / "acl").read_text()
    block = acl[acl.index("user aggregator") :].split("\n\n")[0].splitlines()
    assert block == [
        "user aggregator",
        "topic write s4edge/v1/+/+/cmd/#",
        "topic write s4edge/v1/+/+/receipt",
        "topic read s4edge/v1/#",
    ]
    assert mode(tmp_path / "agg" / "aggregator.password") == 0o600


def test_every_board_profile_yields_a_valid_node_config(fleet_dir: Path, tmp_path: Path) -> None:
    assert {"rpi4", "rpi5", "jetson-orin-nano", "x86"} <= set(board_names())
    for board in board_names():
        profile = load_board(board)
        assert {"board", "hardware", "inference", "node"} <= profile.keys()
        # threads: left out means every core but one
        assert profile["inference"].get("threads", 1) >= 1
        assert profile["inference"]["providers"][-1] == "CPUExecutionProvider"
        assert provision(tmp_path, f"n-{board}", "plaza", "--board", board)[0] == 0
        load_config(tmp_path / f"n-{board}" / "node.yaml")


def test_a_corrupt_registry_is_reported_not_overwritten(fleet_dir: Path, tmp_path: Path) -> None:
    (fleet_dir / "fleet.json").write_text("{not json")
    code, output = provision(tmp_path, "node-a")
    assert code == 2 and "fleet.json" in output
    assert (fleet_dir / "fleet.json").read_text() == "{not json"


def test_the_commented_source_templates_fit_the_board_and_the_plugins(fleet_dir: Path, tmp_path: Path) -> None:
    from s4edge.edge.sensing.source import Config as SensorsConfig
    from s4edge.edge.vision.source import Config as VisionConfig

    plugin = {"vision": VisionConfig, "sensors": SensorsConfig}
    for board in board_names():
        assert provision(tmp_path, f"t-{board}", "plaza", "--board", board)[0] == 0
        text = (tmp_path / f"t-{board}" / "node.yaml").read_text()
        block = text[text.index("# sources:") :]
        uncommented = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))
        hardware = load_board(board)["hardware"]
        by_type = {t["type"]: plugin[t["type"]].model_validate(t) for t in uncommented["sources"]}
        assert by_type["vision"].camera.url == hardware["camera"]["url"]
        assert by_type["vision"].model.backend.providers == load_board(board)["inference"]["providers"]
        assert by_type["sensors"].bus == f"/dev/i2c-{hardware['i2c_bus']}"


def test_switching_to_a_client_certificate_leaves_no_password_behind(fleet_dir: Path, tmp_path: Path) -> None:
    assert provision(tmp_path, "node-a")[0] == 0
    assert provision(tmp_path, "node-a", "plaza", "--client-cert")[0] == 0
    node_dir = tmp_path / "node-a"
    assert not (node_dir / "mqtt.password").exists() and (node_dir / "node.key").exists()
    assert "node-a:" not in (fleet_dir / "passwords").read_text()
    assert Fleet(fleet_dir).uses_client_certs


def test_a_refused_provisioning_touches_no_node_files(fleet_dir: Path, tmp_path: Path) -> None:
    assert provision(tmp_path, "node-a", "plaza")[0] == 0
    before = (tmp_path / "node-a" / "mqtt.password").read_text()
    assert provision(tmp_path, "node-a", "metro")[0] == 2
    assert (tmp_path / "node-a" / "mqtt.password").read_text() == before


def test_a_certificate_node_in_a_fleet_of_passwords_is_told_which_port_to_name(fleet_dir: Path, tmp_path: Path) -> None:
    # the docs said a client certificate becomes required on 8883; broker-config keeps 8883 for
    # passwords and puts certificates on --cert-port, and the node could never connect
    assert provision(tmp_path, "node-p")[0] == 0
    code, output = provision(tmp_path, "node-c", "plaza", "--client-cert")
    assert code == 0 and "--cert-port, 8885 by default" in output
    code, output = provision(tmp_path, "node-p2")
    assert code == 0 and "--cert-port" not in output
