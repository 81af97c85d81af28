"""The same call over TLS (RFC 3261 §26.2: sips / transport=tls), against a TLS peer with a
certificate made for the test; a PSAP with an untrusted certificate is refused, not trusted;
no redirect, on any hop of a chain, takes the call from TLS to plain text or from sips: to sip:
(TLS ESRPs here, sipp as the plain ones)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
import socket
import ssl
import threading
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.receiver import ReceivedCall, Verdict, answer, read_call
from s4edge.cloud_sync.ng112.sip import parse_target, split_head
from s4edge.cloud_sync.ng112.transport import Timers, Transaction
from s4edge.testing.sipp import SippPsap


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


def tls_psap(cert_path, key_path, reply: Callable[[ReceivedCall], bytes] = answer) -> tuple[str, list]:
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
                    tls.sendall(reply(call))
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


def redirect_to(contact: str) -> Callable[[ReceivedCall], bytes]:
    """A TLS ESRP's answer: 302 to ``contact`` (RFC 3261 §21.3.3)."""
    return lambda call: answer(call, Verdict(302, "Moved Temporarily", (f"Contact: <{contact}>",)))


# A plain (UDP) ESRP: 302 to the Contact written in for CONTACT.
PLAIN_ESRP_302 = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="ESRP redirecting the call">
  <recv request="MESSAGE" crlf="true"></recv>
  <send><![CDATA[
      SIP/2.0 302 Moved Temporarily
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]esrp[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <CONTACT>
      Content-Length: 0

    ]]></send>
</scenario>
"""
needs_sipp = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)"
)


def trusting(cert_path) -> Transaction:
    # Timer F of 3.2 s for every hop together: two TLS handshakes and sipp's answers on a loaded machine
    context = ssl.create_default_context(cafile=str(cert_path))
    return Transaction(Timers(t1=0.05, t2=0.2), tls_context=context, redirect_hosts=frozenset({"127.0.0.1"}))


@needs_sipp
def test_a_hop_reached_over_tls_is_never_redirected_to_plain_text(tmp_path):
    # RFC 3261 §8.1.3.4, §26.2.2: each hop was checked against the first target only, so a plain
    # ESRP sending the call on to a TLS one, which redirected it to a plain PSAP, had the CAP, the
    # location and the readings link go out in clear text from a hop the call had reached over TLS
    cert_path, key_path = self_signed(tmp_path)
    with SippPsap("psap_200.xml", "udp", tmp_path / "psap", calls=1) as plain_psap:
        tls_esrp, tls_got = tls_psap(cert_path, key_path, redirect_to(plain_psap.uri))
        scenario = tmp_path / "esrp.xml"
        scenario.write_text(PLAIN_ESRP_302.replace("CONTACT", tls_esrp.replace("psap@", "esrp@")))
        with SippPsap(str(scenario), "udp", tmp_path / "esrp", calls=1) as plain_esrp:
            delivery = trusting(cert_path).send(compose(alert(), Caller()).message, parse_target(plain_esrp.uri))
            assert len(plain_esrp.received()) == 1
        received = plain_psap.received()
    assert len(tls_got) == 1  # plain to TLS is no step down: followed
    assert delivery.code == 302 and not delivery.ok, delivery
    assert delivery.detail.endswith("not followed: it leaves TLS for plain text"), delivery.detail
    assert received == []


@needs_sipp
def test_tls_to_tls_to_plain_text_is_refused_at_the_last_hop(tmp_path):
    cert_path, key_path = self_signed(tmp_path)
    with SippPsap("psap_200.xml", "udp", tmp_path / "psap", calls=1) as plain_psap:
        second, second_got = tls_psap(cert_path, key_path, redirect_to(plain_psap.uri))
        first, _ = tls_psap(cert_path, key_path, redirect_to(second))
        delivery = trusting(cert_path).send(compose(alert(), Caller()).message, parse_target(first))
        received = plain_psap.received()
    assert len(second_got) == 1 and received == []
    assert delivery.code == 302 and delivery.detail.endswith("not followed: it leaves TLS for plain text")


def test_a_sips_request_is_not_redirected_to_a_sip_uri_over_tls(tmp_path):
    # RFC 3261 §8.1.3.4, §26.2.2, RFC 5630: a sips: request went on to sip:…;transport=tls, which
    # secures the first hop only; the PSAP behind it may be reached in clear text
    cert_path, key_path = self_signed(tmp_path)
    psap, psap_got = tls_psap(cert_path, key_path)
    esrp, esrp_got = tls_psap(cert_path, key_path, redirect_to(psap.replace("sips:", "sip:") + ";transport=tls"))
    delivery = trusting(cert_path).send(compose(alert(), Caller()).message, parse_target(esrp))
    assert len(esrp_got) == 1 and psap_got == []
    assert delivery.code == 302 and delivery.detail.endswith("not followed: it leaves a sips: URI for a sip: one")
    # to a sips: Contact it goes on
    psap, psap_got = tls_psap(cert_path, key_path)
    esrp, _ = tls_psap(cert_path, key_path, redirect_to(psap))
    delivery = trusting(cert_path).send(compose(alert(), Caller()).message, parse_target(esrp))
    assert delivery.ok and delivery.transport == "tls" and len(psap_got) == 1, delivery
