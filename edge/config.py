"""The node config: one YAML file, validated by pydantic with unknown keys refused.

Validation never touches hardware or the network, so a config can be checked on a laptop.

Every file or folder a config names (a ``NodeFile`` field, the sources' included) must lie in
the node's own folders: the config's, the state folder holding the outbox, and the model
folders. A signed ``reload_config`` can then aim no source at another secret of the machine
(/etc/shadow), and no error quotes what a file holds, only its name and the key at fault.
A camera URL (``CameraURL``) that names a file is confined the same way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from s4edge.cloud_sync.broker_url import broker_endpoint
from s4edge.cloud_sync.messages import NAME_PATTERN, AlertStatus
from s4edge.edge.health import THERMAL_ROOT
from s4edge.edge.sources import PluginError, load_plugins, source_types
from s4edge.shown import shown_url
from s4edge.yaml_text import load_yaml, yaml_problem


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class NodeFile:
    """Marks a field that names a file or folder (``Annotated[Path, NodeFile()]``). A relative
    path is taken relative to the config's folder, or to the state folder for what the node
    writes; ``also`` names further folders allowed, compared without following links (sysfs)."""

    relative_to: Literal["config", "state"] = "config"
    also: tuple[Path, ...] = ()


@dataclass(frozen=True)
class CameraURL:
    """Marks a camera URL field (``Annotated[str, CameraURL()]``): the file a ``replay:`` or bare-path
    URL names is placed and confined as a NodeFile's; a ``gst:`` pipeline, which can name any file or
    socket, is taken only from the config file installed on the node, never from ``reload_config``."""


class LocationConfig(Strict):
    lat: float = Field(ge=-90, le=90, description="WGS84 latitude of the node, degrees")
    lon: float = Field(ge=-180, le=180, description="WGS84 longitude of the node, degrees")
    zone: str | None = Field(default=None, max_length=128, description="Human name of the place")


class MqttConfig(Strict):
    url: str = Field(description="mqtt://, mqtts://, ws:// or wss://host:port[/path] (cloud_sync/broker_url.py)")
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Annotated[Path | None, NodeFile()] = None
    ca_file: Annotated[Path | None, NodeFile()] = None
    cert_file: Annotated[Path | None, NodeFile()] = None
    key_file: Annotated[Path | None, NodeFile()] = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        broker_endpoint(value)  # BrokerUrlError is a ValueError: pydantic reports it under mqtt.url
        return value


class OutboxConfig(Strict):
    path: Annotated[Path, NodeFile()] = Field(
        default=Path("outbox.db"),
        description="SQLite file of the store-and-forward queue; its folder is the node's state folder",
    )
    telemetry_max: int = Field(default=10_000, ge=10, description="Telemetry rows kept during an outage")
    receipt_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="An alert the broker acknowledged but the aggregator has not confirmed storing "
        "is sent again after this long",
    )
    receipt_backoff_max_s: float = Field(
        default=600.0, gt=0, description="The wait before each further resend doubles up to this"
    )


# Flap suppression (edge/alerts.py IncidentBook): how long a condition must stay gone before
# its incident ends, per kind. Vision conditions blink with every missed detection and broken
# track; a person briefly hidden is still in the zone, a crowd that thins for a moment is still
# a crowd. Sensor kinds debounce in their ThresholdRule (clear_after_s) and CO clears by its
# exposure index (EN 50291-1): they hold 0. line_cross ends after its own quiet_s.
DEFAULT_HOLD_S: dict[str, float] = {"intrusion": 3.0, "loitering": 15.0, "crowd": 15.0, "unattended_object": 5.0}


class LifecycleConfig(Strict):
    update_interval_s: float = Field(default=5.0, ge=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    max_duration_s: float = Field(default=3600.0, gt=0)
    hold_s: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,31}$")], Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_HOLD_S),
        description="Per alert kind, seconds its condition must stay absent before the incident ends; "
        f"merged over the defaults {DEFAULT_HOLD_S}, kinds not named hold 0",
    )
    cooldown_s: float = Field(
        default=30.0,
        ge=0,
        description="A re-trigger this soon after an incident ended continues it (same id, state update) "
        "instead of opening a new one; 0 turns it off",
    )

    @field_validator("hold_s")
    @classmethod
    def _over_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_HOLD_S, **value}


class HeartbeatConfig(Strict):
    interval_s: float = Field(default=30.0, gt=0)
    thermal_zone: Annotated[Path | None, NodeFile(also=(THERMAL_ROOT,))] = Field(
        default=None,
        description="SoC temperature file (sysfs thermal zone, millidegrees C), as the board profile's "
        "hardware.thermal_zone; when absent the lowest-numbered /sys/class/thermal/thermal_zone*/temp",
    )


class TelemetryConfig(Strict):
    interval_s: float = Field(default=10.0, gt=0, description="At most one telemetry message per source per interval")


class CommandsConfig(Strict):
    issuers: list[str] = Field(
        default_factory=lambda: ["aggregator"], description="Who may send this node commands (Command.issuer)"
    )
    verify_key: Annotated[Path | None, NodeFile()] = Field(
        default=None,
        description="Ed25519 public key (PEM) of the aggregator's command key; when set, "
        "only commands signed with it are executed",
    )
    max_expiry_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="A command whose expiry lies further ahead than this is refused: the node keeps "
        "each command id until it expires, to refuse replays",
    )


class _NodeBase(Strict):
    node_id: str = Field(pattern=NAME_PATTERN)
    site: str = Field(pattern=NAME_PATTERN)
    location: LocationConfig
    mqtt: MqttConfig
    outbox: OutboxConfig = OutboxConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    alerts: LifecycleConfig = LifecycleConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    commands: CommandsConfig = CommandsConfig()
    status: AlertStatus = Field(
        default="Actual", description="Exercise for drills: such alerts are never forwarded as Actual"
    )


@functools.cache
def _node_model(types: tuple[str, ...]) -> type[_NodeBase]:
    """NodeConfig with ``sources`` as a union discriminated by the ``type`` of the plugins a config uses."""
    configs = tuple(module.Config for module in load_plugins(types).values())
    source: Any = Any  # no sources at all
    if len(configs) == 1:
        source = configs[0]
    elif configs:
        source = Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007
    model: type[_NodeBase] = create_model(
        "NodeConfig", __base__=_NodeBase, sources=(list[source], Field(default_factory=list))
    )
    return model


class ConfigError(ValueError):
    """A config a field technician can fix: it names the file, the key and what was expected."""


def parse_config(data: Any, origin: str = "<config>") -> _NodeBase:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a YAML mapping of settings at the top level")
    try:
        return _node_model(_source_types(data, origin)).model_validate(data)
    except PluginError as exc:
        raise ConfigError(f"{origin}: sources: {exc}") from None
    except ValidationError as exc:
        lines = [f"{origin}: {exc.error_count()} problem(s):"]
        for err in exc.errors():
            key = _key_in_file(err["loc"], data)
            # a key the schema does not know may be a misspelled secret ('passwd'): its value stays unshown
            shown = "" if err["type"] == "extra_forbidden" else _shown_input(key, err.get("input"))
            lines.append(f"  - {key}: {err['msg']}{shown}")
        raise ConfigError("\n".join(lines)) from None


def _key_in_file(loc: tuple[int | str, ...], data: Any) -> str:
    """An error's dotted key as the file spells it. pydantic puts the tag of a discriminated
    union (a source's or a scene rule's ``type:``) into the location, where the file has no
    such key: ``sources.0.vision.camera`` is ``sources.0.camera`` to the technician."""
    parts: list[str] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part == node.get("type") and not _leads_on(node, part, loc[i + 1 : i + 2]):
            continue  # the tag; a sensors source has a key of its type's name too (``sensors:``)
        parts.append(str(part))
        if isinstance(node, dict) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None  # a key the file lacks: the rest is the schema's
    return ".".join(parts)


def _leads_on(node: dict[str, Any], part: int | str, rest: tuple[int | str, ...]) -> bool:
    """``part`` is a key of ``node`` that the location goes on into (or ends at)."""
    if part not in node:
        return False
    child = node[part]
    if not rest:
        return True
    (following,) = rest
    if isinstance(child, dict):
        return following in child
    return isinstance(child, list) and isinstance(following, int) and 0 <= following < len(child)


_SECRET = re.compile(r"password|passphrase|secret|token|private", re.IGNORECASE)  # keys whose values stay unshown


def _shown_input(key: str, got: Any) -> str:
    """What the config held, for the error: never a secret (a refused config goes into the
    log and, from ``reload_config``, into a cmd_result the centre stores)."""
    if isinstance(got, dict | list):
        return ""
    if _SECRET.search(key):
        return " (value not shown)"
    if isinstance(got, str):
        got = shown_url(got)  # a URL: neither its user and password nor a ?password=
    return f" (got {got!r})"


def _source_types(data: dict[str, Any], origin: str) -> tuple[str, ...]:
    """The ``type`` of every source, so that only those plugins are imported."""
    sources = data.get("sources")
    if not isinstance(sources, list):
        return ()  # absent, or not a list: pydantic says so
    types = set()
    for i, source in enumerate(sources):
        kind = source.get("type") if isinstance(source, dict) else None
        if not isinstance(kind, str):
            raise ConfigError(f"{origin}: sources.{i}: each source needs a type ({', '.join(source_types())})")
        types.add(kind)
    return tuple(sorted(types))


def load_config(path: Path) -> _NodeBase:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_config_text(text, str(path), Path(path).resolve().parent, pipelines=True)


def parse_config_text(text: str, origin: str, base: Path, *, pipelines: bool = False) -> _NodeBase:
    """Parse YAML text (a file's, or one sent with ``reload_config``); paths resolve against ``base``.
    Only the installed file (``pipelines``) may give a camera a ``gst:`` pipeline."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: {yaml_problem(exc)}") from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, nesting past Python's stack
        raise ConfigError(f"{origin}: YAML this node cannot read ({type(exc).__name__}: {str(exc)[:80]})") from None
    config = parse_config(data, origin)
    try:
        _place_files(config, base, origin, pipelines)
    except ConfigError:
        raise
    except ValueError as exc:  # a NUL in a path: no file could have that name
        raise ConfigError(f"{origin}: a file path no file can have ({exc})") from None
    return config


def problems_by_key(exc: ValidationError) -> str:
    """What a file fails on, by key, without the values read from it: the file may be a secret.
    An unknown key is counted, not named: /etc/shadow reads as a mapping whose keys are its lines."""
    problems, unknown = [], Counter[str]()
    for err in exc.errors(include_url=False, include_input=False):
        if err["type"] == "extra_forbidden":
            unknown[".".join(map(str, err["loc"][:-1])) or "top level"] += 1
        else:
            problems.append(f"{'.'.join(map(str, err['loc'])) or 'top level'}: {err['msg']}")
    return "; ".join([*problems, *(f"{where}: {n} unknown key(s)" for where, n in unknown.items())])


def _own_folders(base: Path, outbox: Path) -> list[Path]:
    """The node's own folders: its config's, its state's (the outbox's), its models'."""
    from s4edge.edge.vision.catalogue import default_cache_dir, default_models_dir

    return [base, outbox.parent, default_models_dir(), default_cache_dir()]


def _node_files(model: BaseModel, key: str = "") -> Iterator[tuple[BaseModel, str, str, NodeFile | CameraURL]]:
    """(owner, field, dotted key, marker) of every NodeFile or CameraURL field set in ``model``, nested ones too."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        marker = next((m for m in field.metadata if isinstance(m, NodeFile | CameraURL)), None)
        if marker is not None and isinstance(value, Path | str):
            yield model, name, f"{key}{name}", marker
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, BaseModel):
                yield from _node_files(item, f"{key}{name}." + ("" if i is None else f"{i}."))


def _place_files(config: _NodeBase, base: Path, origin: str, pipelines: bool) -> None:
    """Make each named file absolute, and refuse one outside the node's own folders."""
    outbox = config.outbox.path if config.outbox.path.is_absolute() else base / config.outbox.path
    roots = [root.resolve() for root in _own_folders(base, outbox)]

    def placed(path: Path, key: str, marker: NodeFile) -> Path:
        if not path.is_absolute():
            path = (base if marker.relative_to == "config" else outbox.parent) / path
        lexical = Path(os.path.normpath(path))  # no ".." left; links are the machine's own (sysfs)
        if not any(path.resolve().is_relative_to(root) for root in roots) and not any(
            lexical.is_relative_to(root) for root in marker.also
        ):
            folders = ", ".join(str(root) for root in [*roots, *marker.also])
            raise ConfigError(f"{origin}: {key}: {path} is outside the node's own folders ({folders})")
        return path

    for owner, name, key, marker in _node_files(config):
        value = getattr(owner, name)
        if isinstance(marker, NodeFile):
            setattr(owner, name, placed(value, key, marker))
            continue
        from s4edge.drivers.frames import named_file  # numpy: only a node with a camera needs it

        if value.startswith("gst:") and not pipelines:
            raise ConfigError(f"{origin}: {key}: a gst: pipeline is taken only from the config file on the node")
        if (named := named_file(value)) is not None:
            prefix, file = named
            setattr(owner, name, prefix + str(placed(Path(file), key, NodeFile())))


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
