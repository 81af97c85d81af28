"""Certificates out of date at the fleet centre: ``aggregator run`` names an expired or not yet
valid TLS file with its date before anything starts, and warns a month ahead;
``fleet ca expiry`` lists the fleet's dates and what renews each; ``fleet broker-config``
refuses a broker certificate every client would refuse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s4edge.cli import app
from s4edge.cloud_sync.fleet.ca import FleetCA, init_ca, issue_client_cert, issue_server_cert
from s4edge.cloud_sync.fleet.validity import shown

runner = CliRunner()
NOW = dt.datetime.now(dt.UTC)
AGO = NOW - dt.timedelta(days=2)
SOON = NOW + dt.timedelta(days=5)


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return init_ca(tmp_path / "fleet")


def run(tmp_path: Path, *tls: str | Path) -> tuple[int, str]:
    args = ["aggregator", "run", "--broker", "mqtts://127.0.0.1:1", "--db", f"sqlite:///{tmp_path / 'agg.db'}"]
    result = runner.invoke(app, [*args, "--http", "127.0.0.1:0", *map(str, tls)], env={"COLUMNS": "400"})
    return result.exit_code, result.output


def dated(path: Path) -> str:
    """The notAfter of the certificate in ``path`` as the messages show it."""
    from cryptography import x509

    return shown(x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc)


def test_an_expired_client_certificate_is_named_with_its_date_before_anything_starts(
    tmp_path: Path, ca: FleetCA
) -> None:
    # it was "could not connect to mqtts://…: connection closed before CONNACK (Unspecified error)":
    # the broker just hangs up on an expired client certificate
    cert, key = issue_client_cert(ca, "aggregator", tmp_path / "agg", "aggregator", not_after=AGO)
    code, output = run(tmp_path, "--ca-file", ca.cert_path, "--cert-file", cert, "--key-file", key)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: --cert-file {cert}: the certificate (CN=aggregator) expired on {dated(cert)} (notAfter); "
        "issue it again with `s4edge fleet aggregator-credentials --client-cert` and restart the aggregator"
    ], output
    assert "Traceback" not in output and "CONNACK" not in output
    assert not (tmp_path / "agg.db").exists(), "nothing may start before the TLS files are known to be good"


def test_an_expired_fleet_ca_is_named_with_its_date(tmp_path: Path) -> None:
    old = init_ca(tmp_path / "old", days=1)
    backdated = tmp_path / "expired-ca.crt"
    # the CA's own validity: one made to end yesterday (cryptography signs what it is given)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert = (
        x509.CertificateBuilder()
        .subject_name(old.cert.subject)
        .issuer_name(old.cert.subject)
        .public_key(old.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=400))
        .not_valid_after(AGO)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(old.key, hashes.SHA256())
    )
    backdated.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    code, output = run(tmp_path, "--ca-file", backdated)
    assert code == 2, output
    assert f"error: --ca-file {backdated}: the certificate (CN=s4edge fleet CA) expired on {shown(AGO)}" in output
    assert "fleet's current ca.crt" in output


def test_a_ca_bundle_with_its_successor_still_works(tmp_path: Path, ca: FleetCA) -> None:
    """A rollover bundle holds the CA that expired beside the one that replaced it."""
    expired = init_ca(tmp_path / "old", days=1)
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(expired.cert_path.read_bytes() + ca.cert_path.read_bytes())
    code, output = run(tmp_path, "--ca-file", bundle)
    assert code == 1 and "could not connect to mqtts://127.0.0.1:1" in output, output


def test_a_ca_file_openssl_reads_and_cryptography_does_not_still_works(tmp_path: Path, ca: FleetCA) -> None:
    """`openssl x509 -trustout` writes BEGIN TRUSTED CERTIFICATE, which OpenSSL trusts and
    cryptography cannot parse: the aggregator stopped on it with "not a PEM certificate"."""
    import subprocess

    trusted = tmp_path / "trusted.pem"
    subprocess.run(["openssl", "x509", "-in", str(ca.cert_path), "-trustout", "-out", str(trusted)], check=True)
    assert b"BEGIN TRUSTED CERTIFICATE" in trusted.read_bytes()
    code, output = run(tmp_path, "--ca-file", trusted)
    assert code == 1 and "could not connect to mqtts://127.0.0.1:1" in output, output


def test_a_client_certificate_not_yet_valid_blames_a_clock(tmp_path: Path, ca: FleetCA) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "aggregator")])
    later = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=3))
        .not_valid_after(NOW + dt.timedelta(days=300))
        .sign(ca.key, hashes.SHA256())
    )
    cert, key_file = tmp_path / "agg.crt", tmp_path / "agg.key"
    cert.write_bytes(later.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    code, output = run(tmp_path, "--ca-file", ca.cert_path, "--cert-file", cert, "--key-file", key_file)
    assert code == 2, output
    assert f"--cert-file {cert}: the certificate (CN=aggregator) is not valid before" in output
    assert "clock" in output


def test_a_client_certificate_that_expires_within_a_month_is_warned_about_at_start(tmp_path: Path, ca: FleetCA) -> None:
    cert, key = issue_client_cert(ca, "aggregator", tmp_path / "agg", "aggregator", not_after=SOON)
    code, output = run(tmp_path, "--ca-file", ca.cert_path, "--cert-file", cert, "--key-file", key)
    assert code == 1 and "could not connect" in output, output  # it starts: nothing listens on port 1
    assert (
        f"warning: --cert-file {cert}: the certificate (CN=aggregator) expires on {dated(cert)} (notAfter), in 5 days"
    ) in output


def test_each_workers_certificate_is_checked(tmp_path: Path, ca: FleetCA) -> None:
    # a worker's own files ({worker} in their names) were read only once the worker started
    folder = tmp_path / "agg"
    issue_client_cert(ca, "aggregator-w0", folder, "aggregator-w0")
    expired, _ = issue_client_cert(ca, "aggregator-w1", folder, "aggregator-w1", not_after=AGO)
    pattern = ("--cert-file", folder / "aggregator-w{worker}.crt", "--key-file", folder / "aggregator-w{worker}.key")
    code, output = run(tmp_path, "--workers", "2", "--ca-file", ca.cert_path, *pattern)
    assert code == 2, output
    assert f"error: --cert-file {expired}: the certificate (CN=aggregator-w1) expired on" in output


def test_fleet_ca_expiry_lists_the_dates_and_what_renews_each(tmp_path: Path, ca: FleetCA) -> None:
    fleet = ca.folder
    issue_server_cert(ca, ["broker.example"], [], fleet, not_after=AGO)
    result = runner.invoke(
        app,
        ["fleet", "aggregator-credentials", "--fleet-dir", str(fleet), "--out", str(tmp_path / "agg"), "--client-cert"],
    )
    assert result.exit_code == 0, result.output
    issue_client_cert(ca, "aggregator", tmp_path / "agg", "aggregator", not_after=SOON)  # renewed, short-lived
    agg = tmp_path / "agg" / "aggregator.crt"
    result = runner.invoke(app, ["fleet", "ca", "expiry", "--ca-dir", str(fleet), str(agg)], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    table = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "ok" in table[str(fleet / "ca.crt")]
    assert "expired" in table[str(fleet / "server.crt")] and f"{AGO:%Y-%m-%d %H:%M}" in table[str(fleet / "server.crt")]
    assert "expiring" in table[str(agg)]
    assert f"renew {fleet / 'server.crt'} (CN=broker.example, expired): `s4edge fleet ca server-cert" in result.output
    assert (
        f"renew {agg} (CN=aggregator, expiring): `s4edge fleet aggregator-credentials --fleet-dir {fleet} "
        f"--ca-dir {fleet} --name aggregator --client-cert"
    ) in result.output


def test_fleet_ca_expiry_names_the_fleet_folder_apart_from_the_ca_folder(tmp_path: Path, ca: FleetCA) -> None:
    # with the CA kept apart, the remedy named the CA folder as --fleet-dir: following it wrote
    # the aggregator's identity there, not into the fleet's passwords and ACL
    fleet = tmp_path / "fleet"
    out = tmp_path / "agg"
    args = ["--fleet-dir", str(fleet), "--ca-dir", str(ca.folder), "--out", str(out), "--client-cert"]
    assert runner.invoke(app, ["fleet", "aggregator-credentials", *args]).exit_code == 0
    issue_client_cert(ca, "aggregator", out, "aggregator", not_after=SOON)
    folders = ["--ca-dir", str(ca.folder), "--fleet-dir", str(fleet)]
    command = ["fleet", "ca", "expiry", *folders, str(out / "aggregator.crt")]
    result = runner.invoke(app, command, env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert f"aggregator-credentials --fleet-dir {fleet} --ca-dir {ca.folder} --name aggregator" in result.output


def test_fleet_ca_expiry_exits_0_when_nothing_is_due(ca: FleetCA) -> None:
    issue_server_cert(ca, ["broker.example"], [], ca.folder)
    result = runner.invoke(app, ["fleet", "ca", "expiry", "--ca-dir", str(ca.folder)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "renew" not in result.output


def test_broker_config_refuses_an_expired_broker_certificate(tmp_path: Path, ca: FleetCA) -> None:
    # mosquitto starts with it, and then every client refuses the broker with OpenSSL's words
    server, _ = issue_server_cert(ca, ["broker.example"], [], ca.folder, not_after=AGO)
    out = tmp_path / "mosquitto.conf"
    result = runner.invoke(
        app, ["fleet", "broker-config", "--fleet-dir", str(ca.folder), "--out", str(out)], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 2, result.output
    assert f"error: {server}: the certificate (CN=broker.example) expired on {shown(AGO)} (notAfter)" in result.output
    assert "s4edge fleet ca server-cert" in result.output
    assert not out.exists()


def test_broker_config_warns_about_a_broker_certificate_that_expires_soon(tmp_path: Path, ca: FleetCA) -> None:
    server, _ = issue_server_cert(ca, ["broker.example"], [], ca.folder, not_after=SOON)
    out = tmp_path / "mosquitto.conf"
    result = runner.invoke(
        app, ["fleet", "broker-config", "--fleet-dir", str(ca.folder), "--out", str(out)], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    assert f"warning: {server}: the certificate (CN=broker.example) expires on {dated(server)}" in result.output
    assert out.exists()
