"""The RFC 8876 SIP MESSAGE on the wire, and robust parsing of what comes back."""

from __future__ import annotations

import email.parser
import email.policy
import re

import pytest

from s4edge.cloud_sync.ng112.sip import (
    BodyPart,
    EmergencyMessage,
    SipError,
    parse_alertmsg_error,
    parse_response,
    parse_target,
)


def message() -> EmergencyMessage:
    return EmergencyMessage(
        request_uri="urn:service:sos",
        from_uri="sip:n1@plaza.s4edge.invalid",
        cap=BodyPart("application/cap+xml", "cap-1@plaza", b"<alert/>"),
        pidf=BodyPart("application/pidf+xml", "loc-1@plaza", b"<presence/>"),
        device_info=BodyPart("application/EmergencyCallData.DeviceInfo+xml", "dev-1@plaza", b"<dev/>"),
        call_id="call-1@s4edge",
    )


def test_the_request_carries_every_rfc_8876_header():
    raw = message().render("tcp", "127.0.0.1:40000", "z9hG4bKabc")
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "MESSAGE urn:service:sos SIP/2.0"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Via"] == "SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bKabc;rport"
    assert headers["To"] == "<urn:service:sos>"
    assert re.fullmatch(r"<sip:n1@plaza\.s4edge\.invalid>;tag=\w+", headers["From"])
    assert headers["CSeq"] == "1 MESSAGE"
    assert headers["Max-Forwards"] == "70"
    assert "<cid:cap-1@plaza>;purpose=EmergencyCallData.cap" in headers["Call-Info"]
    assert "<cid:dev-1@plaza>;purpose=EmergencyCallData.DeviceInfo" in headers["Call-Info"]
    assert headers["Geolocation"] == "<cid:loc-1@plaza>"
    assert headers["Geolocation-Routing"] == "no"
    assert headers["Supported"] == "geolocation"
    assert int(headers["Content-Length"]) == len(body)
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    parts = {p.get_content_type(): (p["Content-ID"], p.get_payload(decode=True)) for p in parsed.iter_parts()}
    assert parts["application/cap+xml"] == ("<cap-1@plaza>", b"<alert/>")
    assert parts["application/pidf+xml"] == ("<loc-1@plaza>", b"<presence/>")
    assert parts["application/emergencycalldata.deviceinfo+xml"][0] == "<dev-1@plaza>"


@pytest.mark.parametrize(
    ("uri", "host", "port", "transport"),
    [
        ("sip:psap@127.0.0.1:5070;transport=tcp", "127.0.0.1", 5070, "tcp"),
        ("sip:psap@192.0.2.1", "192.0.2.1", 5060, None),
        ("sips:esrp.example.net", "esrp.example.net", 5061, "tls"),
        ("sip:psap@[2001:db8::1]:5062;transport=UDP", "2001:db8::1", 5062, "udp"),
    ],
)
def test_targets_come_from_sip_uris(uri, host, port, transport):
    target = parse_target(uri)
    assert (target.host, target.port, target.transport) == (host, port, transport)


@pytest.mark.parametrize("uri", ["http://psap", "sip:psap@host:99999", "sip:psap@host;transport=sctp", ""])
def test_bad_targets_are_refused_clearly(uri):
    with pytest.raises(SipError):
        parse_target(uri)


def test_a_425_response_surfaces_its_alertmsg_error():
    raw = (
        b"SIP/2.0 425 Bad Alert Message\r\nVia: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bKx\r\n"
        b'CSeq: 1 MESSAGE\r\nAlertMsg-Error: 101 ;message="Alert payload was not present or could not be found"\r\n'
        b"Content-Length: 0\r\n\r\n"
    )
    response = parse_response(raw)
    assert (response.code, response.reason, response.branch) == (425, "Bad Alert Message", "z9hG4bKx")
    assert response.alert_msg_error.code == 101
    assert response.alert_msg_error.message == "Alert payload was not present or could not be found"


def test_compact_headers_and_folding_are_understood():
    raw = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h;branch=z9hG4bKy\r\nCSeq: 1\r\n MESSAGE\r\nl: 0\r\n\r\n"
    response = parse_response(raw)
    assert response.branch == "z9hG4bKy"
    assert response.header("cseq") == "1 MESSAGE"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff garbage",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
        b"SIP/2.0 200 OK\r\n",
    ],
)
def test_garbage_is_a_sip_error_not_a_crash(raw):
    with pytest.raises(SipError):
        parse_response(raw)


def test_alertmsg_error_without_message_and_nonsense():
    assert parse_alertmsg_error("103").code == 103
    assert parse_alertmsg_error("103").message is None
    assert parse_alertmsg_error("no code") is None
