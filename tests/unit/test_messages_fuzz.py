"""Property tests of the wire contract's decoder: nothing but MessageError ever escapes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from s4edge.cloud_sync.messages import (
    MAX_MESSAGE_BYTES,
    MAX_RECEIPT_IDS,
    Alert,
    CommandResult,
    Heartbeat,
    Location,
    Measurement,
    MessageError,
    Receipt,
    Status,
    Telemetry,
    decode,
    decode_from,
    encode,
    receipts_for,
    topic_for,
)

_ALERT_FIELDS = {
    "node_id": "n1",
    "site": "s1",
    "seq": 1,
    "kind": "smoke",
    "severity": "Severe",
    "state": "new",
    "incident": "incident-1",
    "location": {"lat": 1.0, "lon": 2.0},
}
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)
# Printable text without the base64 alphabet's long runs: what a label or title looks like;
# without NUL, which no PostgreSQL text holds (refused: test_what_no_store_can_hold_is_refused).
words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60
)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    return Alert(
        node_id=draw(names),
        site=draw(names),
        seq=draw(st.integers(min_value=0, max_value=2**53)),
        kind=draw(st.sampled_from(["gas", "smoke", "intrusion", "crowd"])),
        severity=draw(st.sampled_from(["Minor", "Moderate", "Severe", "Extreme"])),
        state=draw(st.sampled_from(["new", "update", "end"])),
        incident=draw(st.from_regex(r"[A-Za-z0-9_.:-]{8,32}", fullmatch=True)),
        location=Location(lat=draw(st.floats(-90, 90)), lon=draw(st.floats(-180, 180)), zone=draw(st.none() | words)),
        title=draw(st.none() | words),
        measurements=[
            Measurement(quantity=draw(words), value=draw(finite), unit="ppm") for _ in range(draw(st.integers(0, 3)))
        ],
    )


@st.composite
def messages(draw: st.DrawFn) -> Any:
    node, site = draw(names), draw(names)
    seq = draw(st.integers(min_value=0, max_value=10**9))
    return draw(
        st.sampled_from(
            [
                Status(node_id=node, site=site, seq=seq, state="online"),
                Heartbeat(node_id=node, site=site, seq=seq, uptime_s=draw(st.floats(0, 1e7))),
                Telemetry(
                    node_id=node, site=site, seq=seq, readings=[Measurement(quantity="co", value=1.5, unit="ppm")]
                ),
                Receipt(node_id=node, site=site, seq=seq, issuer="agg-1.example", alert_ids=[f"alert-{seq:08d}"]),
            ]
        )
        | alerts()
    )


def _decodes_or_refuses(payload: bytes | str, topic: str | None = None) -> None:
    try:
        if topic is None:
            decode(payload)
        else:
            decode_from(topic, payload)
    except MessageError as exc:
        assert exc.reason in {"too_large", "bad_json", "bad_schema", "invalid", "topic_mismatch", "bad_topic"}


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_message_error(payload: bytes) -> None:
    _decodes_or_refuses(payload)
    _decodes_or_refuses(payload, "s4edge/v1/site/node/alert")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(json_values)
def test_random_json_raises_only_message_error(value: Any) -> None:
    _decodes_or_refuses(json.dumps(value))
    _decodes_or_refuses(json.dumps({"schema": "s4edge/1", "type": "alert", "x": value}))


@FUZZ
@given(messages())
def test_valid_messages_round_trip(message: Any) -> None:
    payload = encode(message)
    assert decode(payload) == message
    assert decode_from(topic_for(message), payload) == message


@FUZZ
@given(
    alerts(),
    st.sampled_from(["id", "node_id", "site", "ts", "seq", "kind", "severity", "location", "schema"]),
    json_values,
)
def test_mutated_alerts_raise_only_message_error(alert: Alert, field: str, value: Any) -> None:
    raw = json.loads(encode(alert))
    raw[field] = value
    _decodes_or_refuses(json.dumps(raw), topic_for(alert))


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("seq", 2**63 - 1, False),  # the largest a 64-bit integer column holds
        ("seq", 2**63, True),
        ("ts", "0001-01-01T00:00:00+14:00", True),  # before year 1 in UTC
        ("ts", "9999-12-31T23:00:00-14:00", True),  # after year 9999 in UTC
        ("ts", "0001-01-01T00:00:00-14:00", False),
        ("title", "gas\u0000leak", True),  # PostgreSQL text holds no NUL
        ("title", "gas\u0007leak", False),
    ],
)
def test_what_no_store_can_hold_is_refused(field: str, value: Any, refused: bool) -> None:
    raw = {
        **_ALERT_FIELDS,
        "schema": "s4edge/1",
        "type": "alert",
        "id": "alert-0001",
        "ts": "2026-03-01T12:00:00+00:00",
    }
    raw[field] = value
    if refused:
        with pytest.raises(MessageError):
            decode(json.dumps(raw).encode())
    else:
        assert getattr(decode(json.dumps(raw).encode()), field) is not None


@FUZZ
@given(alerts(), st.text(min_size=1, max_size=12).filter(lambda k: k not in Alert.model_fields and k != "schema"))
def test_unknown_fields_are_refused(alert: Alert, key: str) -> None:
    raw = json.loads(encode(alert))
    raw[key] = 1
    with pytest.raises(MessageError) as refused:
        decode(json.dumps(raw))
    assert refused.value.reason == "invalid"


@FUZZ
@given(alerts(), st.binary(min_size=160, max_size=2000))
def test_binary_blobs_in_strings_are_refused(alert: Alert, blob: bytes) -> None:
    raw = json.loads(encode(alert))
    raw["detail"] = "frame: " + base64.b64encode(blob).decode()
    with pytest.raises(MessageError) as refused:
        decode(json.dumps(raw))
    assert refused.value.reason == "invalid"
    raw["detail"] = "data:image/jpeg;base64,/9j/4AAQ"
    with pytest.raises(MessageError):
        decode(json.dumps(raw))


@FUZZ
@given(st.binary(min_size=300, max_size=600))
def test_mime_wrapped_base64_is_refused(blob: bytes) -> None:
    """base64 with a line break every 76 characters (RFC 2045) is still a blob."""
    encoded = base64.encodebytes(blob).decode()
    assert "\n" in encoded
    with pytest.raises(ValidationError):
        Alert.model_validate({**_ALERT_FIELDS, "detail": encoded[:1000]})


_PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a") + bytes(range(256))).decode()


@pytest.mark.parametrize(
    "detail",
    [
        "DATA:image/png;base64,iVBORw0KGgo",  # the scheme in upper case
        "data:;base64,iVBORw0KGgo",  # no media type
        "data:image/png;name=a.png;base64,iVBORw0KGgo",  # a media-type parameter
        " ".join(_PNG[i : i + 76] for i in range(0, len(_PNG), 76)),  # wrapped with spaces
        " ".join(bytes(range(256)).hex()[i : i + 64] for i in range(0, 512, 64)),  # hex, spaced
    ],
)
def test_image_bytes_past_the_first_check_are_refused(detail: str) -> None:
    """Each of these went to the store, the API and the PSAP's CAP, and the PNG decoded back."""
    with pytest.raises(ValidationError, match="encoded binary data"):
        Alert.model_validate({**_ALERT_FIELDS, "detail": detail})


@FUZZ
@given(st.lists(st.text("abcdefghijklmnopqrstuvwxyzABC0123456789", min_size=1, max_size=16), min_size=40, max_size=120))
def test_prose_without_punctuation_is_not_a_blob(words: list[str]) -> None:
    Alert.model_validate({**_ALERT_FIELDS, "detail": " ".join(words)})


def test_command_results_carry_no_blobs() -> None:
    fields = {"node_id": "n1", "site": "s1", "seq": 1, "cmd_id": "c" * 16, "name": "ping", "ok": True}
    CommandResult(**fields, data={"config_digest": "ab" * 32, "uptime_s": 12.5})
    with pytest.raises(ValidationError):
        CommandResult(**fields, data={"snapshot": base64.b64encode(bytes(range(256)) * 4).decode()})


def test_oversize_payload_is_refused_before_parsing() -> None:
    alert = Alert.model_validate(_ALERT_FIELDS)
    raw = json.loads(encode(alert))
    raw["detail"] = "x " * MAX_MESSAGE_BYTES
    with pytest.raises(MessageError) as refused:
        decode(json.dumps(raw))
    assert refused.value.reason == "too_large"


def test_topic_must_agree_with_payload() -> None:
    alert = Alert.model_validate(_ALERT_FIELDS)
    with pytest.raises(MessageError) as wrong_node:
        decode_from("s4edge/v1/s1/n2/alert", encode(alert))
    assert wrong_node.value.reason == "topic_mismatch"
    with pytest.raises(MessageError) as wrong_suffix:
        decode_from("s4edge/v1/s1/n1/heartbeat", encode(alert))
    assert wrong_suffix.value.reason == "topic_mismatch"


def test_receipts_stay_under_the_size_limit_however_many_ids() -> None:
    ids = [f"{i:064d}" for i in range(2 * MAX_RECEIPT_IDS + 1)]  # the longest ids the contract allows
    split = receipts_for("s" * 64, "n" * 64, "i" * 64, ids, seq=10)
    assert [len(r.alert_ids) for r in split] == [MAX_RECEIPT_IDS, MAX_RECEIPT_IDS, 1]
    assert [r.seq for r in split] == [10, 11, 12]
    assert [a for r in split for a in r.alert_ids] == ids
    for receipt in split:
        assert decode_from(topic_for(receipt), encode(receipt)) == receipt  # encode refuses over 16 KiB
    with pytest.raises(ValidationError):
        Receipt(node_id="n1", site="s1", seq=1, issuer="agg", alert_ids=ids[: MAX_RECEIPT_IDS + 1])
