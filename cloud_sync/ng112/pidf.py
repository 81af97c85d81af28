"""PIDF-LO (RFC 4119, profiled by RFC 5491) for a fixed sensor node, and the RFC 7852
DeviceInfo block that tells the PSAP there is no human caller."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from lxml import etree

from s4edge.cloud_sync.messages import Location

# IANA media-type registry: PIDF (RFC 3863, for PIDF-LO RFC 4119) and the RFC 7852 DeviceInfo block.
PIDF_MIME: Final = "application/pidf+xml"
DEVICE_INFO_MIME: Final = "application/EmergencyCallData.DeviceInfo+xml"
PIDF_NS: Final = "urn:ietf:params:xml:ns:pidf"
GP_NS: Final = "urn:ietf:params:xml:ns:pidf:geopriv10"
# RFC 4119 §2.2.2: the basic usage rules live in their own namespace (locPolicyType).
GBP_NS: Final = "urn:ietf:params:xml:ns:pidf:geopriv10:basicPolicy"
DM_NS: Final = "urn:ietf:params:xml:ns:pidf:data-model"
GML_NS: Final = "http://www.opengis.net/gml"
DEV_NS: Final = "urn:ietf:params:xml:ns:EmergencyCallData:DeviceInfo"
# RFC 5491 §5.2.1: 2-D points use this CRS; gml:pos is "latitude longitude".
WGS84_2D: Final = "urn:ogc:def:crs:EPSG::4326"
METHODS: Final = frozenset({"Manual", "Survey", "GPS", "A-GPS", "Cell", "DHCP", "Wiremap"})


class LocationError(ValueError):
    """An alert whose location cannot be sent to a PSAP; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"no usable location: {reason}")
        self.reason = reason


def usable(location: Location | None) -> Location:
    """The location, or LocationError. (0, 0) is what an unconfigured node reports."""
    if location is None:
        raise LocationError("the alert carries no location; set the node's lat/lon in its config")
    if location.lat == 0.0 and location.lon == 0.0:
        raise LocationError("lat/lon are 0,0 (unconfigured node); set the node's surveyed lat/lon")
    return location


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def build_pidf(
    location: Location | None,
    *,
    entity: str,
    device_id: str,
    timestamp: datetime,
    method: str = "Manual",
) -> bytes:
    """A PIDF-LO document with one ``dm:device`` (RFC 5491 §3.2) at a WGS 84 point."""
    where = usable(location)
    if method not in METHODS:
        raise LocationError(f"method {method!r} is not one of {sorted(METHODS)} (RFC 4119 §2.2.3)")
    root = etree.Element(
        _q(PIDF_NS, "presence"),
        nsmap={None: PIDF_NS, "gp": GP_NS, "gbp": GBP_NS, "dm": DM_NS, "gml": GML_NS},
        entity=entity,
    )
    device = etree.SubElement(root, _q(DM_NS, "device"), id="node")
    geopriv = etree.SubElement(device, _q(GP_NS, "geopriv"))
    info = etree.SubElement(geopriv, _q(GP_NS, "location-info"))
    point = etree.SubElement(info, _q(GML_NS, "Point"), srsName=WGS84_2D)
    etree.SubElement(point, _q(GML_NS, "pos")).text = f"{where.lat:.6f} {where.lon:.6f}"
    rules = etree.SubElement(geopriv, _q(GP_NS, "usage-rules"))
    # RFC 4119 §2.2.2: the PSAP may not pass the node's location on. The element is an
    # xs:boolean in the basicPolicy schema, so "false": the "no" of some RFC examples is invalid.
    etree.SubElement(rules, _q(GBP_NS, "retransmission-allowed")).text = "false"
    etree.SubElement(geopriv, _q(GP_NS, "method")).text = method
    etree.SubElement(device, _q(DM_NS, "deviceID")).text = device_id
    etree.SubElement(device, _q(DM_NS, "timestamp")).text = timestamp.isoformat(timespec="seconds")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def build_device_info(*, provider_reference: str, device_id: str, model: str = "s4edge node") -> bytes:
    """RFC 7852 §4.4 DeviceInfo: an automated sensor, no human caller to talk to."""
    root = etree.Element(_q(DEV_NS, "EmergencyCallData.DeviceInfo"), nsmap={"dev": DEV_NS})
    etree.SubElement(root, _q(DEV_NS, "DataProviderReference")).text = provider_reference
    # RFC 7852 §4.4.1 DeviceClassification is free text describing the device type.
    etree.SubElement(
        root, _q(DEV_NS, "DeviceClassification")
    ).text = "Automated fixed sensor node (no human caller; non-interactive)"
    etree.SubElement(root, _q(DEV_NS, "DeviceMfgr")).text = "s4edge"
    etree.SubElement(root, _q(DEV_NS, "DeviceModelNr")).text = model
    etree.SubElement(root, _q(DEV_NS, "UniqueDeviceID"), TypeOfDeviceID="SN").text = device_id
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
