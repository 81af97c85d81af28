"""Alert sources are plugins, as Frigate's detectors are: one module per source type
holds its pydantic config (``type: Literal[...]``) and a ``build`` function. Each is an
entry point of the ``s4edge.sources`` group, named by its type; built-ins go through the
same path a third-party source would, and only the types a config uses are imported.

A plugin that fails to import is a startup error, never a log line. Plugin modules
import heavy or hardware libraries lazily, inside ``build`` or the source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel

from s4edge.cloud_sync.messages import Measurement
from s4edge.edge.alerts import Emit, IncidentBook
from s4edge.plugins import SOURCES, MissingExtra, load, missing_extra, plugins


class PluginError(Exception):
    """A source type that cannot be used: unknown, or its plugin does not import."""


class Health(Protocol):
    """Where a source reports its state for the heartbeat (sensor states, fps, ...)."""

    def set(self, key: str, value: Any) -> None: ...


@dataclass
class SourceContext:
    """What a running source may use; each source receives only its own config."""

    emit: Emit
    telemetry: Callable[[list[Measurement]], None]
    health: Health
    stop: threading.Event
    clock: Callable[[], float]
    extras: dict[str, Any] = field(default_factory=dict)


class AlertSource(Protocol):
    name: str

    def run(self, ctx: SourceContext) -> None:
        """Loop until ``ctx.stop`` is set. Must never raise for bad input: faults
        become ``sensor_fault``/``camera_fault`` alerts and the loop goes on.

        A source that holds a device (an I2C bus, GPIO lines) also has ``close()``,
        which the node calls once ``run`` has returned."""


class SourcePlugin(Protocol):
    Config: type[BaseModel]

    def build(self, config: Any, book: IncidentBook) -> AlertSource: ...


def source_types() -> list[str]:
    """Every installed source type; nothing is imported."""
    return sorted(plugins(SOURCES))


def load_plugins(types: Iterable[str] | None = None) -> dict[str, ModuleType]:
    """Import the plugins of these config ``type`` values (every installed one when None), by type."""
    known = plugins(SOURCES)
    loaded: dict[str, ModuleType] = {}
    for key in sorted(known if types is None else set(types)):
        if key not in known:
            raise PluginError(f"unknown source type {key!r} (known: {', '.join(source_types())})")
        try:
            module = load(known[key], f"source type {key!r}")
        except MissingExtra as exc:
            raise PluginError(str(exc)) from None
        if _declared_type(module) != (key,):
            raise PluginError(f"source plugin {known[key].value}: its Config needs the field type: Literal[{key!r}]")
        loaded[key] = module
    return loaded


def _declared_type(module: ModuleType) -> Any:
    """The values of ``module.Config``'s ``type`` Literal; None where a third-party plugin has none."""
    field = getattr(getattr(module, "Config", None), "model_fields", {}).get("type")
    return getattr(field.annotation, "__args__", None) if field is not None else None


def build_source(config: Any, book: IncidentBook) -> AlertSource:
    """Build a source from its validated config. A third-party package that ``build`` needs and
    does not find (onnxruntime, cv2) is a ``PluginError`` naming the extra that installs it."""
    try:
        source: AlertSource = load_plugins([config.type])[config.type].build(config, book)
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, f"source type {config.type!r}", plugins(SOURCES)[config.type])
        if missing is None:
            raise
        raise PluginError(str(missing)) from None
    return source
