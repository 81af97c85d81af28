"""The RFC 8876 non-interactive emergency call: one SIP MESSAGE carrying CAP, PIDF-LO
and DeviceInfo as a multipart/mixed body, and the parsing of what comes back."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Final, Literal, cast

SOS: Final = "urn:service:sos"
Proto = Literal["udp", "tcp", "tls"]
DEFAULT_PORT: Final[dict[str, int]] = {"udp": 5060, "tcp": 5060, "tls": 5061}


class SipError(ValueError):
    """A SIP URI or response that cannot be understood."""


@dataclass(frozen=True)
class SipTarget:
    """Where the MESSAGE goes on the wire (the PSAP, or the ESRP in front of it)."""

    uri: str
    host: str
    port: int
    transport: Proto | None  # None: chosen by message size (RFC 3261 §18.1.1)


_SIP_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@;]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>(?:;[^;?]*)*)$"
)


def parse_target(uri: str) -> SipTarget:
    """``sip:psap@127.0.0.1:5060;transport=tcp`` → host, port and transport. No DNS (RFC 3263)."""
    found = _SIP_URI.match(uri.strip())
    if not found:
        raise SipError(f"{uri!r} is not a SIP URI like sip:psap@192.0.2.1:5060;transport=tcp")
    params = dict([*part.split("=", 1), ""][:2] for part in found["params"].split(";") if part)
    wanted = params.get("transport", "").lower() or None
    if found["scheme"] == "sips":
        wanted = "tls"
    if wanted not in (None, "udp", "tcp", "tls"):
        raise SipError(f"{uri!r}: transport={wanted} is not udp, tcp or tls")
    proto = cast(Proto | None, wanted)
    port = int(found["port"]) if found["port"] else DEFAULT_PORT[proto or "udp"]
    if not 0 < port < 65536:
        raise SipError(f"{uri!r}: port {port} is out of range")
    return SipTarget(uri.strip(), found["host"].strip("[]"), port, proto)


@dataclass(frozen=True)
class BodyPart:
    content_type: str
    content_id: str  # without angle brackets; referenced as cid:<content_id>
    body: bytes


@dataclass
class EmergencyMessage:
    """RFC 8876 §3: MESSAGE to urn:service:sos (or a PSAP URI) with CAP referenced by Call-Info."""

    request_uri: str
    from_uri: str
    cap: BodyPart
    pidf: BodyPart
    device_info: BodyPart
    call_id: str = field(default_factory=lambda: f"{secrets.token_hex(12)}@s4edge")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(6))
    cseq: int = 1
    geolocation_routing: bool = False

    def body(self, boundary: str) -> bytes:
        chunks = []
        for part in (self.cap, self.pidf, self.device_info):
            chunks.append(
                f"--{boundary}\r\nContent-Type: {part.content_type}\r\nContent-ID: <{part.content_id}>\r\n"
                "Content-Disposition: by-reference;handling=optional\r\n\r\n".encode()
                + part.body
                + b"\r\n"
            )
        return b"".join(chunks) + f"--{boundary}--\r\n".encode()

    def render(self, proto: Proto, sent_by: str, branch: str) -> bytes:
        boundary = f"s4edge-{secrets.token_hex(8)}"
        body = self.body(boundary)
        head = [
            f"MESSAGE {self.request_uri} SIP/2.0",
            # RFC 3261 §8.1.1.7: the branch starts with the magic cookie z9hG4bK; rport per RFC 3581.
            f"Via: SIP/2.0/{proto.upper()} {sent_by};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{self.from_uri}>;tag={self.from_tag}",
            f"To: <{self.request_uri}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} MESSAGE",
            # RFC 8876 §3 (CAP) and RFC 7852 §4.1 (DeviceInfo): data blocks by cid reference.
            f"Call-Info: <cid:{self.cap.content_id}>;purpose=EmergencyCallData.cap, "
            f"<cid:{self.device_info.content_id}>;purpose=EmergencyCallData.DeviceInfo",
            # RFC 6442 §4.1-4.2: location by value in the body.
            f"Geolocation: <cid:{self.pidf.content_id}>",
            f"Geolocation-Routing: {'yes' if self.geolocation_routing else 'no'}",
            "Supported: geolocation",
            "Accept: application/pidf+xml, application/cap+xml",
            "User-Agent: s4edge-ng112",
            f'Content-Type: multipart/mixed; boundary="{boundary}"',
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def new_branch() -> str:
    return f"z9hG4bK{secrets.token_hex(10)}"


@dataclass(frozen=True)
class AlertMsgError:
    """RFC 8876 §5.2: ``AlertMsg-Error: 101 ;message="..."`` on a 425 response."""

    code: int
    message: str | None

    def __str__(self) -> str:
        return f"{self.code} {self.message}" if self.message else str(self.code)


_ALERTMSG = re.compile(r'^\s*(\d{3})\s*(?:;\s*message\s*=\s*"((?:[^"\\]|\\.)*)")?', re.IGNORECASE)


def parse_alertmsg_error(value: str) -> AlertMsgError | None:
    found = _ALERTMSG.match(value)
    if not found:
        return None
    return AlertMsgError(int(found[1]), found[2].replace('\\"', '"') if found[2] else None)


@dataclass(frozen=True)
class SipResponse:
    code: int
    reason: str
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def branch(self) -> str | None:
        via = self.header("via") or ""
        found = re.search(r";\s*branch=([^;,\s]+)", via)
        return found[1] if found else None

    @property
    def alert_msg_error(self) -> AlertMsgError | None:
        value = self.header("alertmsg-error")
        return parse_alertmsg_error(value) if value else None


# RFC 3261 §7.3.3 compact forms of the headers we read.
_COMPACT: Final = {"v": "via", "i": "call-id", "l": "content-length", "c": "content-type", "f": "from", "t": "to"}
_STATUS = re.compile(rb"^SIP/2\.0 ([1-6]\d\d) ?([^\r\n]*)$")


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """Head and rest of a stream buffer, or None while the blank line is still to come."""
    end = data.find(b"\r\n\r\n")
    return None if end < 0 else (data[:end], data[end + 4 :])


def parse_head(head: bytes) -> tuple[int, str, dict[str, list[str]]]:
    lines = head.split(b"\r\n")
    status = _STATUS.match(lines[0])
    if not status:
        raise SipError(f"not a SIP response status line: {lines[0][:80]!r}")
    headers: dict[str, list[str]] = {}
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t") and headers:  # RFC 3261 §7.3.1 line folding
            last = next(reversed(headers))
            headers[last][-1] += " " + raw.strip().decode("utf-8", "replace")
            continue
        name, sep, value = raw.partition(b":")
        if not sep or not name.strip():
            raise SipError(f"malformed header line: {raw[:80]!r}")
        key = name.strip().decode("ascii", "replace").lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip().decode("utf-8", "replace"))
    return int(status[1]), status[2].decode("utf-8", "replace"), headers


def content_length(headers: dict[str, list[str]]) -> int:
    raw = (headers.get("content-length") or ["0"])[0]
    if not raw.isdigit():
        raise SipError(f"bad Content-Length {raw[:20]!r}")
    return int(raw)


def parse_response(data: bytes) -> SipResponse:
    """One complete response (a UDP datagram). Raises SipError on anything else."""
    parts = split_head(data)
    if parts is None:
        raise SipError("no end of headers in the response")
    code, reason, headers = parse_head(parts[0])
    size = content_length(headers) if "content-length" in headers else len(parts[1])
    return SipResponse(code, reason, headers, parts[1][:size])
