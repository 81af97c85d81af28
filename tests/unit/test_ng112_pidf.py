"""PIDF-LO (RFC 4119 / RFC 5491) and RFC 7852 DeviceInfo for a fixed sensor node."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lxml import etree

from s4edge.cloud_sync.messages import Location
from s4edge.cloud_sync.ng112.pidf import (
    DEV_NS,
    DM_NS,
    GML_NS,
    GP_NS,
    PIDF_NS,
    LocationError,
    build_device_info,
    build_pidf,
)

WHEN = datetime(2026, 3, 1, 11, 30, 15, tzinfo=UTC)


def test_a_point_in_wgs84_with_method_and_timestamp():
    xml = build_pidf(
        Location(lat=48.208174, lon=16.373819),
        entity="sip:n1@plaza.s4edge.invalid",
        device_id="urn:s4edge:node:plaza:n1",
        timestamp=WHEN,
        method="Survey",
    )
    root = etree.fromstring(xml)
    assert root.tag == f"{{{PIDF_NS}}}presence"
    assert root.get("entity") == "sip:n1@plaza.s4edge.invalid"
    device = root.find(f"{{{DM_NS}}}device")
    point = device.find(f"{{{GP_NS}}}geopriv/{{{GP_NS}}}location-info/{{{GML_NS}}}Point")
    assert point.get("srsName") == "urn:ogc:def:crs:EPSG::4326"
    # RFC 5491 §5.2.1: latitude first.
    assert point.findtext(f"{{{GML_NS}}}pos") == "48.208174 16.373819"
    assert device.findtext(f"{{{GP_NS}}}geopriv/{{{GP_NS}}}method") == "Survey"
    assert device.findtext(f"{{{DM_NS}}}deviceID") == "urn:s4edge:node:plaza:n1"
    assert device.findtext(f"{{{DM_NS}}}timestamp") == "2026-03-01T11:30:15+00:00"


@pytest.mark.parametrize(
    ("location", "reason"),
    [(None, "no location"), (Location(lat=0.0, lon=0.0), "0,0")],
)
def test_an_alert_without_a_usable_location_is_refused(location, reason):
    with pytest.raises(LocationError) as caught:
        build_pidf(location, entity="sip:a@b", device_id="urn:x", timestamp=WHEN)
    assert reason in caught.value.reason


def test_an_unknown_method_is_refused():
    with pytest.raises(LocationError, match="method"):
        build_pidf(Location(lat=1.0, lon=2.0), entity="sip:a@b", device_id="urn:x", timestamp=WHEN, method="Guess")


def test_device_info_says_there_is_no_human_caller():
    root = etree.fromstring(build_device_info(provider_reference="s4edge-1", device_id="urn:s4edge:node:plaza:n1"))
    assert root.tag == f"{{{DEV_NS}}}EmergencyCallData.DeviceInfo"
    assert "no human caller" in root.findtext(f"{{{DEV_NS}}}DeviceClassification")
    assert root.findtext(f"{{{DEV_NS}}}DataProviderReference") == "s4edge-1"
    assert root.find(f"{{{DEV_NS}}}UniqueDeviceID").text == "urn:s4edge:node:plaza:n1"
