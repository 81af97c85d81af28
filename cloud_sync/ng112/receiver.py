"""A small built-in PSAP for demos and drills: receives RFC 8876 MESSAGEs over UDP or
TCP, reads the CAP and PIDF-LO parts, tells a callback, and answers 200 OK."""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from s4edge.cloud_sync.ng112.cap import CAP_MIME, cap_text, parse_cap
from s4edge.cloud_sync.ng112.pidf import GML_NS, PIDF_MIME
from s4edge.cloud_sync.ng112.sip import SipError, split_head

log = logging.getLogger(__name__)
_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*$", re.IGNORECASE | re.MULTILINE)
_LISTEN = re.compile(r"^(udp|tcp):(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass
class ReceivedCall:
    method: str
    headers: dict[str, str]
    parts: dict[str, bytes] = field(default_factory=dict)  # by content type
    cap: dict[str, str | None] = field(default_factory=dict)
    position: tuple[float, float] | None = None

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
    return found[1], found[2].strip("[]"), int(found[3])


def read_call(raw: bytes) -> ReceivedCall:
    """Parse one request; raises SipError when it is not a SIP request."""
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
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers and key != "via" else value.strip()
            if key == "via":
                headers.setdefault("_vias", "")
                headers["_vias"] += line + "\r\n"
    call = ReceivedCall(request[0], headers)
    content_type = headers.get("content-type", "")
    if content_type.lower().startswith("multipart/"):
        envelope = f"Content-Type: {content_type}\r\n\r\n".encode() + parts[1]
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(envelope)
        for part in parsed.iter_parts():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                call.parts[part.get_content_type()] = payload
    cap = call.parts.get(CAP_MIME)
    if cap is not None:
        try:
            root = parse_cap(cap)
            call.cap = {
                name.split("/")[-1]: cap_text(root, name)
                for name in ("status", "msgType", "incidents", "info/event", "info/severity", "info/headline")
            }
        except etree.XMLSyntaxError as exc:
            call.cap = {"error": str(exc)}
    pidf = call.parts.get(PIDF_MIME)
    if pidf is not None:
        try:
            pos = parse_cap(pidf).find(f".//{{{GML_NS}}}pos")
            if pos is not None and pos.text:
                lat, lon = (float(v) for v in pos.text.split())
                call.position = (lat, lon)
        except (etree.XMLSyntaxError, ValueError):
            call.position = None
    return call


def answer(call: ReceivedCall, code: int = 200, reason: str = "OK") -> bytes:
    """RFC 3261 §8.2.6.2: the response copies Via, From, To (adding a tag), Call-ID and CSeq."""
    to = call.headers.get("to", "")
    if ";tag=" not in to:
        to += ";tag=psap"
    head = (
        f"SIP/2.0 {code} {reason}\r\n{call.headers.get('_vias', '')}"
        f"From: {call.headers.get('from', '')}\r\nTo: {to}\r\nCall-ID: {call.headers.get('call-id', '')}\r\n"
        f"CSeq: {call.headers.get('cseq', '')}\r\nContent-Length: 0\r\n\r\n"
    )
    return head.encode()


OnCall = Callable[[ReceivedCall], None]


class _Udp(socketserver.BaseRequestHandler):
    server: Any

    def handle(self) -> None:
        data, sock = self.request
        try:
            call = read_call(data)
        except SipError as exc:
            log.warning("psap: dropped a datagram that is not SIP: %s", exc)
            return
        self.server.on_call(call)
        sock.sendto(answer(call), self.client_address)


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
                    try:
                        call = read_call(raw)
                    except SipError as exc:
                        log.warning("psap: closing a connection that sent garbage: %s", exc)
                        return
                    self.server.on_call(call)
                    conn.sendall(answer(call))
                    continue
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk


class _UdpServer(socketserver.ThreadingUDPServer):
    on_call: OnCall
    daemon_threads = True
    allow_reuse_address = True


class _TcpServer(socketserver.ThreadingTCPServer):
    on_call: OnCall
    daemon_threads = True
    allow_reuse_address = True


class PsapReceiver:
    """``PsapReceiver("udp:127.0.0.1:5060", on_call=print).start()``; ``stop()`` ends it."""

    def __init__(self, listen: str, on_call: OnCall) -> None:
        proto, host, port = parse_listen(listen)
        self.server: _UdpServer | _TcpServer = (
            _UdpServer((host, port), _Udp) if proto == "udp" else _TcpServer((host, port), _Tcp)
        )
        self.server.on_call = on_call
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

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
