"""The node config: one YAML file, validated by pydantic with unknown keys refused.

Validation never touches hardware or the network (STYLE.md, Frigate's mistakes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from s4edge.cloud_sync.messages import NAME_PATTERN, AlertStatus
from s4edge.edge.sources import load_plugins


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocationConfig(Strict):
    lat: float = Field(ge=-90, le=90, description="WGS84 latitude of the node, degrees")
    lon: float = Field(ge=-180, le=180, description="WGS84 longitude of the node, degrees")
    zone: str | None = Field(default=None, max_length=128, description="Human name of the place")


class MqttConfig(Strict):
    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://, e.g. mqtts://broker.example:8883")
        return value


class OutboxConfig(Strict):
    path: Path = Field(default=Path("outbox.db"), description="SQLite file of the store-and-forward queue")
    telemetry_max: int = Field(default=10_000, ge=10, description="Telemetry rows kept during an outage")


class LifecycleConfig(Strict):
    update_interval_s: float = Field(default=5.0, ge=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    max_duration_s: float = Field(default=3600.0, gt=0)


class HeartbeatConfig(Strict):
    interval_s: float = Field(default=30.0, gt=0)
    thermal_zone: Path | None = Field(
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
    verify_key: Path | None = Field(
        default=None,
        description="Ed25519 public key (PEM) of the aggregator's command key; when set, "
        "only commands signed with it are executed",
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


def _node_model() -> type[_NodeBase]:
    """NodeConfig with ``sources`` as a union discriminated by each plugin's ``type``."""
    configs = tuple(module.Config for module in load_plugins().values())
    source: Any = configs[0] if len(configs) == 1 else Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007
    model: type[_NodeBase] = create_model(
        "NodeConfig", __base__=_NodeBase, sources=(list[source], Field(default_factory=list))
    )
    return model


NodeConfig = _node_model()


class ConfigError(ValueError):
    """A config a field technician can fix: it names the file, the key and what was expected."""


def parse_config(data: Any, origin: str = "<config>") -> _NodeBase:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a YAML mapping of settings at the top level")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{origin}: {exc.error_count()} problem(s):"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  - {key}: {err['msg']}{shown}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: Path) -> _NodeBase:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    return parse_config_text(text, str(path), Path(path).resolve().parent)


def parse_config_text(text: str, origin: str, base: Path) -> _NodeBase:
    """Parse YAML text (a file's, or one sent with ``reload_config``); paths resolve against ``base``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    config = parse_config(data, origin)
    _resolve_paths(config, base)
    return config


def _resolve_paths(config: _NodeBase, base: Path) -> None:
    """Relative file paths in a config are relative to the config file."""
    for section in (config.mqtt, config.outbox, config.heartbeat, config.commands):
        for name, value in section:
            if isinstance(value, Path) and not value.is_absolute():
                setattr(section, name, base / value)


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
