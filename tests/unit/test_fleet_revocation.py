"""The fleet's command-signing key and certificate revocation, offline: what `ca init`,
`command-key init`, `provision`, `revoke` and `broker-config` write."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.aggregator.commands import CommandSigner
from s4edge.cloud_sync.fleet.ca import init_ca, issue_client_cert, load_ca
from s4edge.cloud_sync.fleet.registry import Fleet
from s4edge.cloud_sync.messages import Command, signing_bytes, utc_now
from s4edge.edge.config import load_config

BROKER = "mqtts://broker.example:8883"


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    assert run("fleet", "ca", "init", "--out", tmp_path / "fleet")[0] == 0
    return tmp_path / "fleet"


def provision(fleet_dir: Path, node: str, *extra: str) -> Path:
    args = ["--site", "plaza", "--lat", "40.4", "--lon", "-3.7", "--board", "x86", "--broker", BROKER]
    code, output = run("provision", node, *args, "--ca-dir", fleet_dir, "--out", fleet_dir.parent / node, *extra)
    assert code == 0, output
    return fleet_dir.parent / node


def crl(fleet_dir: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((fleet_dir / "crl.pem").read_bytes())


def serial(cert: Path) -> int:
    return int(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)


def test_ca_init_makes_the_command_key_pair_with_a_private_key_0600(fleet_dir: Path) -> None:
    assert stat.S_IMODE((fleet_dir / "command.key").stat().st_mode) == 0o600
    public = load_pem_public_key((fleet_dir / "command.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    code, output = run("fleet", "command-key", "init", "--fleet-dir", fleet_dir)
    assert code == 2 and "already exists" in output and "--force" in output


def test_a_provisioned_node_verifies_what_the_aggregator_signs(fleet_dir: Path) -> None:
    node_dir = provision(fleet_dir, "node-a")
    config = load_config(node_dir / "node.yaml")  # edge.config accepts commands.verify_key
    assert config.commands.verify_key == node_dir / "command.pub"
    command = Command(node_id="node-a", site="plaza", seq=1, name="ping", issuer="aggregator", expires=utc_now())
    signed = CommandSigner.load(fleet_dir / "command.key").sign(command)
    public = load_pem_public_key(config.commands.verify_key.read_bytes())
    assert isinstance(public, Ed25519PublicKey) and signed.signature is not None
    public.verify(base64.b64decode(signed.signature), signing_bytes(signed))


def test_a_fleet_without_a_command_key_provisions_nodes_that_take_unsigned_commands(tmp_path: Path) -> None:
    init_ca(tmp_path / "fleet")  # the library call makes the CA alone
    node_dir = provision(tmp_path / "fleet", "node-a")
    assert load_config(node_dir / "node.yaml").commands.verify_key is None
    assert not (node_dir / "command.pub").exists()


def test_revoking_a_certificate_node_puts_its_serial_on_a_crl_signed_by_the_ca(fleet_dir: Path) -> None:
    node_a, node_b = provision(fleet_dir, "node-a", "--client-cert"), provision(fleet_dir, "node-b", "--client-cert")
    code, output = run("fleet", "revoke", "node-a", "--fleet-dir", fleet_dir)
    assert code == 0 and "1 certificate(s) on" in output
    listed = crl(fleet_dir)
    ca = load_ca(fleet_dir)
    assert listed.is_signature_valid(ca.key.public_key())  # type: ignore[arg-type]
    assert listed.get_revoked_certificate_by_serial_number(serial(node_a / "node.crt")) is not None
    assert listed.get_revoked_certificate_by_serial_number(serial(node_b / "node.crt")) is None
    assert listed.next_update_utc == ca.cert.not_valid_after_utc  # never lapses before the CA does
    assert "node-a" not in Fleet(fleet_dir).identities and "user node-a" not in (fleet_dir / "acl").read_text()

    run("fleet", "revoke", "node-b", "--fleet-dir", fleet_dir)
    again = crl(fleet_dir)
    assert len(again) == 2
    number = again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 2  # RFC 5280 §5.2.3: increases with every CRL issued


def test_the_broker_config_names_the_empty_crl_of_ca_init_before_any_revocation(
    fleet_dir: Path, tmp_path: Path
) -> None:
    # mosquitto rereads a crlfile it has on SIGHUP, but a new crlfile line only on a restart
    empty = crl(fleet_dir)
    assert len(empty) == 0 and empty.is_signature_valid(load_ca(fleet_dir).key.public_key())  # type: ignore[arg-type]
    provision(fleet_dir, "node-a", "--client-cert")
    assert run("fleet", "ca", "server-cert", "--ca-dir", fleet_dir, "--host", "localhost")[0] == 0
    conf = tmp_path / "mosquitto.conf"
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", conf)[0] == 0
    assert f"crlfile {fleet_dir.absolute() / 'crl.pem'}" in conf.read_text().splitlines()


def test_a_fleet_from_before_ca_init_wrote_a_crl_gets_one_from_broker_config(fleet_dir: Path, tmp_path: Path) -> None:
    provision(fleet_dir, "node-a", "--client-cert")
    assert run("fleet", "ca", "server-cert", "--ca-dir", fleet_dir, "--host", "localhost")[0] == 0
    (fleet_dir / "crl.pem").unlink()
    assert run("fleet", "broker-config", "--fleet-dir", fleet_dir, "--out", tmp_path / "mosquitto.conf")[0] == 0
    assert len(crl(fleet_dir)) == 0  # mosquitto would not start on a crlfile that is missing


def test_re_provisioning_a_certificate_node_revokes_its_old_certificate(fleet_dir: Path) -> None:
    node_dir = provision(fleet_dir, "node-a", "--client-cert")
    old = serial(node_dir / "node.crt")
    provision(fleet_dir, "node-a", "--client-cert")
    new = serial(node_dir / "node.crt")
    assert old != new
    assert crl(fleet_dir).get_revoked_certificate_by_serial_number(old) is not None
    assert crl(fleet_dir).get_revoked_certificate_by_serial_number(new) is None
    assert Fleet(fleet_dir).identities["node-a"].cert_serial == format(new, "x")


def test_a_certificate_from_another_ca_cannot_be_revoked_here(fleet_dir: Path, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other")
    cert, _ = issue_client_cert(other, "node-x", tmp_path / "other", "node")
    code, output = run("fleet", "revoke", "node-x", "--fleet-dir", fleet_dir, "--cert", cert)
    assert code == 2 and "not signed by the fleet CA" in output and len(crl(fleet_dir)) == 0
    code, output = run("fleet", "revoke", "nobody", "--fleet-dir", fleet_dir)
    assert code == 2 and "'nobody' is not in" in output


def test_re_issuing_the_aggregators_certificates_revokes_the_old_ones(fleet_dir: Path, tmp_path: Path) -> None:
    # the node path revoked a replaced certificate, the aggregator's did not: a leaked old
    # aggregator key kept reading the whole fleet and sending commands and receipts
    def issue(*extra: str) -> list[int]:
        out = tmp_path / "agg"
        code, output = run(
            "fleet", "aggregator-credentials", "--fleet-dir", fleet_dir, "--out", out, "--client-cert", *extra
        )
        assert code == 0, output
        return sorted(serial(path) for path in out.glob("aggregator*.crt"))

    first = issue()
    workers = issue("--workers", "2")
    issue()
    again = issue("--workers", "2")
    for old in (*first, *workers):
        assert crl(fleet_dir).get_revoked_certificate_by_serial_number(old) is not None
    assert all(crl(fleet_dir).get_revoked_certificate_by_serial_number(new) is None for new in again)


def test_fewer_workers_retire_the_others_identities(fleet_dir: Path, tmp_path: Path) -> None:
    # left in place, aggregator-w2 kept the old shared password after a rotation meant to end it
    for count in ("3", "1"):
        code, output = run(
            "fleet", "aggregator-credentials", "--fleet-dir", fleet_dir, "--out", tmp_path / "agg", "--workers", count
        )
        assert code == 0, output
    identities = Fleet(fleet_dir).identities
    assert sorted(name for name in identities if name.startswith("aggregator-w")) == ["aggregator-w0"]
    assert "aggregator-w2" not in (fleet_dir / "passwords").read_text()
