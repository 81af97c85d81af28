"""Compose the emergency call for one alert: CAP + PIDF-LO + DeviceInfo in one SIP MESSAGE."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from s4edge.cloud_sync.messages import Alert
from s4edge.cloud_sync.ng112.cap import CAP_MIME, CapMessage, CapRef, MsgType, build_cap, node_sip_uri
from s4edge.cloud_sync.ng112.pidf import DEVICE_INFO_MIME, PIDF_MIME, build_device_info, build_pidf
from s4edge.cloud_sync.ng112.sip import SOS, BodyPart, EmergencyMessage, SipError, parse_target

log = logging.getLogger(__name__)
# RFC 2392 §2: a cid: URL names a Content-ID, an RFC 5322 §3.6.4 msg-id, "<" dot-atom "@" dot-atom ">":
# its right side is the sender's host name, never a port, a ;parameter or an IPv6 address's colons.
_DOT_ATOM_HOST = re.compile(r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$")


@dataclass(frozen=True)
class Caller:
    """Who calls and how: the node's SIP identity and the routing choices of the site."""

    sender_domain: str = "s4edge.invalid"
    sender: str | None = None  # a configured SIP URI replaces sip:{node}@{site}.{domain}
    request_uri: str = SOS
    location_method: str = "Manual"
    language: str = "en-US"
    # Geolocation-Routing (RFC 6442 §4.2): "yes" lets the ESRP route on the node's location.
    geolocation_routing: bool = True

    def __post_init__(self) -> None:
        if not self.geolocation_routing and self.request_uri.lower().startswith(SOS):
            # Not refused: RFC 6442 leaves the choice to the sender. But a service URN is
            # resolved to a PSAP from the caller's location (RFC 5222, RFC 6881 §8), which
            # Geolocation-Routing: no forbids the routing proxies to use.
            log.warning(
                "Geolocation-Routing: no toward %s forbids the emergency routing proxies to route on "
                "the node's location (RFC 6442 §4.2); the call may reach no PSAP or the wrong one. "
                "Send yes, or give the PSAP's own SIP URI as request_uri.",
                self.request_uri,
            )

    def uri_for(self, alert: Alert) -> str:
        return self.sender or node_sip_uri(alert.node_id, alert.site, self.sender_domain)


@dataclass(frozen=True)
class Call:
    cap: CapMessage
    message: EmergencyMessage


def compose(
    alert: Alert,
    caller: Caller,
    *,
    msg_type: MsgType = "Alert",
    references: Sequence[CapRef] = (),
    readings_uri: str | None = None,
    schema: etree.XMLSchema | None = None,
) -> Call:
    """Raises CapError or LocationError before anything is sent."""
    sender = caller.uri_for(alert)
    cap = build_cap(
        alert,
        sender=sender,
        msg_type=msg_type,
        references=references,
        addresses=caller.request_uri,
        readings_uri=readings_uri,
        language=caller.language,
        schema=schema,
    )
    device = f"urn:s4edge:node:{alert.site}:{alert.node_id}"
    pidf = build_pidf(
        alert.location, entity=sender, device_id=device, timestamp=alert.ts, method=caller.location_method
    )
    host = content_id_host(sender)
    tag = secrets.token_hex(6)
    message = EmergencyMessage(
        request_uri=caller.request_uri,
        from_uri=sender,
        cap=BodyPart(CAP_MIME, f"cap-{tag}@{host}", cap.xml),
        pidf=BodyPart(PIDF_MIME, f"loc-{tag}@{host}", pidf),
        device_info=BodyPart(
            DEVICE_INFO_MIME,
            f"dev-{tag}@{host}",
            build_device_info(provider_reference=cap.ref.identifier, device_id=device),
        ),
        geolocation_routing=caller.geolocation_routing,
    )
    return Call(cap, message)


def content_id_host(sender: str) -> str:
    """The right side of the call's Content-IDs: the sender's host, where it is a dot-atom."""
    try:
        host = parse_target(sender).host
    except SipError:
        host = ""
    return host if _DOT_ATOM_HOST.match(host) else "s4edge.invalid"  # RFC 2606: a name that is no one's
