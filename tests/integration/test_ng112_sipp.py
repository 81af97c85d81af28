"""RFC 8876 calls against sipp as the PSAP (UDP and TCP), sipp as the caller against the
built-in PSAP, and small socket peers that misbehave: silence (Timer F), garbage, a closed
connection. Registered names are written out literally, as RFC 8876 and IANA spell them."""

from __future__ import annotations

import email.parser
import email.policy
import shutil
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from s4edge.cloud_sync.aggregator.store import make_engine, metadata
from s4edge.cloud_sync.messages import Alert, Location, Measurement, ModelRef
from s4edge.cloud_sync.ng112.call import Caller, compose
from s4edge.cloud_sync.ng112.cap import CAP_NS, CapError, load_schema
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.pidf import DM_NS, GML_NS, GP_NS, PIDF_NS, LocationError
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.receiver import PsapReceiver
from s4edge.cloud_sync.ng112.records import get_forward
from s4edge.cloud_sync.ng112.sip import BodyPart, parse_target
from s4edge.cloud_sync.ng112.transport import Timers, Transaction
from s4edge.testing.sipp import SippPsap, run_uac

pytestmark = pytest.mark.skipif(
    shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)"
)
FAST = Timers(t1=0.01, t2=0.04)  # Timer F = 0.64 s


def alert(**kw) -> Alert:
    fields = dict(
        node_id="n7",
        site="station",
        seq=3,
        kind="flame",
        severity="Extreme",
        state="new",
        incident="inc-flame-0007",
        ts=datetime(2026, 3, 1, 8, 0, tzinfo=UTC),
        location=Location(lat=52.520008, lon=13.404954, zone="hall"),
        measurements=[Measurement(quantity="ir_flicker", value=9.5, unit="Hz")],
        model=ModelRef(name="flamenet", version="2", sha256="b" * 64),
    )
    fields.update(kw)
    return Alert(**fields)


def split_parts(raw: bytes) -> dict[str, bytes]:
    head, body = raw.split(b"\r\n\r\n", 1)
    content_type = next(
        line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:")
    )
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )
    return {p["Content-Type"]: p.get_payload(decode=True) for p in parsed.iter_parts()}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_sipp_psap_accepts_the_call_and_receives_valid_cap_and_pidf(tmp_path, shared, proto):
    schema = load_schema(shared / "standards" / "cap12.xsd")
    call = compose(
        alert(),
        Caller(),
        readings_uri="https://agg.example/ng112/incidents/inc-flame-0007/readings?token=abc",
        schema=schema,
    )
    with SippPsap("psap_200.xml", proto, tmp_path, calls=1) as psap:
        delivery = Transaction(FAST).send(call.message, parse_target(psap.uri))
        assert psap.wait(10) == 0
    assert delivery.ok and delivery.code == 200 and delivery.transport == proto
    (raw,) = psap.received()
    assert raw.startswith(b"MESSAGE urn:service:sos SIP/2.0\r\n")
    assert b"purpose=EmergencyCallData.cap" in raw and b"\r\nGeolocation-Routing: yes\r\n" in raw
    parts = split_parts(raw)
    cap = etree.fromstring(parts["application/EmergencyCallData.cap+xml"])
    assert schema.validate(cap), schema.error_log
    assert cap.findtext(f"{{{CAP_NS}}}status") == "Actual"
    assert cap.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}severity") == "Extreme"
    pidf = etree.fromstring(parts["application/pidf+xml"])
    assert pidf.tag == f"{{{PIDF_NS}}}presence"
    point = pidf.find(f"{{{DM_NS}}}device/{{{GP_NS}}}geopriv/{{{GP_NS}}}location-info/{{{GML_NS}}}Point")
    assert point.get("srsName") == "urn:ogc:def:crs:EPSG::4326"
    assert point.findtext(f"{{{GML_NS}}}pos") == "52.520008 13.404954"
    assert b"no human caller" in parts["application/EmergencyCallData.DeviceInfo+xml"]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_sipp_checking_the_rfc_8876_names_accepts_our_call(tmp_path, proto):
    with SippPsap("psap_rfc8876.xml", proto, tmp_path, calls=1) as psap:
        delivery = Transaction(FAST).send(compose(alert(), Caller()).message, parse_target(psap.uri))
        assert psap.wait(10) == 0, (tmp_path / f"sipp-{psap.port}-errors.log").read_text()
    assert delivery.ok


@pytest.mark.parametrize(
    ("spoil", "failed_check"),
    [
        ("type", "application/EmergencyCallData"),  # the CAP part sent as application/cap+xml
        ("routing", "yes"),  # Geolocation-Routing: no
    ],
)
def test_sipp_checking_the_rfc_8876_names_catches_the_old_mistakes(tmp_path, spoil, failed_check):
    message = compose(alert(), Caller()).message
    if spoil == "type":
        message.cap = BodyPart("application/cap+xml", message.cap.content_id, message.cap.body)
    else:
        message.geolocation_routing = False
    with SippPsap("psap_rfc8876.xml", "tcp", tmp_path, calls=1) as psap:
        Transaction(FAST).send(message, parse_target(psap.uri))
        assert psap.wait(10) != 0
    assert failed_check in (tmp_path / f"sipp-{psap.port}-errors.log").read_text()


@pytest.fixture(params=["udp", "tcp"])
def builtin_psap(request):
    calls = []
    receiver = PsapReceiver(f"{request.param}:127.0.0.1:0", calls.append).start()
    receiver.calls = calls
    yield receiver
    receiver.stop()


@pytest.mark.parametrize(
    ("keys", "status", "alertmsg_error"),
    [
        ({}, "SIP/2.0 200 OK", None),
        (
            {"cap_type": "application/cap+xml"},
            "SIP/2.0 425 Bad Alert Message",
            b'AlertMsg-Error: 100 ;message="Cannot process the alert payload"',
        ),
        (
            {"cap_ref": "cid:missing@sipp.invalid"},
            "SIP/2.0 425 Bad Alert Message",
            b'AlertMsg-Error: 101 ;message="Alert payload was not present or could not be found"',
        ),
        (
            {"cap_status": "Maybe"},  # not a CAP 1.2 <status>: invalid against the OASIS schema
            "SIP/2.0 425 Bad Alert Message",
            b'AlertMsg-Error: 103 ;message="Alert payload was corrupted"',
        ),
    ],
    ids=["conformant", "application-cap-xml", "broken-cid", "invalid-cap"],
)
def test_sipp_calling_the_builtin_psap(tmp_path, builtin_psap, keys, status, alertmsg_error):
    result = run_uac(builtin_psap.address, builtin_psap.proto, tmp_path, **keys)
    assert result.returncode == 0, result.errors
    (response,) = result.responses
    lines = response.split(b"\r\n")
    assert lines[0] == status.encode()
    assert [line for line in lines if line.startswith(b"AlertMsg-Error:")] == (
        [alertmsg_error] if alertmsg_error else []
    )
    (call,) = builtin_psap.calls
    assert call.accepted == (alertmsg_error is None)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_a_425_bad_alert_message_surfaces_alertmsg_error(tmp_path, proto):
    call = compose(alert(status="Exercise"), Caller())
    with SippPsap("psap_425.xml", proto, tmp_path, calls=1) as psap:
        delivery = Transaction(FAST).send(call.message, parse_target(psap.uri))
    assert delivery.outcome == "rejected" and delivery.code == 425
    assert delivery.response.alert_msg_error.code == 101
    assert "not present" in delivery.response.alert_msg_error.message


def test_a_large_call_goes_over_tcp_automatically(tmp_path):
    call = compose(alert(detail="x " * 400), Caller())
    with SippPsap("psap_200.xml", "tcp", tmp_path, calls=1) as psap:
        target = parse_target(psap.uri.replace(";transport=tcp", ""))  # no transport: choose by size
        delivery = Transaction(FAST).send(call.message, target)
    assert delivery.ok and delivery.transport == "tcp"


class SilentUdp:
    """A PSAP that receives and never answers; counts what arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.datagrams: list[bytes] = []
        self.reply: bytes | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.datagrams.append(data)
            if self.reply is not None:
                self.sock.sendto(self.reply, peer)

    def __enter__(self) -> SilentUdp:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    @property
    def uri(self) -> str:
        return f"sip:psap@127.0.0.1:{self.sock.getsockname()[1]};transport=udp"


def test_no_answer_ends_with_timer_f_after_timer_e_retransmissions():
    call = compose(alert(), Caller())
    with SilentUdp() as psap:
        delivery = Transaction(FAST).send(call.message, parse_target(psap.uri))
    assert delivery.outcome == "timeout" and "Timer F" in delivery.detail
    # RFC 3261 §17.1.2.2: at 0, T1, 3·T1, 7·T1, then every T2 until 64·T1 → 18 sends in 0.64 s.
    assert 8 <= delivery.transmissions <= 19
    assert len(set(psap.datagrams)) == 1  # retransmissions are byte-identical


def test_udp_garbage_is_discarded_and_reported():
    call = compose(alert(), Caller())
    with SilentUdp() as psap:
        psap.reply = b"\x16\x03\x01 this is not SIP"
        delivery = Transaction(FAST).send(call.message, parse_target(psap.uri))
    assert delivery.outcome == "garbage" and "unparseable" in delivery.detail


def tcp_peer(answer: bytes | Callable[[bytes], bytes] | None):
    """A TCP PSAP that reads the request, writes ``answer`` (or what it makes of the
    request's head) and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            request = conn.recv(65536)
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            reply = answer(request.partition(b"\r\n\r\n")[0]) if callable(answer) else answer
            if reply:
                conn.sendall(reply)
        server.close()

    threading.Thread(target=run, daemon=True).start()
    return f"sip:psap@127.0.0.1:{server.getsockname()[1]};transport=tcp"


def test_tcp_garbage_is_a_typed_result():
    delivery = Transaction(FAST).send(compose(alert(), Caller()).message, parse_target(tcp_peer(b"HELLO\r\n\r\n")))
    assert delivery.outcome == "garbage"


def test_crlf_keep_alives_before_the_200_are_not_garbage():
    # RFC 3261 §7.5, RFC 5626 §3.5.1: CRLFs before the start-line are ignored; read as garbage,
    # they made a delivered call look failed, and the forwarder sent it again
    def keep_alive_then_ok(head: bytes) -> bytes:
        echoed = [line for line in head.split(b"\r\n") if line.split(b":")[0] in (b"Via", b"CSeq", b"Call-ID")]
        return b"\r\n\r\n" + b"\r\n".join([b"SIP/2.0 200 OK", *echoed, b"Content-Length: 0", b"", b""])

    delivery = Transaction(FAST).send(compose(alert(), Caller()).message, parse_target(tcp_peer(keep_alive_then_ok)))
    assert (delivery.outcome, delivery.code) == ("ok", 200)


def test_a_busy_psap_is_called_again_after_its_retry_after_not_before(tmp_path):
    clock = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    with SippPsap("psap_503.xml", "tcp", tmp_path) as psap:
        config = Ng112Config(psap=psap.uri, t1_s=0.01, backoff_s=2, max_attempts=3)
        fwd = Forwarder(engine, config, clock=lambda: clock[0])
        (forward,) = fwd.submit(alert(severity="Extreme"))
        assert fwd.run_due() == 1
        row = get_forward(engine, forward)
        assert (row["state"], row["code"], row["reason"]) == (
            "retrying",
            503,
            "503 Service Unavailable, Retry-After 300 s",
        )
        clock[0] += timedelta(seconds=299)  # the backoff alone would have called at +2 s
        assert fwd.run_due() == 0
        clock[0] += timedelta(seconds=1)
        assert fwd.run_due() == 1
        assert len(psap.received()) == 2
    assert get_forward(engine, forward)["attempts"] == 2


def cap_ref(raw: bytes) -> str:
    """The CAP 1.2 §3.2.1 reference (sender,identifier,sent) of the message a request carried."""
    root = etree.fromstring(split_parts(raw)["application/EmergencyCallData.cap+xml"])
    return ",".join(root.findtext(f"{{{CAP_NS}}}{name}") for name in ("sender", "identifier", "sent"))


def from_tag(raw: bytes) -> str:
    return header(raw, "From").split(";tag=")[1]


def requests(received: list[bytes]) -> list[bytes]:
    """One copy of each request: over UDP a slow answer has Timer E send it again (§17.1.2.2)."""
    return list({header(raw, "Via").split("branch=")[1]: raw for raw in received}.values())


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_each_attempt_is_a_request_of_its_own_and_the_psap_answers_it(tmp_path, proto):
    # Every attempt of a forward went with its Call-ID ("<incident>-<ordinal>@s4edge"), CSeq 1 and a
    # new From tag: sipp, as a PSAP that had answered that Call-ID, never answered the retry, which
    # ended on Timer F instead of the PSAP's 503. A retry after a timeout or a 503 asks for no
    # amendment, so it is a new request (RFC 3261 §8.1.1.4): a Call-ID and From tag of its own
    clock = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    with SippPsap("psap_503.xml", proto, tmp_path) as psap:
        # Timer F of 3.2 s: sipp's 503 in time on a loaded machine
        config = Ng112Config(psap=psap.uri, t1_s=0.05, max_attempts=3)
        fwd = Forwarder(engine, config, clock=lambda: clock[0])
        (forward,) = fwd.submit(alert(incident="inc-flame-0300"))
        assert fwd.run_due() == 1
        clock[0] += timedelta(seconds=300)  # the 503's Retry-After
        assert fwd.run_due() == 1
        first, retry = requests(psap.received())
    row = get_forward(engine, forward)
    assert (row["state"], row["attempts"], row["code"]) == ("retrying", 2, 503), row["reason"]
    assert header(retry, "Call-ID") != header(first, "Call-ID")
    assert from_tag(retry) != from_tag(first)
    assert header(retry, "From").split(";")[0] == header(first, "From").split(";")[0]
    assert cap_ref(retry) == cap_ref(first)  # the same CAP message (CAP 1.2 §3.2.1)


def test_a_retry_after_the_sender_changed_is_still_the_message_it_retries(tmp_path):
    # sender_domain was edited and the aggregator reloaded between two attempts of one Alert: the
    # retry went from the new sender, a second CAP message of the same identifier, which the PSAP,
    # holding the first, takes for another alert; and later messages referenced the new one
    clock = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    with SippPsap("psap_503.xml", "tcp", tmp_path) as psap:
        before = Forwarder(
            engine, Ng112Config(psap=psap.uri, t1_s=0.05, sender_domain="old.example"), clock=lambda: clock[0]
        )
        (forward,) = before.submit(alert(incident="inc-flame-0301"))
        assert before.run_due() == 1
        reloaded = Forwarder(
            engine, Ng112Config(psap=psap.uri, t1_s=0.05, sender_domain="new.example"), clock=lambda: clock[0]
        )
        clock[0] += timedelta(seconds=300)
        assert reloaded.run_due() == 1
        reloaded.submit(alert(incident="inc-flame-0302"))  # a new message goes from the new sender
        assert reloaded.run_due() == 1
        first, retry, new = psap.received()
    row = get_forward(engine, forward)
    assert row["attempts"] == 2
    assert cap_ref(first) == cap_ref(retry) == f"{row['cap_sender']},{row['cap_identifier']},{row['cap_sent']}"
    assert row["cap_sender"] == "sip:n7@station.old.example"
    assert header(retry, "From").startswith("<sip:n7@station.old.example>;tag=")
    assert cap_ref(new).startswith("sip:n7@station.new.example,")


def test_a_closed_connection_is_a_typed_result():
    delivery = Transaction(FAST).send(compose(alert(), Caller()).message, parse_target(tcp_peer(None)))
    assert delivery.outcome == "closed"


def test_nothing_listening_is_unreachable():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    delivery = Transaction(FAST).send(
        compose(alert(), Caller()).message, parse_target(f"sip:p@127.0.0.1:{port};transport=tcp")
    )
    assert delivery.outcome == "unreachable"


def test_no_location_and_invalid_cap_are_caught_before_sending():
    with pytest.raises(LocationError):
        compose(alert(location=Location(lat=0.0, lon=0.0)), Caller())
    with pytest.raises(CapError) as caught:
        compose(alert(), Caller(language="english please"))
    assert caught.value.field == "info/language"


def test_a_udp_psap_named_without_a_transport_gets_the_call_over_udp(tmp_path):
    # a call is ~3 KB, so a plain sip: URI chose TCP for its size (RFC 3261 §18.1.1); a PSAP on
    # UDP alone refused the connection and every attempt failed. §18.1.1: retry over UDP.
    with SippPsap("psap_200.xml", "udp", tmp_path, calls=1) as psap:
        plain = psap.uri.split(";")[0]
        target = parse_target(plain)
        assert target.transport is None
        delivery = Transaction(FAST).send(compose(alert(), Caller()).message, target)
        received = psap.received()
    assert delivery.ok and delivery.transport == "udp", delivery
    assert received


ESRP_302 = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="ESRP redirecting the call to the PSAP that serves the location">
  <recv request="MESSAGE" crlf="true"></recv>
  <send><![CDATA[
      SIP/2.0 302 Moved Temporarily
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]esrp[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:psap@127.0.0.1:PSAP_PORT;transport=udp>
      Content-Length: 0

    ]]></send>
</scenario>
"""


def test_a_redirect_sends_the_call_on_to_its_contact(tmp_path):
    # an ESRP's 302 names the PSAP that serves the location; the forward ended failed after
    # one attempt and that PSAP never heard of it (RFC 3261 §8.1.3.4: recurse on the Contact)
    with SippPsap("psap_200.xml", "udp", tmp_path / "psap", calls=1) as psap:
        scenario = tmp_path / "esrp_302.xml"
        scenario.write_text(ESRP_302.replace("PSAP_PORT", str(psap.port)))
        trusted = Transaction(FAST, redirect_hosts=frozenset({"127.0.0.1"}))
        with SippPsap(str(scenario), "udp", tmp_path / "esrp", calls=2) as esrp:
            refused = Transaction(FAST).send(compose(alert(), Caller()).message, parse_target(esrp.uri))
            delivery = trusted.send(compose(alert(), Caller()).message, parse_target(esrp.uri))
            assert len(esrp.received()) == 2
        received = psap.received()
    # a redirect goes only where ng112.redirect_hosts allows: an emergency call's data is not sent anywhere a 3xx says
    assert refused.code == 302 and "not followed: 127.0.0.1 is not among ng112.redirect_hosts" in refused.detail
    assert delivery.ok and "after 302" in delivery.detail, delivery
    assert len(received) == 1


# The PSAP behind the ESRP checks the request sent on to it: RFC 3261 §8.1.3.4, the Contact's URI
# as the Request-URI; §8.1.3.5 and §20.16, a new transaction of the same call, its CSeq one higher,
# the To still the first Request-URI. A failed check answers nothing, so the call is not delivered.
PSAP_AFTER_302 = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="PSAP checking the request an ESRP's 302 sent on to it">
  <recv request="MESSAGE" crlf="true">
    <action>
      <ereg regexp="^MESSAGE sip:psap@127\\.0\\.0\\.1:PSAP_PORT;transport=PROTO SIP/2\\.0"
            search_in="msg" check_it="true" assign_to="request_uri"/>
      <ereg regexp="^ *2 MESSAGE$" search_in="hdr" header="CSeq:" check_it="true" assign_to="cseq"/>
      <ereg regexp="^ *&lt;urn:service:sos&gt;$" search_in="hdr" header="To:" check_it="true" assign_to="to"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]psap[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>
  <Reference variables="request_uri,cseq,to"/>
</scenario>
"""


def header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return next(line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:] if line.split(":")[0] == name)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_the_request_sent_on_after_a_302_goes_to_the_contact_as_a_new_transaction(tmp_path, proto):
    # The onward request kept "MESSAGE urn:service:sos" and "CSeq: 1 MESSAGE": a PSAP that routes
    # on its Request-URI, or takes a second CSeq 1 of the Call-ID for the first one again, lost it
    psap = SippPsap(str(tmp_path / "psap.xml"), proto, tmp_path / "psap", calls=1)
    (tmp_path / "psap.xml").write_text(PSAP_AFTER_302.replace("PSAP_PORT", str(psap.port)).replace("PROTO", proto))
    with psap:
        scenario = tmp_path / "esrp_302.xml"
        scenario.write_text(
            ESRP_302.replace("PSAP_PORT", str(psap.port)).replace("transport=udp", f"transport={proto}")
        )
        # Timer F of 3.2 s for both hops: on a loaded machine, two sipp answers may take longer than FAST's
        trusted = Transaction(Timers(t1=0.05, t2=0.2), redirect_hosts=frozenset({"127.0.0.1"}))
        with SippPsap(str(scenario), "udp", tmp_path / "esrp", calls=1) as esrp:
            delivery = trusted.send(compose(alert(), Caller()).message, parse_target(esrp.uri))
            (first,) = esrp.received()
        (onward,) = psap.received()
        errors = tmp_path / "psap" / f"sipp-{psap.port}-errors.log"
        assert psap.wait(10) == 0, errors.read_text() if errors.exists() else ""
    assert delivery.ok and delivery.transport == proto, delivery
    assert first.startswith(b"MESSAGE urn:service:sos SIP/2.0\r\n") and header(first, "CSeq") == "1 MESSAGE"
    assert onward.startswith(f"MESSAGE sip:psap@127.0.0.1:{psap.port};transport={proto} SIP/2.0\r\n".encode())
    assert header(onward, "CSeq") == "2 MESSAGE"
    assert header(onward, "Call-ID") == header(first, "Call-ID")
    assert header(onward, "From") == header(first, "From") and header(onward, "To") == "<urn:service:sos>"
    assert header(onward, "Via").split("branch=")[1] != header(first, "Via").split("branch=")[1]


def test_a_redirect_never_leaves_tls_for_plain_text() -> None:
    # RFC 3261 §8.1.3.4: from SIPS to a non-SIPS URI, not silently: the CAP, the location and the
    # readings token went out in clear text to the Contact
    trusted = Transaction(FAST, redirect_hosts=frozenset({"psap.example"}))
    sips = parse_target("sips:esrp@esrp.example:5061")
    assert trusted._refused_redirect(sips, parse_target("sip:x@psap.example;transport=udp")) == (
        "it leaves TLS for plain text"
    )
    assert trusted._refused_redirect(sips, parse_target("sips:x@psap.example")) == ""


def test_a_udp_socket_the_kernel_connects_to_itself_is_unreachable_not_garbage(monkeypatch):
    # With nothing bound at the target, the kernel may pick the target's own port as the
    # ephemeral source: the socket then reads back its own request. Binding there first makes
    # the kernel do so every time.
    port = free_udp_port()

    class SelfBound(socket.socket):
        def connect(self, address):
            self.bind(address)
            super().connect(address)

    monkeypatch.setattr("s4edge.cloud_sync.ng112.transport.socket.socket", SelfBound)
    delivery = Transaction(FAST).send(
        compose(alert(), Caller()).message, parse_target(f"sip:p@127.0.0.1:{port};transport=udp")
    )
    assert delivery.outcome == "unreachable", delivery
    assert delivery.transmissions == 0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
