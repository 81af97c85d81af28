"""The s4edge wire contract (docs/architecture.md, "The wire contract").

Every message is a small JSON object under ``s4edge/v1/{site}/{node_id}/{suffix}``.
Privacy is a property of this schema: there is no bytes field, every string is
length-bounded, and any string that looks like an encoded blob is refused.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

SCHEMA: Final = "s4edge/1"
TOPIC_ROOT: Final = "s4edge/v1"
MAX_MESSAGE_BYTES: Final = 16 * 1024

# Site and node ids become MQTT topic levels: no wildcards, no separators.
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"

# A run of base64/hex alphabet this long cannot be a label, a URI or a sentence:
# it is an encoded blob, and blobs never leave the node. Line breaks do not end a
# run, so MIME-wrapped base64 (RFC 2045 §6.8, 76-character lines) is caught too.
# RFC 2397: the scheme in any case, any media type and parameters, or none
_DATA_URL = re.compile(r"data:[^,]*;base64,", re.IGNORECASE)
# base64 (RFC 4648 §4, §5) or hex, whitespace-wrapped or not (MIME wraps base64 at 76, RFC 2045 §6.8)
_ENCODED_RUN = re.compile(r"[A-Za-z0-9+/=_-]+(?:\s+[A-Za-z0-9+/=_-]+)*")
BLOB_CHARS = 200  # an encoded run this long is binary data: a 24 × 24 PNG is already ~1,000
_WORD_CHARS = 24  # the mean length of its whitespace-separated pieces: words are far shorter


def _encoded(value: str) -> bool:
    """A data: URL, or a run of base64 or hex characters of ``BLOB_CHARS`` or more made of
    pieces too long to be words (prose with no punctuation is a run of short pieces)."""
    # every text field of every message comes here: the cheap tests first (ingest's rate)
    if ";" in value and _DATA_URL.search(value):
        return True
    if len(value) < BLOB_CHARS:
        return False
    for run in _ENCODED_RUN.finditer(value):
        pieces = run.group().split()
        chars = sum(map(len, pieces))
        if chars >= BLOB_CHARS and chars >= _WORD_CHARS * len(pieces):
            return True
    return False


def _plain_text(value: str) -> str:
    if _encoded(value):
        raise ValueError("looks like encoded binary data; s4edge messages carry metadata only")
    if "\x00" in value:
        raise ValueError("holds a NUL character, which a PostgreSQL store cannot keep")
    return value


def utc_representable(value: datetime) -> datetime:
    """The stores keep UTC: a time that has none (year 1 at +14:00) could never be written."""
    if 1 < value.year < 9999:  # a day's offset cannot leave the range: no conversion to try
        return value
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None
    return value


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ShortText = Annotated[str, Field(max_length=128), AfterValidator(_plain_text)]
Text = Annotated[str, Field(max_length=1024), AfterValidator(_plain_text)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
MessageId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Timestamp = Annotated[AwareDatetime, AfterValidator(utc_representable)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]  # what both stores' 64-bit integer columns hold
Scalar = str | int | float | bool | None

Severity = Literal["Minor", "Moderate", "Severe", "Extreme"]
SEVERITIES: Final[tuple[Severity, ...]] = ("Minor", "Moderate", "Severe", "Extreme")
AlertState = Literal["new", "update", "end"]
# CAP 1.2 <status>: a drill is an Exercise and must never be forwarded as Actual.
AlertStatus = Literal["Actual", "Exercise", "Test"]
Kind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,31}$")]
KNOWN_KINDS: Final = frozenset(
    {
        "gas",
        "co",
        "smoke",
        "flame",
        "temperature",
        "nir_match",
        "intrusion",
        "line_cross",
        "loitering",
        "crowd",
        "unattended_object",
        "sensor_fault",
        "camera_fault",
        "escalation",
    }
)
# A pre-alarm, a warning before a standard's alarm point (CO before EN 50291-1's alarm
# time), carries a measurement of this quantity with value 1. It stays local: NG112 never
# forwards it, whatever a site's min_severity (cloud_sync/ng112/policy.py).
PRE_ALARM: Final = "pre_alarm"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Location(_Strict):
    lat: float = Field(ge=-90.0, le=90.0)
    lon: float = Field(ge=-180.0, le=180.0)
    zone: ShortText | None = None


class Measurement(_Strict):
    quantity: ShortText
    value: float = Field(allow_inf_nan=False)
    unit: ShortText
    sensor: ShortText | None = None


class Box(_Strict):
    """An axis-aligned box in coordinates normalised to the frame (0..1)."""

    x1: Unit
    y1: Unit
    x2: Unit
    y2: Unit

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError("box corners must satisfy x1 <= x2 and y1 <= y2")
        return self


class Detection(_Strict):
    """What the camera saw: metadata only, never pixels."""

    label: ShortText
    count: Count
    track_ids: list[int] = Field(default_factory=list, max_length=64)
    boxes: list[Box] = Field(default_factory=list, max_length=64)
    camera: ShortText | None = None
    rule: ShortText | None = None
    direction: ShortText | None = None


class ModelRef(_Strict):
    name: ShortText
    version: ShortText
    sha256: Sha256


class _Envelope(_Strict):
    schema_: Literal["s4edge/1"] = Field(default=SCHEMA, alias="schema")
    id: MessageId = Field(default_factory=new_id)
    node_id: Name
    site: Name
    ts: Timestamp = Field(default_factory=utc_now)
    seq: Count

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Status(_Envelope):
    type: Literal["status"] = "status"
    state: Literal["online", "offline"]
    boot_id: ShortText | None = None
    started_at: Timestamp | None = None
    version: ShortText | None = None
    config_digest: Sha256 | None = None
    degraded: list[ShortText] = Field(default_factory=list, max_length=32)


class Heartbeat(_Envelope):
    type: Literal["heartbeat"] = "heartbeat"
    uptime_s: float = Field(ge=0)
    cpu_percent: float | None = Field(default=None, ge=0)
    mem_mb: float | None = Field(default=None, ge=0)
    soc_temp_c: float | None = None
    camera_fps: float | None = Field(default=None, ge=0)
    inference_ms: float | None = Field(default=None, ge=0)
    dropped_frames: Count | None = None
    outbox_depth: Count | None = None
    telemetry_dropped: Count | None = None
    sensors: dict[ShortText, ShortText] = Field(default_factory=dict, max_length=64)


class Telemetry(_Envelope):
    type: Literal["telemetry"] = "telemetry"
    readings: list[Measurement] = Field(min_length=1, max_length=64)


class Alert(_Envelope):
    type: Literal["alert"] = "alert"
    kind: Kind
    severity: Severity
    state: AlertState
    incident: Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    status: AlertStatus = "Actual"
    location: Location
    title: ShortText | None = None
    detail: Text | None = None
    measurements: list[Measurement] = Field(default_factory=list, max_length=32)
    detection: Detection | None = None
    model: ModelRef | None = None


CommandName = Literal["ping", "reload_config", "swap_model", "rebirth"]


class Command(_Envelope):
    """Inbound to the node on ``cmd/<name>``; node_id and site name the target."""

    type: Literal["cmd"] = "cmd"
    name: CommandName
    issuer: Name
    expires: Timestamp
    args: dict[ShortText, Scalar] = Field(default_factory=dict, max_length=32)
    signature: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _bounded_args(self) -> Command:
        for key, value in self.args.items():
            if isinstance(value, str):
                if len(value) > 8192:
                    raise ValueError(f"args.{key}: at most 8192 characters")
                _plain_text(value)
        return self


def signing_bytes(command: Command) -> bytes:
    """The canonical bytes a command's Ed25519 ``signature`` covers: every field but the
    signature, as sorted compact JSON, so any JSON encoder on either side agrees."""
    fields = command.model_dump(mode="json", by_alias=True, exclude={"signature"}, exclude_none=True)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class CommandResult(_Envelope):
    type: Literal["cmd_result"] = "cmd_result"
    cmd_id: Annotated[str, Field(min_length=8, max_length=64)]
    name: ShortText
    ok: bool
    detail: Text | None = None
    data: dict[ShortText, Text | int | float | bool | None] = Field(default_factory=dict, max_length=32)


# A receipt's ids stay under MAX_MESSAGE_BYTES: 200 ids of 64 characters, quoted and
# comma-separated, take 13.4 KB, and the envelope adds well under 1 KB.
MAX_RECEIPT_IDS: Final = 200


class Receipt(_Envelope):
    """Inbound to the node on ``receipt``: the aggregator (replica) ``issuer`` has committed
    these alerts, new or already stored, so the node may forget them. node_id and site name
    the node that sent them."""

    type: Literal["receipt"] = "receipt"
    issuer: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    alert_ids: list[MessageId] = Field(min_length=1, max_length=MAX_RECEIPT_IDS)


def receipts_for(site: str, node_id: str, issuer: str, alert_ids: Sequence[str], seq: int) -> list[Receipt]:
    """The receipts for one node's stored alerts, ``MAX_RECEIPT_IDS`` to a message, numbered
    from ``seq``."""
    return [
        Receipt(
            site=site,
            node_id=node_id,
            seq=seq + n,
            issuer=issuer,
            alert_ids=list(alert_ids[start : start + MAX_RECEIPT_IDS]),
        )
        for n, start in enumerate(range(0, len(alert_ids), MAX_RECEIPT_IDS))
    ]


AnyMessage = Status | Heartbeat | Telemetry | Alert | Command | CommandResult | Receipt
Message = Annotated[AnyMessage, Field(discriminator="type")]
MESSAGE_TYPES: Final[dict[str, type[_Envelope]]] = {
    "status": Status,
    "heartbeat": Heartbeat,
    "telemetry": Telemetry,
    "alert": Alert,
    "cmd": Command,
    "cmd_result": CommandResult,
    "receipt": Receipt,
}
_MESSAGE: TypeAdapter[AnyMessage] = TypeAdapter(Message)

# topic suffix per message type (docs/architecture.md, "The wire contract"); cmd carries its name.
SUFFIX: Final[dict[str, str]] = {
    "status": "status",
    "heartbeat": "heartbeat",
    "telemetry": "telemetry",
    "alert": "alert",
    "cmd": "cmd",
    "cmd_result": "cmd_result",
    "receipt": "receipt",
}
QOS: Final[dict[str, int]] = {
    "status": 1,
    "heartbeat": 0,
    "telemetry": 0,
    "alert": 1,
    "cmd": 1,
    "cmd_result": 1,
    "receipt": 1,
}
RETAINED: Final = frozenset({"status"})
# What the centre sends a node; a node sends every other type (the broker's ACL follows this).
TO_NODE: Final = frozenset({"cmd", "receipt"})


class MessageError(ValueError):
    """A payload that is not a valid s4edge/1 message. ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def topic(site: str, node_id: str, suffix: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{node_id}/{suffix}"


def topic_for(message: _Envelope) -> str:
    kind = message.model_dump()["type"]
    suffix = SUFFIX[kind]
    if isinstance(message, Command):
        suffix = f"cmd/{message.name}"
    return topic(message.site, message.node_id, suffix)


def fleet_filter(suffix: str = "#", site: str = "+") -> str:
    """Subscription filter over every node of a site (``+`` for all sites)."""
    return f"{TOPIC_ROOT}/{site}/+/{suffix}"


def parse_topic(name: str) -> tuple[str, str, str]:
    """Split ``s4edge/v1/{site}/{node}/{suffix}`` into (site, node_id, suffix)."""
    parts = name.split("/", 4)
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise MessageError("bad_topic", f"{name!r} is not under {TOPIC_ROOT}/<site>/<node>/")
    return parts[2], parts[3], parts[4]


def encode(message: _Envelope) -> bytes:
    data = message.model_dump_json(by_alias=True, exclude_none=True).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("too_large", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}")
    return data


def decode(payload: bytes | bytearray | str) -> AnyMessage:
    """Parse and validate one payload. Raises MessageError, never anything else."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError("too_large", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    # One pass over the bytes for a valid message (the aggregator's hot path); whatever it
    # refuses takes the two-step path below, which names the reason. Both parsers take the
    # last of duplicated keys and refuse integers over 4300 digits, so they agree.
    try:
        return _MESSAGE.validate_json(payload)
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MessageError("bad_json", str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise MessageError("bad_json", "payload is not a JSON object")
    if raw.get("schema") != SCHEMA:
        raise MessageError("bad_schema", f"schema {str(raw.get('schema'))[:40]!r}, expected {SCHEMA!r}")
    try:
        return _MESSAGE.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageError("invalid", f"{where}: {first['msg']}"[:300]) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise MessageError("invalid", str(exc)[:300]) from None


def decode_from(topic_name: str, payload: bytes | bytearray | str) -> AnyMessage:
    """Decode, and check that the topic's site/node/suffix agree with the payload."""
    site, node_id, suffix = parse_topic(topic_name)
    message = decode(payload)
    if message.site != site or message.node_id != node_id:
        raise MessageError(
            "topic_mismatch",
            f"payload says {message.site}/{message.node_id}, topic says {site}/{node_id}",
        )
    expected = SUFFIX[message.type]
    if suffix != expected and not (expected == "cmd" and suffix.startswith("cmd/")):
        raise MessageError("topic_mismatch", f"{message.type} message on topic suffix {suffix!r}")
    return message


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message type, keyed by type name."""
    return {name: model.model_json_schema(by_alias=True) for name, model in MESSAGE_TYPES.items()}
