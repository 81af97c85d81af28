"""The same call over TLS (RFC 3261 §26.2: sips / transport=tls), against a TLS peer with a
certificate made for the test; a PSAP with an untrusted certificate is refused, not trusted."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.receiver import answer, read_call
from s4edge.cloud_sync.ng112.sip import parse_target, split_head
from s4edge.cloud_sync.ng112.transport import Timers, Transaction


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "psap.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "psap.pem", tmp_path / "psap.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while True:
        parts = split_head(data)
        if parts is not None and len(parts[1]) >= int(re.search(rb"Content-Length: (\d+)", parts[0])[1]):
            return data
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk


def tls_psap(cert_path, key_path) -> tuple[str, list]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = socket.create_server(("127.0.0.1", 0))
    calls: list = []

    def run() -> None:
        with server:
            conn, _ = server.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    data = read_request(tls)
                    call = read_call(data)
                    calls.append(call)
                    tls.sendall(answer(call))
            except (ssl.SSLError, OSError):
                return

    threading.Thread(target=run, daemon=True).start()
    return f"sips:psap@127.0.0.1:{server.getsockname()[1]}", calls


def alert() -> Alert:
    return Alert(
        node_id="n3",
        site="school",
        seq=1,
        kind="intrusion",
        severity="Severe",
        state="new",
        incident="inc-intr-0003",
        location=Location(lat=40.4, lon=-3.7),
    )


def test_a_call_over_tls_to_a_trusted_psap(tmp_path):
    cert_path, key_path = self_signed(tmp_path)
    uri, calls = tls_psap(cert_path, key_path)
    trusted = ssl.create_default_context(cafile=str(cert_path))
    delivery = Transaction(Timers(t1=0.05), tls_context=trusted).send(
        compose(alert(), Caller()).message, parse_target(uri)
    )
    assert delivery.ok and delivery.transport == "tls" and delivery.code == 200
    assert calls[0].cap["event"] == "intrusion"
    assert "SIP/2.0/TLS" in calls[0].headers["via"]


def test_an_untrusted_psap_certificate_is_refused(tmp_path):
    cert_path, key_path = self_signed(tmp_path)
    uri, calls = tls_psap(cert_path, key_path)
    delivery = Transaction(Timers(t1=0.05)).send(compose(alert(), Caller()).message, parse_target(uri))
    assert delivery.outcome == "unreachable" and "TLS" in delivery.detail
    assert calls == []
