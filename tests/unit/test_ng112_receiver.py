"""The built-in PSAP is as strict as a conformant one: 200 to a conformant RFC 8876 call,
425 Bad Alert Message with the right AlertMsg-Error to a call whose CAP it cannot use.

Every expected name and phrase is written as RFC 8876 and the IANA registries give it."""

from __future__ import annotations

import dataclasses
import socket
from datetime import UTC, datetime

import pytest

from s4edge.cloud_sync.messages import Alert, Location
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.receiver import PsapReceiver, answer, read_call
from s4edge.cloud_sync.ng112.sip import EmergencyMessage, parse_response

CAP_TYPE = "application/EmergencyCallData.cap+xml"  # IANA media-type registry (RFC 8876 §10.1)
E100 = 'AlertMsg-Error: 100 ;message="Cannot process the alert payload"'
E101 = 'AlertMsg-Error: 101 ;message="Alert payload was not present or could not be found"'
E102 = 'AlertMsg-Error: 102 ;message="Not enough information to determine the purpose of the alert"'
E103 = 'AlertMsg-Error: 103 ;message="Alert payload was corrupted"'
CAP_WITHOUT_INFO = (
    b'<?xml version="1.0" encoding="UTF-8"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
    b"<identifier>x-1</identifier><sender>sip:n@x</sender><sent>2026-03-01T08:00:00-00:00</sent>"
    b"<status>Actual</status><msgType>Alert</msgType><scope>Private</scope><addresses>urn:service:sos</addresses>"
    b"</alert>"
)


def message(**cap_changes) -> EmergencyMessage:
    alert = Alert(
        node_id="n4",
        site="depot",
        seq=1,
        kind="gas",
        severity="Severe",
        state="new",
        incident="inc-gas-0004",
        ts=datetime(2026, 3, 1, 8, 0, tzinfo=UTC),
        location=Location(lat=51.5, lon=-0.12),
    )
    built = compose(alert, Caller()).message
    if cap_changes:
        built.cap = dataclasses.replace(built.cap, **cap_changes)
    return built


def wire(msg: EmergencyMessage, *edits: tuple[bytes, bytes]) -> bytes:
    """The request as it goes out; ``edits`` change header bytes (the body length stays)."""
    raw = msg.render("udp", "127.0.0.1:40000", "z9hG4bKtest")
    head, body = raw.split(b"\r\n\r\n", 1)
    for old, new in edits:
        assert old in head, old
        head = head.replace(old, new)
    return head + b"\r\n\r\n" + body


def test_our_own_call_is_conformant():
    call = read_call(wire(message()))
    assert call.verdict.code == 200 and call.accepted
    assert call.cap["event"] == "gas" and call.cap["severity"] == "Severe"
    assert call.position == (51.5, -0.12)
    assert CAP_TYPE.lower() in call.parts  # media types are case-insensitive (RFC 2045)


def test_application_cap_xml_is_not_the_registered_type():
    call = read_call(wire(message(content_type="application/cap+xml")))
    assert (call.verdict.code, call.verdict.reason) == (425, "Bad Alert Message")
    assert call.verdict.headers == (E100,)
    assert "application/cap+xml" in call.verdict.detail


def test_no_cap_part_at_all():
    msg = message()
    # The body's first part is a second DeviceInfo; the Call-Info still names the CAP's cid.
    no_cap = dataclasses.replace(msg, cap=dataclasses.replace(msg.device_info, content_id="other@depot"))
    cap_ref = b"<cid:" + msg.cap.content_id.encode() + b">;purpose="
    call = read_call(wire(no_cap, (b"<cid:other@depot>;purpose=", cap_ref)))
    assert b"EmergencyCallData.cap+xml" not in wire(no_cap)
    assert (call.verdict.code, call.verdict.headers) == (425, (E101,))


def test_no_call_info_for_the_cap():
    call = read_call(wire(message(), (b";purpose=EmergencyCallData.cap,", b";purpose=EmergencyCallData.Comment,")))
    assert (call.verdict.code, call.verdict.headers) == (425, (E101,))
    assert "purpose=EmergencyCallData.cap" in call.verdict.detail


def test_a_cid_that_names_no_part():
    msg = message()
    broken = (b"<cid:" + msg.cap.content_id.encode() + b">", b"<cid:nobody@depot>")
    call = read_call(wire(msg, broken))
    assert (call.verdict.code, call.verdict.headers) == (425, (E101,))
    assert "nobody@depot" in call.verdict.detail


def test_a_cap_by_reference_is_not_fetched():
    msg = message()
    by_reference = (b"<cid:" + msg.cap.content_id.encode() + b">", b"<https://agg.example/cap/1>")
    assert read_call(wire(msg, by_reference)).verdict.headers == (E101,)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>", "well-formed"),
        (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'/>", "OASIS schema"),
        (b"<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf'/>", "OASIS schema"),
    ],
)
def test_a_cap_that_is_not_valid_cap_12(body, words):
    call = read_call(wire(message(body=body)))
    assert (call.verdict.code, call.verdict.headers) == (425, (E103,))
    assert words in call.verdict.detail


def test_a_valid_cap_without_info_says_nothing_of_its_purpose():
    call = read_call(wire(message(body=CAP_WITHOUT_INFO)))
    assert (call.verdict.code, call.verdict.headers) == (425, (E102,))


def test_a_location_reference_that_names_no_part_is_bad_location():
    msg = message()
    broken = (b"Geolocation: <cid:" + msg.pidf.content_id.encode() + b">", b"Geolocation: <cid:gone@depot>")
    call = read_call(wire(msg, broken))
    # RFC 6442 §4.3: 424 Bad Location Information, Geolocation-Error 100.
    assert (call.verdict.code, call.verdict.reason) == (424, "Bad Location Information")
    assert call.verdict.headers == ('Geolocation-Error: 100 ;code="Cannot Process Location"',)


def test_a_call_without_location_is_still_taken():
    call = read_call(wire(message(), (b"\r\nGeolocation: <cid:", b"\r\nX-Was-Geolocation: <cid:")))
    assert call.verdict.code == 200 and call.position is None


def test_other_methods_are_not_allowed():
    call = read_call(wire(message(), (b"MESSAGE urn:service:sos", b"INVITE urn:service:sos")))
    assert (call.verdict.code, call.verdict.headers) == (405, ("Allow: MESSAGE",))


def test_the_answer_carries_the_alertmsg_error():
    call = read_call(wire(message(content_type="application/cap+xml")))
    response = parse_response(answer(call))
    assert (response.code, response.reason) == (425, "Bad Alert Message")
    assert response.header("AlertMsg-Error") == E100.split(": ", 1)[1]
    assert response.alert_msg_error.code == 100
    assert response.branch == "z9hG4bKtest" and response.header("cseq") == "1 MESSAGE"


def test_the_receiver_answers_425_on_the_wire_and_reports_the_call():
    calls = []
    receiver = PsapReceiver("udp:127.0.0.1:0", calls.append).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(wire(message(content_type="application/cap+xml")), receiver.address)
            response = parse_response(sock.recv(65535))
    finally:
        receiver.stop()
    assert response.code == 425 and response.header("alertmsg-error").startswith("100 ;message=")
    (call,) = calls
    assert not call.accepted and call.verdict.code == 425


def test_a_lone_cap_body_is_found_by_its_content_id():
    msg = message()
    cap = msg.cap.body
    head = (
        "MESSAGE urn:service:sos SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bKlone\r\n"
        "From: <sip:n@x>;tag=1\r\nTo: <urn:service:sos>\r\nCall-ID: lone@x\r\nCSeq: 1 MESSAGE\r\n"
        "Call-Info: <cid:c1@x>;purpose=EmergencyCallData.cap\r\n"
        f"Content-Type: {CAP_TYPE}\r\nContent-ID: <c1@x>\r\nContent-Length: {len(cap)}\r\n\r\n"
    )
    call = read_call(head.encode() + cap)
    assert call.verdict.code == 200 and call.cap["event"] == "gas"


def test_compact_header_names_are_understood():
    msg = message()
    raw = wire(msg, (b"\r\nContent-Type: multipart/mixed", b"\r\nc: multipart/mixed"))
    assert read_call(raw).verdict.code == 200


def test_a_udp_retransmission_is_answered_again_and_taken_once():
    # RFC 3261 §17.2.2: a Timer E retransmission (same Via branch, Call-ID, CSeq) was a second call
    calls = []
    receiver = PsapReceiver("udp:127.0.0.1:0", calls.append).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            raw = wire(message())
            answers = []
            for _ in range(2):
                sock.sendto(raw, receiver.address)
                answers.append(parse_response(sock.recv(65535)).code)
            sock.sendto(wire(message(), (b"z9hG4bKtest", b"z9hG4bKother")), receiver.address)  # a new request
            answers.append(parse_response(sock.recv(65535)).code)
    finally:
        receiver.stop()
    assert answers == [200, 200, 200]
    assert len(calls) == 2


def exchange(receiver: PsapReceiver, raw: bytes) -> int:
    """Send one request to the receiver, as a sender does over its transport; the answer's code."""
    if receiver.proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(raw, receiver.address)
            return parse_response(sock.recv(65535)).code
    with socket.create_connection(receiver.address, timeout=5) as sock:
        sock.sendall(raw)
        return parse_response(sock.recv(65535)).code


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_a_retry_of_a_cap_message_already_taken_is_answered_but_not_a_second_call(proto):
    # A sender's retry after a lost answer: a new request (RFC 3261 §8.1.1.4: its own Call-ID, From
    # tag and branch) that carries the CAP message the PSAP has (CAP 1.2 §3.2.1: the same sender,
    # identifier and sent). It was a second call for the call-taker; a new message still is one
    calls = []
    receiver = PsapReceiver(f"{proto}:127.0.0.1:0", calls.append).start()
    try:
        first = message()
        retry = dataclasses.replace(first, call_id="retry@s4edge.invalid", from_tag="retry")
        answers = [exchange(receiver, wire(first)), exchange(receiver, wire(retry, (b"z9hG4bKtest", b"z9hG4bKretry")))]
        answers.append(exchange(receiver, wire(message(), (b"z9hG4bKtest", b"z9hG4bKnext"))))
    finally:
        receiver.stop()
    assert answers == [200, 200, 200]
    assert len(calls) == 2 and calls[0].headers["call-id"] == first.call_id
    assert calls[0].cap_ref != calls[1].cap_ref


def test_content_length_is_read_wherever_it_stands_over_tcp():
    # only a Content-Length on the head's last line was read: one higher up counted as 0, the
    # body was read as a second request, and a valid call was refused with 425
    raw = wire(message())
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = next(line for line in lines if line.lower().startswith(b"content-length"))
    lines.remove(length)
    lines.insert(2, length)
    calls = []
    receiver = PsapReceiver("tcp:127.0.0.1:0", calls.append).start()
    try:
        with socket.create_connection(receiver.address, timeout=5) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            response = parse_response(sock.recv(65535))
    finally:
        receiver.stop()
    assert response.code == 200 and [c.verdict.code for c in calls] == [200]
