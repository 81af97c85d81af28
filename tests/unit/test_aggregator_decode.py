"""The aggregator's hot path decodes each payload in one pass (pydantic on the bytes); it must
agree with the two-step reading the wire contract defines (json.loads, the schema check,
then validation): the same message, or the same refusal with the same reason."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from s4edge.cloud_sync.messages import SCHEMA, Alert, Location, Measurement, Message, MessageError, decode, encode

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TWO_STEP: TypeAdapter[Any] = TypeAdapter(Message)


def two_step(payload: bytes) -> Any:
    """The reference reading: returns the message, or the MessageError reason."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        return "bad_json"
    if not isinstance(raw, dict):
        return "bad_json"
    if raw.get("schema") != SCHEMA:
        return "bad_schema"
    try:
        return TWO_STEP.validate_python(raw)
    except (ValidationError, ValueError, TypeError, RecursionError):
        return "invalid"


def one_pass(payload: bytes) -> Any:
    try:
        return decode(payload)
    except MessageError as exc:
        return exc.reason


ALERT = json.loads(
    encode(
        Alert(
            id="a-0000001",
            node_id="n1",
            site="plaza",
            seq=1,
            kind="gas",
            severity="Severe",
            state="new",
            incident="inc-00001",
            location=Location(lat=40.4, lon=-3.7, zone="gate"),
            measurements=[Measurement(quantity="co", value=61.5, unit="ppm")],
        )
    )
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.sampled_from([*ALERT, "extra"]), values)
def test_a_mutated_field_gives_the_same_answer_both_ways(field: str, value: Any) -> None:
    raw = dict(ALERT)
    raw[field] = value
    payload = json.dumps(raw).encode()  # NaN and Infinity included, as json.dumps writes them
    assert one_pass(payload) == two_step(payload)


@FUZZ
@given(st.binary(max_size=600))
def test_bytes_give_the_same_answer_both_ways(payload: bytes) -> None:
    assert one_pass(payload) == two_step(payload)


def test_edge_cases_of_the_two_parsers_agree() -> None:
    body = json.dumps(ALERT)[1:]
    cases = [
        b"\xef\xbb\xbf" + json.dumps(ALERT).encode(),  # a UTF-8 byte order mark
        ('{"seq": 2, ' + body).encode(),  # a duplicated key: the last one counts
        ('{"seq": ' + "9" * 5000 + ", " + body).encode(),  # beyond the integer digit limit
        json.dumps(ALERT).encode("utf-16"),
        json.dumps({**ALERT, "title": "\ud800"}).encode(),  # an escaped lone surrogate
    ]
    for payload in cases:
        assert one_pass(payload) == two_step(payload), payload[:80]
