"""The RFC 8876 non-interactive emergency call: one SIP MESSAGE carrying CAP, PIDF-LO
and DeviceInfo as a multipart/mixed body, and the parsing of what comes back.

Names on the wire are the registered ones: the media types of the IANA media-type
registry (RFC 8876 §10.1 ``application/EmergencyCallData.cap+xml``, RFC 7852
``application/EmergencyCallData.DeviceInfo+xml``, RFC 4119 ``application/pidf+xml``),
the Call-Info purposes of the Emergency Call Data Types registry (RFC 7852, RFC 8876
§10.2), response code 425 and the AlertMsg-Error codes (RFC 8876 §10.3-§10.5).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Final, Literal, cast

from s4edge.shown import shown_url

SOS: Final = "urn:service:sos"
# RFC 8876 §4.1 / §10.2 and RFC 7852: Call-Info purpose = "EmergencyCallData." + the data
# block's name in the Emergency Call Data Types registry.
CAP_PURPOSE: Final = "EmergencyCallData.cap"
DEVICE_INFO_PURPOSE: Final = "EmergencyCallData.DeviceInfo"
# RFC 8876 §5.1 (registered in §10.3): the alert payload, not the SIP signalling, was wrong.
BAD_ALERT_MESSAGE: Final = 425
# RFC 8876 §5.2, the "SIP AlertMsg-Error Codes" registry (§10.5): code → default reason phrase.
ALERTMSG_ERRORS: Final[dict[int, str]] = {
    100: "Cannot process the alert payload",
    101: "Alert payload was not present or could not be found",
    102: "Not enough information to determine the purpose of the alert",
    103: "Alert payload was corrupted",
}
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

    @property
    def sips(self) -> bool:
        """A SIPS URI: TLS on every hop up to the URI's domain (RFC 3261 §26.2.2), where a
        ``sip:`` URI with ``;transport=tls`` asks it of the first hop only (RFC 5630)."""
        return self.uri[:5].lower() == "sips:"


_SIP_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@;]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>(?:;[^;?]*)*)$",
    re.IGNORECASE,  # a scheme is case-insensitive (RFC 3986 §3.1), SIP: as sip:
)


def shown_uri(uri: str) -> str:
    """``uri`` for a message: a password in its userinfo (RFC 3261 §19.1.1 advises against one,
    but a URI may hold one) as ``***``."""
    # the scheme is case-insensitive (RFC 3986 §3.1); the password ends at the last '@', as an
    # unescaped '@' or ';' in it would otherwise show what follows it
    if not re.match(r"(?i)sips?:", uri.strip()):  # an https:// given as the PSAP: hidden as any URL is
        return shown_url(uri.strip())
    return re.sub(r"(?i)^(sips?:[^:@;]*):.*@", r"\1:***@", uri.strip())


def parse_target(uri: str) -> SipTarget:
    """``sip:psap@127.0.0.1:5060;transport=tcp`` → host, port and transport. No DNS (RFC 3263)."""
    found = _SIP_URI.match(uri.strip())
    shown = shown_uri(uri)
    if not found:
        raise SipError(f"{shown!r} is not a SIP URI like sip:psap@192.0.2.1:5060;transport=tcp")
    params = dict([*part.split("=", 1), ""][:2] for part in found["params"].split(";") if part)
    wanted = params.get("transport", "").lower() or None
    if found["scheme"].lower() == "sips":
        wanted = "tls"
    if wanted not in (None, "udp", "tcp", "tls"):
        raise SipError(f"{shown!r}: transport={wanted} is not udp, tcp or tls")
    proto = cast(Proto | None, wanted)
    port = int(found["port"]) if found["port"] else DEFAULT_PORT[proto or "udp"]
    if not 0 < port < 65536:
        raise SipError(f"{shown!r}: port {port} is out of range")
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
    # RFC 6442 §4.2: "yes" lets the routing proxies (ESRP) route on the location, "no" or no
    # header forbids it; an emergency call is routed by location (RFC 6881 §8), so "yes".
    geolocation_routing: bool = True
    # The To: the first Request-URI, kept when a redirect changes the Request-URI (``redirected``).
    to_uri: str = ""

    def __post_init__(self) -> None:
        self.to_uri = self.to_uri or self.request_uri

    def redirected(self, contact: str) -> EmergencyMessage:
        """The request sent on to a 3xx's Contact: a new transaction (its branch is drawn when it
        is sent) of the same call, Call-ID, From (its tag) and To kept, the CSeq one higher (RFC
        3261 §8.1.3.5, §20.16), the Request-URI the Contact's URI without a method parameter
        (§8.1.3.4, §19.1.1: a MESSAGE is not to become another method)."""
        uri = ";".join(part for part in contact.split(";") if not part.lower().startswith("method="))
        return replace(self, request_uri=uri, cseq=self.cseq + 1)

    def body(self, boundary: str) -> bytes:
        chunks = []
        for part in (self.cap, self.pidf, self.device_info):
            # RFC 8876 §8 (example) and RFC 7852: every part is referenced from a header by its
            # Content-ID (RFC 2392 cid:), so its disposition is "by-reference" (RFC 5621); a PSAP
            # that does not understand a part still takes the call: handling=optional (RFC 3261 §20.11).
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
            f"To: <{self.to_uri}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} MESSAGE",
            # RFC 8876 §4.1 (CAP) and RFC 7852 (DeviceInfo): each data block by value, found
            # through a Call-Info cid: URL (RFC 2392) and its purpose; <...> per RFC 3261 §20.9.
            f"Call-Info: <cid:{self.cap.content_id}>;purpose={CAP_PURPOSE}, "
            f"<cid:{self.device_info.content_id}>;purpose={DEVICE_INFO_PURPOSE}",
            # RFC 6442 §4.1: location by value, the PIDF-LO part referenced by cid:. No Supported
            # option tag: the registered ones, "geolocation-sip" and "geolocation-http" (RFC 6442),
            # say a UA can dereference location URIs, which this sender never asks anyone to do.
            f"Geolocation: <cid:{self.pidf.content_id}>",
            f"Geolocation-Routing: {'yes' if self.geolocation_routing else 'no'}",
            # RFC 8876 §8 (example): the bodies this UA understands in a response.
            f"Accept: {self.pidf.content_type}, {self.cap.content_type}",
            "User-Agent: s4edge-ng112",
            # RFC 8876 §4.1 / RFC 5621: the parts travel together in one multipart/mixed body.
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

    def header(self) -> str:
        """The header line a PSAP sends; without a message, the code's registered phrase."""
        text = (self.message or ALERTMSG_ERRORS.get(self.code, "")).replace("\\", "\\\\").replace('"', '\\"')
        return f'AlertMsg-Error: {self.code} ;message="{text}"' if text else f"AlertMsg-Error: {self.code}"


def alertmsg_error(code: int) -> AlertMsgError:
    """The error with its default reason phrase from the RFC 8876 §10.5 registry."""
    return AlertMsgError(code, ALERTMSG_ERRORS[code])


# RFC 8876 §5.2 ABNF: error-code *(SEMI error-params), the text a quoted-string parameter. The
# IANA header-parameter registry lists that parameter as "code" (RFC 8876 §10.4), so a text
# under either name is read.
_ALERTMSG = re.compile(r"^\s*(\d{3})(?!\d)(.*)$", re.DOTALL)
_PARAM = re.compile(r'\s*;\s*([A-Za-z0-9.!%*_+`\'~-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;\s]*))?\s*')


def parse_alertmsg_error(value: str) -> AlertMsgError | None:
    found = _ALERTMSG.match(value)
    if not found:
        return None
    text, rest = None, found[2]
    while rest.strip():
        param = _PARAM.match(rest)
        if not param:
            break
        if param[1].lower() in ("message", "code") and (param[2] or "").startswith('"'):
            text = re.sub(r"\\(.)", r"\1", param[2][1:-1])
        rest = rest[param.end() :]
    return AlertMsgError(int(found[1]), text)


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
    def retry_after(self) -> int | None:
        """Seconds the server asks us to wait (RFC 3261 §20.33: delta-seconds, then an
        optional comment and parameters), or None."""
        found = _RETRY_AFTER.match(self.header("retry-after") or "")
        return int(found[1]) if found else None

    @property
    def alert_msg_error(self) -> AlertMsgError | None:
        value = self.header("alertmsg-error")
        return parse_alertmsg_error(value) if value else None


# RFC 3261 §7.3.3 compact forms of the headers we read.
COMPACT_HEADERS: Final = {
    "v": "via",
    "i": "call-id",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "t": "to",
}
_STATUS = re.compile(rb"^SIP/2\.0 ([1-6]\d\d) ?([^\r\n]*)$")
_DIGITS = re.compile(r"[0-9]{1,9}")
_RETRY_AFTER = re.compile(r"\s*([0-9]{1,9})\s*(?:[(;]|$)")


def split_head(data: bytes) -> tuple[bytes, bytes] | None:
    """Head and rest of a stream buffer, or None while the blank line is still to come.
    RFC 3261 §7.5: CRLFs before the start-line are ignored (RFC 5626 keep-alives send them)."""
    data = data.lstrip(b"\r\n")
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
        key = COMPACT_HEADERS.get(key, key)
        headers.setdefault(key, []).append(value.strip().decode("utf-8", "replace"))
    return int(status[1]), status[2].decode("utf-8", "replace"), headers


def content_length(headers: dict[str, list[str]]) -> int:
    raw = (headers.get("content-length") or ["0"])[0]
    if not _DIGITS.fullmatch(raw):  # str.isdigit would take '²', and int() then raise ValueError
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
