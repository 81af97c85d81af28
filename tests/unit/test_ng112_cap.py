"""CAP 1.2 from s4edge alerts: every message validates against the OASIS schema."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from lxml import etree

from s4edge.cloud_sync.messages import Alert, Detection, Location, Measurement, ModelRef
from s4edge.cloud_sync.ng112.cap import CAP_NS, CapError, CapRef, build_cap, cap_text, find_xsd, load_schema, parse_cap

SENDER = "sip:n1@plaza.s4edge.invalid"


@pytest.fixture
def schema(shared):
    return load_schema(shared / "standards" / "cap12.xsd")


def alert(**overrides) -> Alert:
    fields = dict(
        node_id="n1",
        site="plaza",
        seq=7,
        kind="gas",
        severity="Severe",
        state="new",
        incident="inc-0001-gas",
        ts=datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1))),
        location=Location(lat=48.208174, lon=16.373819, zone="north-gate"),
        title="Methane above 20 %LEL",
        measurements=[Measurement(quantity="ch4", value=23.5, unit="%LEL", sensor="mq4")],
        model=ModelRef(name="gasnet", version="1.2", sha256="a" * 64),
    )
    fields.update(overrides)
    return Alert(**fields)


def text(xml: bytes, path: str) -> str | None:
    return cap_text(parse_cap(xml), path)


def test_a_gas_alert_becomes_a_valid_cap_alert(schema):
    cap = build_cap(
        alert(), sender=SENDER, readings_uri="https://agg.example/ng112/incidents/x/readings?token=t", schema=schema
    )
    root = parse_cap(cap.xml)
    assert schema.validate(root), schema.error_log
    assert text(cap.xml, "status") == "Actual"
    assert text(cap.xml, "msgType") == "Alert"
    assert text(cap.xml, "scope") == "Private"
    assert text(cap.xml, "addresses") == "urn:service:sos"
    assert text(cap.xml, "incidents") == "inc-0001-gas"
    assert text(cap.xml, "info/category") == "CBRNE"
    assert text(cap.xml, "info/severity") == "Severe"
    assert text(cap.xml, "info/urgency") == "Immediate"
    assert text(cap.xml, "info/resource/uri").endswith("readings?token=t")
    assert text(cap.xml, "info/area/circle") == "48.208174,16.373819 0.1"
    params = {
        p.findtext(f"{{{CAP_NS}}}valueName"): p.findtext(f"{{{CAP_NS}}}value")
        for p in root.iter(f"{{{CAP_NS}}}parameter")
    }
    assert params["ch4"] == "23.5 %LEL"
    assert params["model"] == "gasnet 1.2" and params["model_sha256"] == "a" * 64


def test_sent_is_utc_with_a_numeric_offset_never_z(schema):
    cap = build_cap(alert(), sender=SENDER, schema=schema)
    # 12:30:15+01:00 is 11:30:15 UTC; CAP 1.2 §3.3.2 writes UTC as -00:00.
    assert text(cap.xml, "sent") == "2026-03-01T11:30:15-00:00"
    assert cap.ref.sent == "2026-03-01T11:30:15-00:00"


@pytest.mark.parametrize("status", ["Exercise", "Test"])
def test_a_drill_is_never_sent_as_actual(schema, status):
    cap = build_cap(alert(status=status), sender=SENDER, schema=schema)
    assert text(cap.xml, "status") == status
    assert cap.status == status


def test_update_and_cancel_reference_the_first_message(schema):
    first = build_cap(alert(), sender=SENDER, schema=schema)
    update = build_cap(
        alert(state="update", severity="Extreme"),
        sender=SENDER,
        msg_type="Update",
        references=(first.ref,),
        schema=schema,
    )
    cancel = build_cap(alert(state="end"), sender=SENDER, msg_type="Cancel", references=(first.ref,), schema=schema)
    expected = f"{SENDER},{first.ref.identifier},{first.ref.sent}"
    assert text(update.xml, "references") == expected
    assert text(update.xml, "msgType") == "Update"
    assert text(cancel.xml, "references") == expected
    assert text(cancel.xml, "info/responseType") == "AllClear"
    assert text(cancel.xml, "info/urgency") == "Past"


def test_an_update_without_references_is_refused(schema):
    with pytest.raises(CapError) as caught:
        build_cap(alert(state="update"), sender=SENDER, msg_type="Update", schema=schema)
    assert caught.value.field == "references"


@pytest.mark.parametrize(
    ("kind", "category"),
    [
        ("flame", "Fire"),
        ("smoke", "Fire"),
        ("intrusion", "Security"),
        ("crowd", "Safety"),
        ("co", "CBRNE"),
        ("odd_thing", "Other"),
    ],
)
def test_kinds_map_to_cap_categories(schema, kind, category):
    cap = build_cap(alert(kind=kind), sender=SENDER, schema=schema)
    assert text(cap.xml, "info/category") == category


def test_vision_metadata_goes_in_parameters_never_pixels(schema):
    seen = alert(
        kind="unattended_object", detection=Detection(label="backpack", count=1, track_ids=[4]), measurements=[]
    )
    cap = build_cap(seen, sender=SENDER, schema=schema)
    assert b"1 backpack" in cap.xml
    assert b"base64" not in cap.xml


def test_a_sender_with_spaces_is_caught_before_sending(schema):
    with pytest.raises(CapError) as caught:
        build_cap(alert(), sender="node one at plaza", schema=schema)
    assert caught.value.field == "sender"


def test_a_schema_violation_names_the_field(schema):
    with pytest.raises(CapError) as caught:
        build_cap(alert(), sender=SENDER, language="not a language", schema=schema)
    assert caught.value.field == "info/language"


def test_the_schema_comes_from_the_environment_or_a_clear_error(tmp_path, monkeypatch, shared):
    monkeypatch.setenv("S4EDGE_CAP_XSD", str(tmp_path / "missing.xsd"))
    with pytest.raises(FileNotFoundError, match="S4EDGE_CAP_XSD"):
        find_xsd()
    monkeypatch.setenv("S4EDGE_CAP_XSD", str(shared / "standards" / "cap12.xsd"))
    assert find_xsd() == shared / "standards" / "cap12.xsd"


def test_text_xml_cannot_hold_is_replaced_and_the_call_still_goes(schema):
    # lxml refuses XML 1.0's non-characters (a bell from a zone's name): the call would never go
    cap = build_cap(alert(title="gas\x07 at gate B", detail="\x01door\x1b[0m open\ttoo"), sender=SENDER, schema=schema)
    assert schema.validate(parse_cap(cap.xml)), schema.error_log
    assert text(cap.xml, "info/headline") == "gas\ufffd at gate B"
    assert text(cap.xml, "info/description") == "\ufffddoor\ufffd[0m open\ttoo"


def test_a_bidi_override_cannot_reorder_what_a_call_taker_reads(schema):
    # U+202E in a node's zone name would show "B etag ta sag" on the PSAP's screen
    cap = build_cap(
        alert(title="gas at \u202egate B\u202c", detail="\u2067door\u2069 open"), sender=SENDER, schema=schema
    )
    assert text(cap.xml, "info/headline") == "gas at \ufffdgate B\ufffd"
    assert text(cap.xml, "info/description") == "\ufffddoor\ufffd open"
    arabic = build_cap(
        alert(title="\u063a\u0627\u0632 \u200fgate"), sender=SENDER, schema=schema
    )  # a mark, not a control
    assert text(arabic.xml, "info/headline") == "\u063a\u0627\u0632 \u200fgate"


def test_output_parses_without_entities(schema):
    cap = build_cap(alert(detail="pressure <high> & rising"), sender=SENDER, schema=schema)
    assert isinstance(parse_cap(cap.xml), etree._Element)
    assert text(cap.xml, "info/description") == "pressure <high> & rising"


def test_capref_renders_as_the_cap_references_triple():
    assert str(CapRef("sip:a@b", "id-1", "2026-01-01T00:00:00-00:00")) == "sip:a@b,id-1,2026-01-01T00:00:00-00:00"
