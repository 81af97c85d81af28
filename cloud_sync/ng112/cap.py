"""CAP 1.2 (OASIS) messages from s4edge alerts, validated against the OASIS schema.

The OASIS schema ships with the package (``schema/cap12.xsd``, with its OASIS notice);
``S4EDGE_CAP_XSD`` or a path the caller gives replaces it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal

from lxml import etree

from s4edge.cloud_sync.messages import Alert
from s4edge.resources import packaged

CAP_NS: Final = "urn:oasis:names:tc:emergency:cap:1.2"
# RFC 8876 §4.1 and §10.1 (IANA media-type registry): the media type of a CAP body part in a
# SIP message. "application/cap+xml" is not it; a PSAP answers that with 425 (RFC 8876 §5.1).
CAP_MIME: Final = "application/EmergencyCallData.cap+xml"
XSD_ENV: Final = "S4EDGE_CAP_XSD"

MsgType = Literal["Alert", "Update", "Cancel"]

# CAP 1.2 §3.2.2 <category>: map s4edge alert kinds onto CAP's fixed list.
CATEGORY: Final[dict[str, str]] = {
    "gas": "CBRNE",
    "co": "CBRNE",
    "nir_match": "CBRNE",
    "smoke": "Fire",
    "flame": "Fire",
    "temperature": "Fire",
    "intrusion": "Security",
    "line_cross": "Security",
    "loitering": "Security",
    "unattended_object": "Security",
    "crowd": "Safety",
    "sensor_fault": "Infra",
    "camera_fault": "Infra",
    "escalation": "Safety",
}
# CAP 1.2 §3.2.2 <responseType>: what the PSAP is asked to consider for that hazard.
RESPONSE: Final[dict[str, str]] = {
    "CBRNE": "Evacuate",
    "Fire": "Evacuate",
    "Security": "Monitor",
    "Safety": "Assess",
    "Infra": "None",
}
# CAP 1.2 §3.3.3: identifier, sender and references must not hold spaces, commas, '<' or '&'.
_RESTRICTED = re.compile(r"[\s,<&]")


class CapError(ValueError):
    """A CAP message that would not be valid; ``field`` names the offending element."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"CAP field {field!r}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class CapRef:
    """The triple that CAP ``references`` uses to point at an earlier message (§3.2.1)."""

    sender: str
    identifier: str
    sent: str

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{self.sent}"


@dataclass(frozen=True)
class CapMessage:
    ref: CapRef
    msg_type: MsgType
    status: str
    xml: bytes


def cap_time(moment: datetime) -> str:
    """CAP 1.2 §3.3.2: seconds precision, numeric offset; UTC is written ``-00:00``, never ``Z``."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + "-00:00"


def node_sip_uri(node_id: str, site: str, domain: str = "s4edge.invalid") -> str:
    """The node's address as the From and the CAP sender: the site as a host name label."""
    return f"sip:{node_id}@{host_label(site)}.{domain}"


def host_label(name: str) -> str:
    """``name`` as a host name label (RFC 3261 §25.1 ``domainlabel``: letters, digits and
    inner hyphens): a site id may hold ``_`` or end in ``-``, which a strict parser refuses."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")
    return label[:63].rstrip("-") or "site"


def find_xsd(path: str | Path | None = None) -> Path:
    """The CAP 1.2 schema: an explicit path, else ``$S4EDGE_CAP_XSD``, else the packaged one."""
    override = path or os.environ.get(XSD_ENV)
    candidate = Path(override) if override else packaged("cloud_sync", "ng112", "schema", "cap12.xsd")
    if not candidate.is_file():
        raise FileNotFoundError(f"CAP 1.2 schema not found at {candidate}: set {XSD_ENV} to the OASIS cap12.xsd")
    return candidate


# lru_cache does not lock, and two send workers building the schema at once made libxml2
# fail ("XMLSchemaParseError: Internal error"): it is built once, under this lock.
_building = threading.Lock()


@lru_cache(maxsize=4)
def _schema(path: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(path)))


def load_schema(path: str | Path | None = None) -> etree.XMLSchema:
    with _building:
        return _schema(find_xsd(path).resolve())


# XML 1.0 §2.2 Char: what an element's text may hold. An alert's free text may hold more
# (a control character from a zone's name): lxml refuses it, and the call would never go.
# Unicode's bidi embeddings, overrides and isolates (UAX #9 §2.1-2.2) are valid XML, but one in
# a node's title reorders the rest of the call-taker's line: replaced too (marks such as RLM stay).
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\u202a-\u202e\u2066-\u2069]")


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        child.text = _NOT_XML_CHAR.sub("\ufffd", text)
    return child


def _param(info: etree._Element, name: str, value: str) -> None:
    param = _sub(info, "parameter")
    _sub(param, "valueName", name)
    _sub(param, "value", value)


def _check_token(field: str, value: str) -> None:
    if not value:
        raise CapError(field, "must not be empty")
    if _RESTRICTED.search(value):
        raise CapError(field, f"{value[:60]!r} holds a space, comma, '<' or '&' (CAP 1.2 §3.3.3)")


def _field_of(tree: etree._ElementTree, error_path: str) -> str:
    """lxml reports ``/*/*[7]/*[1]``; name it as CAP does, e.g. ``info/language``."""
    try:
        found = tree.xpath(error_path) if error_path else []
    except etree.XPathError:
        found = []
    if not found or not isinstance(found[0], etree._Element):
        return "alert"
    names = [etree.QName(node).localname for node in (found[0], *found[0].iterancestors())]
    return "/".join(reversed(names[:-1])) or "alert"


def build_cap(
    alert: Alert,
    *,
    sender: str,
    msg_type: MsgType = "Alert",
    references: Sequence[CapRef] = (),
    addresses: str = "urn:service:sos",
    readings_uri: str | None = None,
    language: str = "en-US",
    radius_km: float = 0.1,
    schema: etree.XMLSchema | None = None,
    sent: datetime | None = None,
) -> CapMessage:
    """One CAP 1.2 ``alert`` for ``alert``, checked before anything leaves the process.

    Raises ``CapError`` naming the field when the message would not validate.
    """
    if msg_type != "Alert" and not references:
        raise CapError("references", f"a CAP {msg_type} must reference the earlier messages of the incident")
    ref = cap_ref(alert, sender, sent)
    identifier, stamp = ref.identifier, ref.sent
    _check_token("identifier", identifier)
    _check_token("sender", sender)
    _check_token("addresses", addresses)
    for earlier in references:  # not ``ref``: that is this message's own, which it returns
        for part in (earlier.sender, earlier.identifier, earlier.sent):
            _check_token("references", part)

    root = etree.Element(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})
    _sub(root, "identifier", identifier)
    _sub(root, "sender", sender)
    _sub(root, "sent", stamp)
    # The alert's own status decides: a drill (Exercise) or a commissioning Test is never Actual.
    _sub(root, "status", alert.status)
    _sub(root, "msgType", msg_type)
    _sub(root, "source", f"s4edge node {alert.node_id}")
    _sub(root, "scope", "Private")
    _sub(root, "addresses", addresses)
    if references:  # CAP 1.2 §3.2.1: a space-delimited list; an Update supersedes, a Cancel cancels, each of them
        _sub(root, "references", " ".join(str(ref) for ref in references))
    _sub(root, "incidents", alert.incident)

    info = _sub(root, "info")
    _sub(info, "language", language)
    category = CATEGORY.get(alert.kind, "Other")
    _sub(info, "category", category)
    _sub(info, "event", alert.kind.replace("_", " "))
    _sub(info, "responseType", "AllClear" if msg_type == "Cancel" else RESPONSE.get(category, "Assess"))
    _sub(info, "urgency", "Past" if msg_type == "Cancel" else "Immediate")
    _sub(info, "severity", alert.severity)
    _sub(info, "certainty", _certainty(alert))
    _sub(info, "senderName", f"s4edge automated sensor node {alert.node_id} ({alert.site})")
    where = _area(alert)
    _sub(info, "headline", headline(alert))
    if alert.detail:
        _sub(info, "description", alert.detail)
    for measurement in alert.measurements:
        _param(info, measurement.quantity, f"{measurement.value:g} {measurement.unit}")
    if alert.detection is not None:
        _param(info, "detection", f"{alert.detection.count} {alert.detection.label}")
    if alert.model is not None:
        _param(info, "model", f"{alert.model.name} {alert.model.version}")
        _param(info, "model_sha256", alert.model.sha256)
    _param(info, "node", f"{alert.site}/{alert.node_id}")
    if readings_uri is not None:
        # The PSAP data request: the node's last readings, by reference (CAP 1.2 §3.2.3).
        resource = _sub(info, "resource")
        _sub(resource, "resourceDesc", "Last sensor readings of the node for this incident")
        _sub(resource, "mimeType", "application/json")
        _sub(resource, "uri", readings_uri)
    area = _sub(info, "area")
    _sub(area, "areaDesc", where)
    # CAP 1.2 §3.2.4 <circle>: "lat,lon radius" in WGS 84, radius in km.
    _sub(area, "circle", f"{alert.location.lat:.6f},{alert.location.lon:.6f} {radius_km:g}")

    checker = schema if schema is not None else load_schema()
    tree = etree.ElementTree(root)
    if not checker.validate(tree):
        first = checker.error_log[0]
        raise CapError(_field_of(tree, first.path or ""), first.message)
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return CapMessage(ref, msg_type, alert.status, xml)


def _certainty(alert: Alert) -> str:
    return "Likely" if alert.kind == "escalation" else "Observed"


def _area(alert: Alert) -> str:
    return alert.location.zone or alert.site


def headline(alert: Alert) -> str:
    """CAP 1.2 §3.2.2 <headline>: the alert's title, or its kind and where."""
    return (alert.title or f"{alert.kind.replace('_', ' ')} at {_area(alert)}")[:160]


# A number in a headline is a reading ("CO alarm: 312 ppm", "23 × person in gate"): it changes
# with each update, while the words around it say what the call-taker is looking at.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def gist(alert: Alert) -> tuple[str, ...]:
    """What a PSAP call-taker sees of the CAP message made of ``alert``, its readings aside:
    status, event, urgency (the end's Cancel is Past), severity, certainty, the headline's
    wording and the area (its description and circle). Two alerts of one incident with the
    same gist differ in readings only (measurements, counts, a description)."""
    return (
        alert.status,
        alert.kind,
        "Past" if alert.state == "end" else "Immediate",
        alert.severity,
        _certainty(alert),
        _NUMBER.sub("#", headline(alert)),
        _area(alert),
        f"{alert.location.lat:.6f},{alert.location.lon:.6f}",
    )


def cap_ref(alert: Alert, sender: str, sent: datetime | None = None) -> CapRef:
    """How the CAP message made of ``alert`` by ``sender`` is referred to: one identifier per
    alert, and its time, so that a retry or a later reference names the same message."""
    return CapRef(sender, f"s4edge-{alert.id}", cap_time(sent or alert.ts))


def parse_cap(xml: bytes) -> etree._Element:
    """Parse a CAP document without resolving entities or reaching the network."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(xml, parser)


def cap_text(root: etree._Element, path: str) -> str | None:
    """Text of ``info/headline``-style paths in a parsed CAP alert."""
    found = root.find("/".join(f"{{{CAP_NS}}}{part}" for part in path.split("/")))
    return found.text if found is not None else None
