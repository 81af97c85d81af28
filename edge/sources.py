"""Alert sources are plugins (STYLE.md, Frigate's detectors): one module per source type
holds its pydantic config (``type: Literal[...]``) and a ``build`` function. Built-ins
are listed here and go through the same path a third-party source would.

A plugin module that fails to import is a startup error, never a log line. Plugin
modules import heavy or hardware libraries lazily, inside ``build`` or the source.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel

from s4edge.cloud_sync.messages import Measurement
from s4edge.edge.alerts import Emit, IncidentBook

BUILTIN_SOURCES: tuple[str, ...] = (
    "s4edge.edge.scenario",
    "s4edge.edge.vision.source",
    "s4edge.edge.sensing.source",
    "s4edge.edge.sensing.nir_source",
)


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


def load_plugins(names: tuple[str, ...] = BUILTIN_SOURCES) -> dict[str, ModuleType]:
    """Import every source plugin; returns them by their config's ``type`` value."""
    plugins: dict[str, ModuleType] = {}
    for name in names:
        module = importlib.import_module(name)
        type_field = module.Config.model_fields["type"]
        (key,) = type_field.annotation.__args__
        plugins[key] = module
    return plugins
