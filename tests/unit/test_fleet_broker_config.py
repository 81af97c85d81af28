"""The generated mosquitto config: TLS only, no anonymous clients, the fleet's files."""

from __future__ import annotations

import getpass
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.testing import free_port


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet"
    assert run("fleet", "ca", "init", "--out", fleet)[0] == 0
    assert run("fleet", "ca", "server-cert", "--ca-dir", fleet, "--host", "localhost")[0] == 0
    args = ["node-a", "--site", "plaza", "--lat", "1", "--lon", "2", "--broker", "mqtts://localhost:8883"]
    assert run("provision", *args, "--ca-dir", fleet, "--out", tmp_path / "node-a")[0] == 0
    return fleet


def directives(conf: Path) -> list[str]:
    return [line for line in conf.read_text().splitlines() if line and not line.startswith("#")]


def test_the_broker_config_is_tls_only_and_closed_to_anonymous_clients(fleet_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "mosquitto.conf"
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf)[0] == 0
    lines = directives(conf)
    assert "allow_anonymous false" in lines
    assert f"password_file {fleet_dir.absolute() / 'passwords'}" in lines
    assert f"acl_file {fleet_dir.absolute() / 'acl'}" in lines
    assert [line for line in lines if line.startswith("listener")] == ["listener 8883"]
    assert f"keyfile {fleet_dir.absolute() / 'server.key'}" in lines
    assert "require_certificate false" in lines and "persistence true" in lines
    assert "use_identity_as_username true" not in lines


def test_client_certificates_make_the_cn_the_username(fleet_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "mosquitto.conf"
    code, output = run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf, "--client-certs")
    assert code == 0
    assert "node-a cannot log in to a certificate listener" in output
    lines = directives(conf)
    assert "require_certificate true" in lines and "use_identity_as_username true" in lines


def test_websockets_and_the_admin_port_are_opt_in(fleet_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "mosquitto.conf"
    options = ["--ws", "--ws-port", "9001", "--admin-port", "1884", "--install-dir", "/etc/mosquitto/s4edge"]
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf, *options)[0] == 0
    lines = directives(conf)
    assert [line for line in lines if line.startswith("listener")] == [
        "listener 8883",
        "listener 9001",
        "listener 1884 127.0.0.1",
    ]
    assert lines.count("certfile /etc/mosquitto/s4edge/server.crt") == 2
    assert "protocol websockets" in lines


@pytest.mark.parametrize("port", ["0", "70000"])
def test_an_admin_port_no_socket_can_have_writes_no_config(fleet_dir: Path, tmp_path: Path, port: str) -> None:
    # 'listener 70000 127.0.0.1' was written, and mosquitto refused the whole config on the broker host
    conf = tmp_path / "mosquitto.conf"
    code, output = run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf, "--admin-port", port)
    assert code == 2 and "--admin-port" in output and not conf.exists()


def test_a_folder_without_the_tls_files_gets_no_broker_config(tmp_path: Path) -> None:
    nothing = tmp_path / "nothing"
    code, output = run("fleet", "broker-config", "--fleet-dir", nothing, "--out", tmp_path / "m.conf")
    assert code == 2 and "Traceback" not in output
    assert f"{nothing / 'ca.crt'}, {nothing / 'server.crt'}, {nothing / 'server.key'} missing" in output
    assert f"`s4edge fleet ca init --out {nothing} && s4edge fleet ca server-cert --ca-dir {nothing} " in output
    assert not (tmp_path / "m.conf").exists()


def test_the_command_it_names_makes_the_missing_certificate(tmp_path: Path) -> None:
    fleet, conf = tmp_path / "fleet", tmp_path / "mosquitto.conf"
    assert run("fleet", "ca", "init", "--out", fleet)[0] == 0
    code, output = run("fleet", "broker-config", "--fleet-dir", fleet, "--out", conf)
    assert code == 2 and f"{fleet / 'server.crt'}, {fleet / 'server.key'} missing" in output
    command = output.split("`")[1].replace("BROKER_HOST", "localhost")
    assert command.startswith("s4edge ") and run(*command.split()[1:])[0] == 0

    code, output = run("fleet", "broker-config", "--fleet-dir", fleet, "--out", conf)
    assert code == 0, output
    assert f"created {fleet / 'passwords'} and {fleet / 'acl'} (nobody may log in until `s4edge provision`" in output
    assert (fleet / "passwords").read_text() == ""
    assert not [line for line in (fleet / "acl").read_text().splitlines() if line.startswith("user ")]


def test_in_place_the_broker_runs_as_you_and_keeps_its_state_beside_the_config(fleet_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "broker" / "mosquitto.conf"
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf)[0] == 0
    lines = directives(conf)
    assert f"user {getpass.getuser()}" in lines  # it must read the fleet folder's 0600 files
    assert f"persistence_location {tmp_path / 'broker' / 'mosquitto-state'}/" in lines
    assert (tmp_path / "broker" / "mosquitto-state").is_dir()  # mosquitto does not create it

    options = ["--install-dir", "/etc/mosquitto/s4edge"]
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf, *options)[0] == 0
    lines = directives(conf)
    assert not [line for line in lines if line.startswith("user ")]
    assert "persistence_location /var/lib/mosquitto/" in lines


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed (apt mosquitto)")
def test_mosquitto_accepts_the_generated_config(fleet_dir: Path, tmp_path: Path) -> None:
    """mosquitto -t is not in 2.0, so start it and see it listen; a bad option exits at once."""
    from s4edge.testing import Mosquitto
    from s4edge.testing.mosquitto import wait_for_port

    port, ws_port, admin_port = free_port(), free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    (tmp_path / "state").mkdir()
    options = f"--port {port} --bind 127.0.0.1 --user current --persistence-dir {tmp_path / 'state'}".split()
    options += f"--ws --ws-port {ws_port} --admin-port {admin_port}".split()
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf, *options)[0] == 0
    broker = Mosquitto(tmp_path / "state", port=port, config_file=conf).start(wait_port=port)
    try:
        assert broker.proc is not None and broker.proc.poll() is None
        for extra in (ws_port, admin_port):
            wait_for_port("127.0.0.1", extra)
    finally:
        broker.stop()
    log = broker.log.read_text()
    # mosquitto 2.0: "Note: It is recommended to replace `message_size_limit` with `max_packet_size`."
    assert not [line for line in log.splitlines() if "recommended to replace" in line or "deprecated" in line]
    assert f"Opening ipv4 listen socket on port {port}." in log
    assert f"Opening websockets listen socket on port {ws_port}." in log
    assert f"Opening ipv4 listen socket on port {admin_port}." in log


def test_the_shipped_mosquitto_examples_match_what_the_cli_renders(tmp_path: Path) -> None:
    from s4edge.cloud_sync.fleet.broker_config import BrokerSettings, render
    from s4edge.cloud_sync.fleet.registry import Fleet, Identity

    shipped = Path(__file__).resolve().parents[2] / "firmware_configs" / "mosquitto"
    assert (shipped / "s4edge.conf").read_text() == render(BrokerSettings(files_dir=Path("/etc/mosquitto/s4edge")))
    fleet = Fleet(tmp_path)
    fleet.put(Identity("aggregator", "aggregator"))
    fleet.put(Identity("node-01", "node", "plaza-mayor"))
    assert (shipped / "acl.example").read_text() == (tmp_path / "acl").read_text()


def test_every_listener_ties_client_ids_to_usernames_and_the_payload_to_the_wire_limit(
    fleet_dir: Path, tmp_path: Path
) -> None:
    from s4edge.cloud_sync.fleet.broker_config import MAX_PACKET_BYTES
    from s4edge.cloud_sync.messages import MAX_MESSAGE_BYTES

    conf = tmp_path / "mosquitto.conf"
    options = ["--ws", "--admin-port", "1884"]
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf, *options)[0] == 0
    lines = directives(conf)
    assert f"max_packet_size {MAX_PACKET_BYTES}" in lines and MAX_PACKET_BYTES > MAX_MESSAGE_BYTES
    assert lines.count("use_username_as_clientid true") == len([line for line in lines if line.startswith("listener")])


def test_a_fleet_of_both_kinds_gets_a_listener_for_each(fleet_dir: Path, tmp_path: Path) -> None:
    args = ["node-b", "--site", "plaza", "--lat", "1", "--lon", "2", "--broker", "mqtts://localhost:8885"]
    assert run("provision", *args, "--ca-dir", fleet_dir, "--out", tmp_path / "node-b", "--client-cert")[0] == 0
    conf = tmp_path / "mosquitto.conf"
    code, output = run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf)
    assert code == 0 and "warning" not in output and "node-b: certificate identities, connect on port 8885" in output
    text = conf.read_text()
    password, certificate = text.split("\nlistener ")[1:]
    assert password.startswith("8883\n") and "require_certificate false" in password
    assert certificate.startswith("8885\n") and "use_identity_as_username true" in certificate
    assert f"crlfile {fleet_dir.absolute() / 'crl.pem'}" in certificate.splitlines()


def test_the_installed_broker_logs_where_the_aggregator_reads_refused_logins(tmp_path: Path) -> None:
    # the installed config replaces Debian's, and with it its log_dest: mosquitto logged to the
    # journal, and `aggregator run --broker-log /var/log/mosquitto/mosquitto.log` counted nothing
    from s4edge.cloud_sync.fleet.broker_config import BrokerSettings, render

    installed = render(BrokerSettings(files_dir=Path("/etc/mosquitto/s4edge")))
    assert "log_dest file /var/log/mosquitto/mosquitto.log" in installed.splitlines()
    local = render(BrokerSettings(files_dir=tmp_path, persistence_dir=tmp_path / "mosquitto-state"))
    assert "log_dest" not in local  # a broker tried on the laptop logs to its terminal
