"""Config YAML: PyYAML's safe loader, except that a time of day stays the text it is."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest
import yaml

from s4edge.edge.config import parse_config_text
from s4edge.resources import packaged
from s4edge.yaml_text import load_yaml, with_top_level


@pytest.mark.parametrize("scalar", ["22:00", "1:30:00", "190:20:30.15", "-1:00"])
def test_a_base_60_number_of_yaml_1_1_stays_text(scalar: str) -> None:
    assert isinstance(yaml.safe_load(f"a: {scalar}")["a"], int | float)  # what YAML 1.1 makes of it
    assert load_yaml(f"a: {scalar}") == {"a": scalar}


@pytest.mark.parametrize(
    "scalar",
    ["12", "-3", "+4", "0", "0x1f", "017", "0b101", "1_000", "1.5", "-.5", "1.0e+3", ".inf", "-.inf", "yes", "~"],
)
def test_every_other_scalar_reads_as_safe_load_reads_it(scalar: str) -> None:
    assert load_yaml(f"a: {scalar}") == yaml.safe_load(f"a: {scalar}")


def test_a_python_object_tag_is_refused_as_by_safe_load() -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: !!python/object/apply:os.system ['true']")


def test_the_node_config_reads_an_unquoted_night_window_as_the_night(tmp_path: Path) -> None:
    """The shipped vision demo config with a night window typed the usual way: it was taken
    as 00:22 UTC and every frame failed, silencing every scene rule of the camera."""
    text = packaged("firmware_configs", "vision-demo.yaml").read_text(encoding="utf-8")
    rule = "{type: intrusion, name: centre-intrusion, zone: centre, severity: Severe}"
    assert rule in text
    text = text.replace(rule, rule[:-1] + ", window: {start: 22:00, end: 06:00}}")
    config = parse_config_text(text, "vision-demo.yaml", tmp_path)
    (camera,) = config.sources
    window = camera.scene.rules[0].window  # type: ignore[union-attr]
    assert (window.start, window.end) == (time(22, 0), time(6, 0))


WRITTEN = """# node.yaml, adapted on site
node_id: n1  # the pole by the fountain
mqtt:
  url: mqtts://old:8883
  keepalive_s: 0x3c

# wired on the 3rd
sources:
  - {name: mq2-1, address: 0x48}
"""


def test_setting_top_level_keys_keeps_every_other_line_as_written() -> None:
    edited = with_top_level(WRITTEN, {"node_id": "n1", "mqtt": {"url": "mqtts://new:8883", "keepalive_s": 60}})
    assert edited is not None
    assert edited.replace("url: mqtts://new:8883\n  keepalive_s: 60", "") == WRITTEN.replace(
        "url: mqtts://old:8883\n  keepalive_s: 0x3c", ""
    )
    assert with_top_level(WRITTEN, {"node_id": "n1"}) == WRITTEN  # an unchanged value is not written again
    added = with_top_level(WRITTEN.rstrip("\n"), {"site": "plaza"})
    assert added == WRITTEN + "site: plaza\n"


@pytest.mark.parametrize(
    "text",
    ["{node_id: n1, site: s}\n", "node_id: &id n1\nsite: *id\n"],
    ids=["flow style at the top", "an anchor used by another entry"],
)
def test_a_file_that_cannot_be_edited_in_place_is_said_so(text: str) -> None:
    assert with_top_level(text, {"node_id": "n2"}) is None
