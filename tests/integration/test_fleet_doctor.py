"""``s4edge doctor`` against the fleet's real TLS broker, with a provisioned node's config."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.fleet.ca import init_ca
from s4edge.testing.fleet import Fleet, build_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    built = build_fleet(tmp_path_factory.mktemp("doctor-fleet"))
    yield built
    built.broker.stop()


def broker_check(config: Path) -> dict[str, str]:
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--json", "--broker-timeout", "5"])
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert checks["config"]["status"] == "PASS"
    return checks["broker"]


def node_copy(fleet: Fleet, tmp_path: Path) -> Path:
    copy = tmp_path / "node-a"
    shutil.copytree(fleet.node_dir("node-a"), copy)
    return copy


def test_a_provisioned_node_reaches_the_broker_over_tls(fleet: Fleet) -> None:
    check = broker_check(fleet.node_dir("node-a") / "node.yaml")
    assert check["status"] == "PASS", check
    assert "TLS" in check["detail"] and "as node-a" in check["detail"] and "Success" in check["detail"]


def test_a_wrong_password_is_reported_with_the_connack_reason(fleet: Fleet, tmp_path: Path) -> None:
    node = node_copy(fleet, tmp_path)
    (node / "mqtt.password").write_text("stale-password\n")
    check = broker_check(node / "node.yaml")
    assert check["status"] == "FAIL"
    assert "CONNACK" in check["detail"] and ("password" in check["detail"] or "authorized" in check["detail"])
    # the node's copy is stale after a rotation: provisioning yet again only rotated it once more
    assert "s4edge provision" in check["hint"] and "copy the mqtt.password" in check["hint"]


def test_a_broker_certificate_from_another_ca_is_reported(fleet: Fleet, tmp_path: Path) -> None:
    node = node_copy(fleet, tmp_path)
    shutil.copyfile(init_ca(tmp_path / "other").cert_path, node / "ca.crt")
    check = broker_check(node / "node.yaml")
    assert check["status"] == "FAIL" and "ca_file" in check["hint"]


def test_a_certificate_out_of_its_dates_points_at_the_clock(fleet: Fleet, tmp_path: Path) -> None:
    # a Pi booted with a stale date sees the broker's certificate as not yet valid (or expired):
    # the hint blamed the CA file and the URL's host
    import datetime as dt
    import ipaddress
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from s4edge.cloud_sync.fleet.ca import load_ca

    ca = load_ca(fleet.root / "fleet")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=30))  # as a clock a month behind sees it
        .not_valid_after(now + dt.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca.key, hashes.SHA256())
    )
    (tmp_path / "srv.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate, as expected
        finally:
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    node = node_copy(fleet, tmp_path)
    text = (node / "node.yaml").read_text().replace(f":{fleet.port}", f":{port}")
    (node / "node.yaml").write_text(text)
    try:
        check = broker_check(node / "node.yaml")
    finally:
        listener.close()
    assert check["status"] == "FAIL" and "not yet valid" in check["detail"] and "this node's clock" in check["detail"]
    assert "clock" in check["hint"] and "ca_file" not in check["hint"]
