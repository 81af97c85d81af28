"""A small built-in PSAP for demos and drills: receives RFC 8876 MESSAGEs over UDP or
TCP and checks them as a conformant PSAP does. A conformant call is told to a callback and
answered 200 OK; a call whose alert payload a PSAP could not use is answered 425 (Bad Alert
Message) with the AlertMsg-Error code that says why (RFC 8876 §5.1, §5.2).

What it checks, in order (the first failure decides the answer):

- the method is MESSAGE (else 405, RFC 3261 §8.2.1);
- a Call-Info header field with purpose=EmergencyCallData.cap (RFC 8876 §4.1) whose cid:
  URL (RFC 2392) names a body part (else 425 / 101 — this PSAP never fetches a CAP by reference);
- that part is ``application/EmergencyCallData.cap+xml`` (RFC 8876 §10.1; else 425 / 100);
- it is well-formed XML and valid against the OASIS CAP 1.2 schema (else 425 / 103);
- it has an ``<info>`` block, the part that says what the alert is about (else 425 / 102);
- a Geolocation cid: (RFC 6442 §4.1) names an ``application/pidf+xml`` PIDF-LO part
  (else 424 Bad Location Information with Geolocation-Error 100, RFC 6442 §4.3). A call
  without a Geolocation header is still taken: no emergency call is refused for lacking location.

A request that carries a CAP message already taken (the same sender, identifier and sent,
CAP 1.2 §3.2.1) is a sender's retry of a call whose answer it missed: a new SIP request (RFC
3261 §8.1.1.4), answered as one, but not a second call.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import logging
import re
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from lxml import etree

from s4edge.cloud_sync.ng112.cap import CAP_MIME, CAP_NS, CapRef, cap_text, load_schema, parse_cap
from s4edge.cloud_sync.ng112.pidf import GML_NS, PIDF_MIME, PIDF_NS
from s4edge.cloud_sync.ng112.sip import (
    BAD_ALERT_MESSAGE,
    CAP_PURPOSE,
    COMPACT_HEADERS,
    SipError,
    alertmsg_error,
    split_head,
)

log = logging.getLogger(__name__)
# any header line of the head (RFC 3261 §7.3.1: in any order), each ending in CRLF
_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
TIMER_J_S = 32.0  # RFC 3261 §17.2.2: 64·T1 over UDP, how long a request's retransmissions can come
_LISTEN = re.compile(r"^(udp|tcp):(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
# One value of Call-Info (RFC 3261 §20.9) or Geolocation (RFC 6442 §4.1): <uri> *(;param).
# The ABNF wants the <>; a bare URI up to the first ';' is read too.
_URI_VALUE = re.compile(r"^\s*(?:<([^>]*)>|([^;<>\s]+))(.*)$", re.DOTALL)
_PARAM = re.compile(r'\s*;\s*([^=;\s]+)\s*(?:=\s*("[^"]*"|[^;\s]*))?')
_VALUES = re.compile(r'(?:<[^>]*>|"[^"]*"|[^,<"])+')  # values split at commas outside <> and ""
_SCHEMA_LOCK = threading.Lock()  # one schema object, validations one at a time
# CAP messages remembered as taken: a sender's retries come within minutes (its backoff, a
# Retry-After), and a drill's PSAP takes far fewer calls than this in that time.
TAKEN_MAX = 10_000


@dataclass(frozen=True)
class Verdict:
    """How the PSAP answers: the status line and the headers that say why."""

    code: int
    reason: str
    headers: tuple[str, ...] = ()
    detail: str = ""  # for the PSAP's log, never sent

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        why = "; ".join(self.headers)
        return f"{self.code} {self.reason}" + (f" ({why})" if why else "")


OK = Verdict(200, "OK")


def bad_alert(code: int, detail: str) -> Verdict:
    """RFC 8876 §5.1: 425 with one AlertMsg-Error (§5.2) carrying the registered phrase."""
    return Verdict(BAD_ALERT_MESSAGE, "Bad Alert Message", (alertmsg_error(code).header(),), detail)


def bad_location(detail: str) -> Verdict:
    """RFC 6442 §4.3: 424 with Geolocation-Error 100 when the location cannot be used."""
    return Verdict(424, "Bad Location Information", ('Geolocation-Error: 100 ;code="Cannot Process Location"',), detail)


@dataclass(frozen=True)
class Part:
    content_type: str  # lower case, without parameters (RFC 2045: types are case-insensitive)
    body: bytes


@dataclass
class ReceivedCall:
    method: str
    headers: dict[str, str]
    parts: dict[str, bytes] = field(default_factory=dict)  # by content type
    by_cid: dict[str, Part] = field(default_factory=dict)  # by Content-ID, without <>
    cap: dict[str, str | None] = field(default_factory=dict)
    position: tuple[float, float] | None = None
    verdict: Verdict = OK

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted

    @property
    def cap_ref(self) -> CapRef | None:
        """The reference of the CAP message it carries (CAP 1.2 §3.2.1), once read."""
        sender, identifier, sent = (self.cap.get(name) for name in ("sender", "identifier", "sent"))
        return CapRef(sender, identifier, sent) if sender and identifier and sent else None

    def summary(self) -> str:
        where = f"{self.position[0]:.6f},{self.position[1]:.6f}" if self.position else "no location"
        cap = self.cap
        return (
            f"{cap.get('status')} {cap.get('msgType')} {cap.get('event')!r} severity={cap.get('severity')} "
            f"at {where} from {self.headers.get('from', '?')} incident={cap.get('incidents')}"
        )


def parse_listen(listen: str) -> tuple[str, str, int]:
    found = _LISTEN.match(listen)
    if not found:
        raise ValueError(f"{listen!r}: expected udp:HOST:PORT or tcp:HOST:PORT")
    port = int(found[3])
    if port > 65535:
        raise ValueError(f"{listen!r}: port {port} is out of range (0 to 65535; 0 takes a free one)")
    return found[1], found[2].strip("[]"), port


def uri_values(header: str) -> list[tuple[str, dict[str, str]]]:
    """``<cid:a@b>;purpose=X, <https://…>`` → [("cid:a@b", {"purpose": "X"}), …]."""
    values = []
    for value in _VALUES.findall(header):
        found = _URI_VALUE.match(value)
        if found:
            params = {name.lower(): raw.strip('"') for name, raw in _PARAM.findall(found[3])}
            values.append(((found[1] or found[2]).strip(), params))
    return values


def _cid(uri: str) -> str | None:
    """RFC 2392: ``cid:`` + the Content-ID's addr-spec, %-escaped."""
    return unquote(uri[4:]) if uri[:4].lower() == "cid:" else None


def _add_part(call: ReceivedCall, part: email.message.Message, content_id: str | None) -> None:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return
    kind = part.get_content_type().lower()
    call.parts[kind] = payload
    if content_id:
        call.by_cid[content_id.strip().strip("<>")] = Part(kind, payload)


def read_call(raw: bytes, schema: etree.XMLSchema | None = None) -> ReceivedCall:
    """Parse one request and decide its answer (``call.verdict``).

    Raises SipError only when it is not a SIP request at all.
    """
    parts = split_head(raw)
    if parts is None:
        raise SipError("no end of headers")
    lines = parts[0].decode("utf-8", "replace").split("\r\n")
    request = lines[0].split(" ")
    if len(request) != 3 or request[2] != "SIP/2.0":
        raise SipError(f"not a SIP request line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            key = COMPACT_HEADERS.get(key, key)  # RFC 3261 §7.3.3
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers and key != "via" else value.strip()
            if key == "via":
                headers.setdefault("_vias", "")
                headers["_vias"] += line + "\r\n"
    call = ReceivedCall(request[0], headers)
    content_type = headers.get("content-type", "")
    envelope = f"Content-Type: {content_type}\r\n\r\n".encode() + parts[1]
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(envelope)
    if parsed.is_multipart():
        for part in parsed.iter_parts():
            _add_part(call, part, part.get("Content-ID"))
    elif content_type:
        _add_part(call, parsed, headers.get("content-id"))  # a lone body: its Content-ID is a SIP header
    call.verdict = judge(call, schema)
    return call


def judge(call: ReceivedCall, schema: etree.XMLSchema | None = None) -> Verdict:
    """What a conformant PSAP answers; fills ``call.cap`` and ``call.position`` on the way."""
    if call.method != "MESSAGE":
        return Verdict(405, "Method Not Allowed", ("Allow: MESSAGE",), f"{call.method} is not an RFC 8876 call")
    # RFC 3261 §7.3.1: a token parameter value compares case-insensitively.
    infos = uri_values(call.headers.get("call-info", ""))
    refs = [uri for uri, params in infos if params.get("purpose", "").lower() == CAP_PURPOSE.lower()]
    if not refs:
        return bad_alert(101, f"no Call-Info header field with purpose={CAP_PURPOSE} (RFC 8876 §4.1)")
    cid = _cid(refs[0])
    if cid is None:
        return bad_alert(101, f"the CAP is referenced as {refs[0]}; this PSAP reads it by value (cid:) only")
    part = call.by_cid.get(cid)
    if part is None:
        return bad_alert(101, f"Call-Info <{refs[0]}> names no body part (no Content-ID <{cid}>)")
    if part.content_type != CAP_MIME.lower():
        return bad_alert(100, f"the CAP part is {part.content_type}, not {CAP_MIME} (RFC 8876 §10.1)")
    try:
        root = parse_cap(part.body)
    except etree.XMLSyntaxError as exc:
        return bad_alert(103, f"the CAP part is not well-formed XML: {exc}")
    checker = schema if schema is not None else load_schema()
    with _SCHEMA_LOCK:
        valid = checker.validate(root)
        first = checker.error_log[0].message if not valid and checker.error_log else ""
    if not valid:
        return bad_alert(103, f"the CAP part is not valid CAP 1.2 (OASIS schema): {first}")
    call.cap = {
        name.split("/")[-1]: cap_text(root, name)
        for name in (
            "identifier",
            "sender",
            "sent",
            "status",
            "msgType",
            "references",
            "incidents",
            "info/event",
            "info/severity",
            "info/headline",
        )
    }
    if root.find(f"{{{CAP_NS}}}info") is None:
        # CAP 1.2 §3.2.2: event, urgency, severity and certainty are all in <info>.
        return bad_alert(102, "the CAP alert has no <info> block: nothing says what it is about")
    return _locate(call)


def _locate(call: ReceivedCall) -> Verdict:
    located = uri_values(call.headers.get("geolocation", ""))
    if not located:
        return OK  # a call without location is still an emergency call
    cid = _cid(located[0][0])
    if cid is None:
        return OK  # location by reference: not dereferenced by this PSAP, the call is still taken
    part = call.by_cid.get(cid)
    if part is None or part.content_type != PIDF_MIME:
        found = "no body part" if part is None else f"a {part.content_type} part"
        return bad_location(f"Geolocation <{located[0][0]}> names {found}, not {PIDF_MIME} (RFC 6442 §4.1)")
    try:
        root = parse_cap(part.body)  # the same safe XML parser: no entities, no network
    except etree.XMLSyntaxError as exc:
        return bad_location(f"the PIDF-LO part is not well-formed XML: {exc}")
    if root.tag != f"{{{PIDF_NS}}}presence":
        return bad_location(f"the PIDF-LO part is a <{root.tag}>, not a PIDF <presence> (RFC 4119)")
    pos = root.find(f".//{{{GML_NS}}}pos")
    if pos is not None and pos.text:
        try:
            lat, lon = (float(v) for v in pos.text.split())
        except ValueError:
            return bad_location(f"gml:pos {pos.text[:40]!r} is not 'latitude longitude' (RFC 5491 §5.2.1)")
        call.position = (lat, lon)
    return OK


def answer(call: ReceivedCall, verdict: Verdict | None = None) -> bytes:
    """RFC 3261 §8.2.6.2: the response copies Via, From, To (adding a tag), Call-ID and CSeq."""
    verdict = verdict or call.verdict
    to = call.headers.get("to", "")
    if ";tag=" not in to:
        to += ";tag=psap"
    extra = "".join(f"{line}\r\n" for line in verdict.headers)
    head = (
        f"SIP/2.0 {verdict.code} {verdict.reason}\r\n{call.headers.get('_vias', '')}"
        f"From: {call.headers.get('from', '')}\r\nTo: {to}\r\nCall-ID: {call.headers.get('call-id', '')}\r\n"
        f"CSeq: {call.headers.get('cseq', '')}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    return head.encode()


OnCall = Callable[[ReceivedCall], None]


class _InFlight:
    """Requests being handled, so that ``stop`` lets each one send its answer first."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait(self, timeout: float) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._count == 0, timeout)


def _take(server: Any, raw: bytes) -> ReceivedCall:
    call = read_call(raw, server.schema)
    _report(server, call)
    return call


def _report(server: Any, call: ReceivedCall) -> None:
    if not call.accepted:
        log.warning("psap: answered %s to %s: %s", call.verdict, call.headers.get("call-id", "?"), call.verdict.detail)
    elif (ref := call.cap_ref) is not None and not server.taken.first(ref):
        log.info(
            "psap: %s carries CAP %s again: answered %s, not a second call",
            call.headers.get("call-id"),
            ref,
            call.verdict,
        )
        return
    server.on_call(call)


class _Taken:
    """The CAP messages this PSAP has taken, by reference (CAP 1.2 §3.2.1: sender, identifier
    and sent name one message), the oldest forgotten past ``size``."""

    def __init__(self, size: int = TAKEN_MAX) -> None:
        self._refs: OrderedDict[CapRef, None] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def first(self, ref: CapRef) -> bool:
        """True the first time ``ref`` is taken, False for each repeat."""
        with self._lock:
            if ref in self._refs:
                self._refs.move_to_end(ref)
                return False
            self._refs[ref] = None
            if len(self._refs) > self._size:
                self._refs.popitem(last=False)
            return True


class _Transactions:
    """RFC 3261 §17.2.2: a non-INVITE server transaction absorbs the retransmissions of its
    request (the same top Via, branch and sent-by, and CSeq) and sends its last response
    again, until Timer J; a retransmitted call is not a second call. One still being
    handled answers nothing yet: its response goes out when it is done. A retry with a new
    branch is a new transaction, answered on its own (``_Taken`` keeps it from being a call)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._answers: dict[tuple[str, str, str], tuple[float, bytes | None]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    @staticmethod
    def key(call: ReceivedCall) -> tuple[str, str, str]:
        top_via = call.headers.get("_vias", "").split("\r\n", 1)[0]
        return top_via.partition(":")[2].strip(), call.headers.get("call-id", ""), call.headers.get("cseq", "")

    def begin(self, key: tuple[str, str, str]) -> tuple[bool, bytes | None]:
        """(True, None) for a new request; (False, its answer or None) for a retransmission."""
        now = self._clock()
        with self._lock:
            for old in [k for k, (at, _) in self._answers.items() if now - at > TIMER_J_S]:
                del self._answers[old]
            if key in self._answers:
                return False, self._answers[key][1]
            self._answers[key] = (now, None)
            return True, None

    def answered(self, key: tuple[str, str, str], response: bytes) -> None:
        with self._lock:
            self._answers[key] = (self._clock(), response)


class _Udp(socketserver.BaseRequestHandler):
    server: Any

    def handle(self) -> None:
        data, sock = self.request
        with self.server.in_flight:
            try:
                call = read_call(data, self.server.schema)
            except SipError as exc:
                log.warning("psap: dropped a datagram that is not SIP: %s", exc)
                return
            key = _Transactions.key(call)
            new, response = self.server.transactions.begin(key)
            if not new:  # a retransmission (RFC 3261 §17.1.2.2, Timer E): answered again, taken once
                if response is not None:
                    sock.sendto(response, self.client_address)
                return
            _report(self.server, call)
            response = answer(call)
            self.server.transactions.answered(key, response)
            sock.sendto(response, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    server: Any

    def handle(self) -> None:
        buffer = b""
        conn: socket.socket = self.request
        while True:
            parts = split_head(buffer)
            if parts is not None:
                found = _LENGTH.search(parts[0])
                size = int(found[1]) if found else 0
                if len(parts[1]) >= size:
                    raw, buffer = parts[0] + b"\r\n\r\n" + parts[1][:size], parts[1][size:]
                    with self.server.in_flight:
                        try:
                            call = _take(self.server, raw)
                        except SipError as exc:
                            log.warning("psap: closing a connection that sent garbage: %s", exc)
                            return
                        conn.sendall(answer(call))
                    continue
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk


class _UdpServer(socketserver.ThreadingUDPServer):
    on_call: OnCall
    schema: etree.XMLSchema | None
    in_flight: _InFlight
    transactions: _Transactions
    taken: _Taken
    daemon_threads = True
    # not for UDP: on Linux a second receiver binds the same port beside the first and takes its calls
    allow_reuse_address = False


class _TcpServer(socketserver.ThreadingTCPServer):
    on_call: OnCall
    schema: etree.XMLSchema | None
    in_flight: _InFlight
    taken: _Taken
    daemon_threads = True
    allow_reuse_address = True


class PsapReceiver:
    """``PsapReceiver("udp:127.0.0.1:5060", on_call=print).start()``; ``stop()`` ends it.

    ``on_call`` hears every request, the refused ones too: ``call.accepted`` tells them apart;
    a repeat of a CAP message already taken is answered again, not heard as a second call.
    """

    def __init__(self, listen: str, on_call: OnCall, schema: etree.XMLSchema | None = None) -> None:
        proto, host, port = parse_listen(listen)
        self.server: _UdpServer | _TcpServer = (
            _UdpServer((host, port), _Udp) if proto == "udp" else _TcpServer((host, port), _Tcp)
        )
        self.server.on_call = on_call
        self.server.schema = schema if schema is not None else load_schema()
        self.server.in_flight = _InFlight()
        self.server.taken = _Taken()
        if isinstance(self.server, _UdpServer):
            self.server.transactions = _Transactions()
        self.proto = proto
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> PsapReceiver:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="ng112-psap", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking requests; one being handled (``on_call`` may be what stops us) is answered first."""
        self.server.shutdown()
        self.server.in_flight.wait(grace_s)
        self.server.server_close()
