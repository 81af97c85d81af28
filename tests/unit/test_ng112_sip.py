"""The RFC 8876 SIP MESSAGE on the wire, and robust parsing of what comes back.

Names are written here as the RFCs and the IANA registries spell them, never taken from
our own constants, so that a wrong constant fails a test."""

from __future__ import annotations

import email.parser
import email.policy
import re

import pytest

from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.sip import (
    AlertMsgError,
    BodyPart,
    EmergencyMessage,
    SipError,
    alertmsg_error,
    parse_alertmsg_error,
    parse_response,
    parse_target,
    split_head,
)

# IANA media-type registry, registered by RFC 8876 §10.1.
CAP_TYPE = "application/EmergencyCallData.cap+xml"


def message() -> EmergencyMessage:
    return EmergencyMessage(
        request_uri="urn:service:sos",
        from_uri="sip:n1@plaza.s4edge.invalid",
        cap=BodyPart(CAP_TYPE, "cap-1@plaza", b"<alert/>"),
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
    # RFC 6442 §4.2: "yes" lets the emergency routing proxy route on the location.
    assert headers["Geolocation-Routing"] == "yes"
    # RFC 8876 §8: what the UA understands, under the registered names.
    assert headers["Accept"] == "application/pidf+xml, application/EmergencyCallData.cap+xml"
    assert "application/cap+xml" not in head.decode()
    # The registered option tags are geolocation-sip/-http (RFC 6442); "geolocation" is none.
    assert "Supported" not in headers
    assert headers["Content-Type"].startswith("multipart/mixed; boundary=")
    assert int(headers["Content-Length"]) == len(body)
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    parts = {p["Content-Type"]: (p["Content-ID"], p.get_payload(decode=True)) for p in parsed.iter_parts()}
    assert parts["application/EmergencyCallData.cap+xml"] == ("<cap-1@plaza>", b"<alert/>")
    assert parts["application/pidf+xml"] == ("<loc-1@plaza>", b"<presence/>")
    assert parts["application/EmergencyCallData.DeviceInfo+xml"][0] == "<dev-1@plaza>"
    assert body.count(b"\r\nContent-Disposition: by-reference;handling=optional\r\n") == 3


def test_the_request_a_redirect_sends_on_names_the_contact_and_counts_on():
    # RFC 3261 §8.1.3.4: the Contact's whole URI but its method parameter is the Request-URI;
    # §8.1.3.5 and §20.16: the same Call-ID, From and To, the CSeq one higher
    first = message()
    onward = first.redirected("sip:psap@192.0.2.7:5070;method=INVITE;transport=tcp")
    lines = onward.render("tcp", "127.0.0.1:40000", "z9hG4bKdef").split(b"\r\n\r\n")[0].decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0] == "MESSAGE sip:psap@192.0.2.7:5070;transport=tcp SIP/2.0"
    assert headers["CSeq"] == "2 MESSAGE" and headers["Call-ID"] == "call-1@s4edge"
    assert headers["To"] == "<urn:service:sos>" and headers["From"] == f"<{first.from_uri}>;tag={first.from_tag}"
    assert first.request_uri == "urn:service:sos" and first.cseq == 1  # the first request is as it was
    assert onward.redirected("sip:psap@192.0.2.8").cseq == 3


def test_composed_calls_use_the_registered_cap_type_and_allow_routing_on_location():
    alert = Alert(
        node_id="n1",
        site="plaza",
        seq=1,
        kind="gas",
        severity="Severe",
        state="new",
        incident="inc-gas-0001",
        location=Location(lat=48.2, lon=16.37),
    )
    message = compose(alert, Caller()).message
    assert message.cap.content_type == "application/EmergencyCallData.cap+xml"
    assert message.pidf.content_type == "application/pidf+xml"
    assert message.device_info.content_type == "application/EmergencyCallData.DeviceInfo+xml"
    assert b"\r\nGeolocation-Routing: yes\r\n" in message.render("udp", "127.0.0.1:5060", "z9hG4bKx")


def test_turning_routing_on_location_off_toward_sos_warns(caplog):
    Caller(geolocation_routing=False)
    assert "Geolocation-Routing: no toward urn:service:sos" in caplog.text
    caplog.clear()
    Caller(request_uri="sip:psap@192.0.2.1", geolocation_routing=False)  # a PSAP's own URI: no routing needed
    assert caplog.text == ""


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


def test_crlf_keep_alives_before_a_response_are_skipped():
    # RFC 3261 §7.5; RFC 5626 keep-alives are CRLFCRLF: a delivered call must not read as garbage
    raw = b"\r\n\r\n\r\nSIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKk\r\nContent-Length: 0\r\n\r\n"
    assert parse_response(raw).code == 200
    assert split_head(b"\r\n\r\n") is None  # a keep-alive alone: the response is still to come


@pytest.mark.parametrize("length", ["\u00b2", "1" * 5000, "-1", "1e3", "12 34"])
def test_a_bad_content_length_is_a_sip_error(length):
    raw = f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKz\r\nContent-Length: {length}\r\n\r\n"
    with pytest.raises(SipError, match="bad Content-Length"):
        parse_response(raw.encode())


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("300", 300), ("120 (I'm in a meeting)", 120), ("18000;duration=3600", 18000), ("soon", None), ("1.5", None)],
)
def test_retry_after_is_read_as_rfc_3261_writes_it(value, seconds):
    raw = f"SIP/2.0 503 Service Unavailable\r\nRetry-After: {value}\r\nContent-Length: 0\r\n\r\n"
    assert parse_response(raw.encode()).retry_after == seconds


def test_alertmsg_error_without_message_and_nonsense():
    assert parse_alertmsg_error("103").code == 103
    assert parse_alertmsg_error("103").message is None
    assert parse_alertmsg_error("no code") is None
    assert parse_alertmsg_error("1034") is None


def test_alertmsg_error_text_is_read_under_either_parameter_name():
    # RFC 8876 §5.2 example text; §10.4 registers the header's parameter as "code".
    assert parse_alertmsg_error('100 ;code="Cannot process the alert payload"') == AlertMsgError(
        100, "Cannot process the alert payload"
    )
    assert parse_alertmsg_error('102;foo=bar ; message="a \\"b\\"; c"') == AlertMsgError(102, 'a "b"; c')


@pytest.mark.parametrize(
    ("code", "line"),
    [  # RFC 8876 §10.5: the SIP AlertMsg-Error Codes registry and its default reason phrases
        (100, 'AlertMsg-Error: 100 ;message="Cannot process the alert payload"'),
        (101, 'AlertMsg-Error: 101 ;message="Alert payload was not present or could not be found"'),
        (102, 'AlertMsg-Error: 102 ;message="Not enough information to determine the purpose of the alert"'),
        (103, 'AlertMsg-Error: 103 ;message="Alert payload was corrupted"'),
    ],
)
def test_alertmsg_errors_carry_the_registered_phrases(code, line):
    assert alertmsg_error(code).header() == line
    assert parse_alertmsg_error(line.split(": ", 1)[1]) == alertmsg_error(code)


@pytest.mark.parametrize(
    ("site", "host"), [("metro_c", "metro-c"), ("school-", "school"), ("Plaza", "Plaza"), ("__", "site")]
)
def test_a_site_id_becomes_a_valid_host_label(site, host):
    # RFC 3261 §25.1: sip:n1@metro_c.s4edge.invalid and sip:n1@school-.s4edge.invalid are no host names
    from s4edge.cloud_sync.ng112.cap import node_sip_uri

    assert node_sip_uri("n1", site) == f"sip:n1@{host}.s4edge.invalid"


def test_an_ipv6_sent_by_is_in_brackets():
    # RFC 3261 §25.1 IPv6reference: "::1:5060" reads as one address
    from s4edge.cloud_sync.ng112.transport import sent_by

    assert sent_by("::1", 5060) == "[::1]:5060"
    assert sent_by("192.0.2.1", 5060) == "192.0.2.1:5060"
