"""Alert sources are ``s4edge.sources`` entry points: a config imports only the types it
uses, an unknown type names the known ones, and a plugin whose extra is missing stops the
node at start-up with one line naming that extra."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType
from typing import Literal

import pytest
from pydantic import BaseModel

from s4edge.edge.alerts import IncidentBook
from s4edge.edge.config import ConfigError, load_config, parse_config
from s4edge.edge.sources import PluginError, build_source, load_plugins, source_types
from s4edge.plugins import SOURCES

REPO = Path(__file__).resolve().parents[2]


def node(*sources: dict) -> dict:
    return {
        "node_id": "n1",
        "site": "s1",
        "location": {"lat": 0, "lon": 0},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "sources": list(sources),
    }


def test_the_builtin_types_are_entry_points() -> None:
    assert source_types() == ["nir", "scenario", "sensors", "vision"]


def test_an_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown source type 'lidar' \(known: nir, scenario, sensors, vision\)"):
        parse_config(node({"type": "lidar"}), "node.yaml")


def test_a_source_without_a_type_is_refused_with_its_index() -> None:
    with pytest.raises(ConfigError, match=r"node.yaml: sources\.1: each source needs a type \(nir, scenario"):
        parse_config(node({"type": "scenario", "name": "s", "steps": []}, {"name": "x"}), "node.yaml")


def test_a_config_imports_only_the_plugins_it_uses() -> None:
    code = (
        "import sys; from s4edge.edge.config import load_config; "
        f"load_config({str(REPO / 'firmware_configs' / 'sim-node.yaml')!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('s4edge.edge.') and m.endswith('source')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"  # sim-node.yaml has one scenario source: no vision, sensors or nir plugin


def test_a_plugin_that_cannot_import_is_a_config_error_naming_its_extra() -> None:
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from s4edge.edge.config import ConfigError, parse_config\n"
        "try:\n"
        "    parse_config({'node_id': 'n', 'site': 's', 'location': {'lat': 0, 'lon': 0}, "
        "'mqtt': {'url': 'mqtt://h:1'}, 'sources': [{'type': 'nir'}]}, 'node.yaml')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == (
        "node.yaml: sources: source type 'nir' needs the node extra: "
        "pip install 's4edge[node]' (numpy is not installed)"
    )


def test_a_runtime_missing_at_build_names_the_vision_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    (camera,) = load_config(REPO / "firmware_configs" / "vision-demo.yaml").sources
    camera.camera.url = "0"  # a device, which build does not open: the demo's clip is not made here
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    needs = r"^source type 'vision' needs the vision extra: pip install 's4edge\[vision\]' \(onnxruntime is not"
    with pytest.raises(PluginError, match=needs):
        build_source(camera, IncidentBook(lambda draft: None))


class Untyped(BaseModel):
    name: str = "x"


class Typed(BaseModel):
    type: str


class Other(BaseModel):
    type: Literal["thermal"]


@pytest.mark.parametrize("config", [None, Untyped, Typed, Other])
def test_a_plugin_without_its_type_literal_is_a_plugin_error(
    monkeypatch: pytest.MonkeyPatch, config: type[BaseModel] | None
) -> None:
    plugin = ModuleType("third_party_lidar")
    if config is not None:
        plugin.Config = config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)
    entry = EntryPoint(name="lidar", value=plugin.__name__, group=SOURCES)
    monkeypatch.setattr("s4edge.edge.sources.plugins", lambda group: {"lidar": entry})
    with pytest.raises(PluginError, match=r"^source plugin third_party_lidar: its Config needs the field type: "):
        load_plugins(["lidar"])
