"""A camera's swapped model outlives a config reload and a restart of the agent, until
node.yaml itself names another model for that camera; a swap kept on disk that is damaged,
or whose model no longer loads, costs a warning and node.yaml's model, never the node."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from s4edge.cloud_sync.messages import Command
from s4edge.edge.app import Node
from s4edge.edge.config import load_config
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.testing import eventually as wait_until
from s4edge.testing import free_port

DEMO = Path(__file__).resolve().parents[2] / "firmware_configs" / "vision-demo.yaml"
VISION = "s4edge.edge.vision"
SWAPPED = "fastestdet-tflite"  # LiteRT, from the mirror: node.yaml names the ONNX fastestdet


@pytest.fixture
def site(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node's folder: node.yaml with one camera replaying two photos, through FastestDet."""
    monkeypatch.setenv("S4EDGE_MODEL_MIRROR", str(shared / "models"))
    monkeypatch.setenv("S4EDGE_MODEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "frames").mkdir()
    for name in ("fastestdet_0.jpg", "fastestdet_2.jpg"):
        shutil.copy(shared / "data" / "images" / name, tmp_path / "frames" / name)
    write_config(tmp_path)
    return tmp_path


def write_config(folder: Path, model: str = "fastestdet", *, pull: bool = True) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["outbox"]["path"] = "state/outbox.db"
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: no broker needed
    (camera,) = data["sources"]
    camera["camera"] = {"url": "replay:frames", "loop": True, "fps": 2}
    camera["model"].update(name=model, pull=pull)
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def start(site: Path) -> Node:
    """The agent as ``s4edge agent run --config node.yaml`` starts it."""
    node = Node(load_config(site / "node.yaml"), base_dir=site)
    node.start()
    return node


def command(name: str, **args: Any) -> Command:
    return Command(
        node_id="vision-demo-1",
        site="demo-city",
        seq=1,
        name=name,
        issuer="aggregator",
        expires=datetime.now(UTC) + timedelta(seconds=60),
        args=args,
    )


def running_model(node: Node) -> str:
    (running,) = node._running
    return running.source.pipeline.detector.model_ref.name  # type: ignore[attr-defined]


def reported_model(node: Node) -> str | None:
    """What the heartbeat tells the centre the camera runs."""
    return node.heartbeat().sensors.get("cam0.model")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the camera warned of (the uplink warns of the broker nobody runs here)."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith(VISION)]


def record(site: Path) -> Path:
    return site / "state" / "outbox.db.cam0.model-swap.json"


@pytest.fixture
def swapped(site: Path) -> Path:
    """A node that ran, took a swap to the LiteRT model by command, and was stopped."""
    node = start(site)
    try:
        result = node.execute(command("swap_model", model=SWAPPED))
        assert result.ok, result.detail
    finally:
        node.close(flush_s=0)
    return site


def test_a_swapped_model_runs_again_after_a_restart_and_the_heartbeat_says_so(
    swapped: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=VISION):
        node = start(swapped)
    try:
        assert running_model(node) == SWAPPED
        assert wait_until(lambda: reported_model(node) == SWAPPED)
        (line,) = [r.getMessage() for r in caplog.records if "cam0 runs" in r.getMessage()]
        assert SWAPPED in line and "swapped in at" in line and "over node.yaml's fastestdet" in line
    finally:
        node.close(flush_s=0)


def test_a_swapped_model_outlives_a_sighup_that_rebuilds_the_camera(site: Path) -> None:
    node = start(site)
    try:
        assert node.execute(command("swap_model", model=SWAPPED)).ok
        # a zone moved in node.yaml: the camera is built again, with its model
        data = yaml.safe_load((site / "node.yaml").read_text())
        data["sources"][0]["scene"]["zones"][0]["polygon"][0] = [0.2, 0.3]
        (site / "node.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
        before = node._running[0]
        node._reload_file(site / "node.yaml")  # what SIGHUP does
        assert node._running[0] is not before, "the camera was rebuilt"
        assert running_model(node) == SWAPPED
    finally:
        node.close(flush_s=0)


def test_a_swapped_model_outlives_a_reload_config_that_changes_the_alert_lifecycle(site: Path) -> None:
    node = start(site)
    try:
        assert node.execute(command("swap_model", model=SWAPPED)).ok
        data = yaml.safe_load((site / "node.yaml").read_text())
        data["alerts"]["update_interval_s"] = 7  # a new incident book: every source is built again
        assert node.execute(command("reload_config", config=yaml.safe_dump(data))).ok
        assert running_model(node) == SWAPPED
    finally:
        node.close(flush_s=0)


def test_node_yaml_naming_another_model_wins_over_an_older_swap_which_is_dropped(
    swapped: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(swapped, model="fastestdet-tflite-int8")
    with caplog.at_level(logging.INFO, logger=VISION):
        node = start(swapped)
    try:
        assert running_model(node) == "fastestdet-tflite-int8"
        assert not record(swapped).exists()
        assert any("dropped" in r.getMessage() and SWAPPED in r.getMessage() for r in caplog.records)
    finally:
        node.close(flush_s=0)
    write_config(swapped)  # back to the first model: the dropped swap does not come back
    node = start(swapped)
    try:
        assert running_model(node) == "fastestdet"
    finally:
        node.close(flush_s=0)


def test_a_refused_reload_that_names_another_model_leaves_the_swap_kept(site: Path) -> None:
    node = start(site)
    try:
        assert node.execute(command("swap_model", model=SWAPPED)).ok
        data = yaml.safe_load((site / "node.yaml").read_text())
        data["sources"][0]["model"]["name"] = "fastestdet-tflite-int8"
        broken = dict(data["sources"][0], name="cam9", model={"name": "no-such-model"})
        data["sources"].append(broken)  # built after cam0: the reload is refused once cam0 is built
        result = node.execute(command("reload_config", config=yaml.safe_dump(data)))
        assert not result.ok and "cam9" in (result.detail or "")
        assert running_model(node) == SWAPPED
    finally:
        node.close(flush_s=0)
    node = start(site)
    try:
        assert running_model(node) == SWAPPED
    finally:
        node.close(flush_s=0)


def test_the_answer_says_the_swap_is_kept_or_why_not(site: Path) -> None:
    node = start(site)
    try:
        kept = node.execute(command("swap_model", model=SWAPPED))
        assert kept.ok and "kept over node.yaml's fastestdet" in (kept.detail or "")
        record(site).unlink()
        record(site).mkdir()  # nothing can be renamed onto it
        unkept = node.execute(command("swap_model", model="fastestdet-tflite-int8"))
        assert unkept.ok and "not kept" in (unkept.detail or "")
        assert running_model(node) == "fastestdet-tflite-int8", "swapped all the same"
    finally:
        node.close(flush_s=0)


def test_a_swap_back_to_node_yaml_model_is_no_swap_to_keep(swapped: Path) -> None:
    node = start(swapped)
    try:
        assert running_model(node) == SWAPPED
        assert node.execute(command("swap_model", model="fastestdet")).ok
        assert not record(swapped).exists()
    finally:
        node.close(flush_s=0)


def test_the_kept_swap_names_models_and_a_time_and_nothing_else(swapped: Path) -> None:
    kept = json.loads(record(swapped).read_text())
    assert set(kept) == {"camera", "model", "over", "at"}
    assert (kept["camera"], kept["model"], kept["over"]) == ("cam0", SWAPPED, "fastestdet")
    at = datetime.fromisoformat(kept["at"])
    assert at.tzinfo is not None and datetime.now(UTC) - at < timedelta(minutes=10)
    assert [p.name for p in record(swapped).parent.iterdir() if "model-swap" in p.name] == [record(swapped).name]


@pytest.mark.parametrize(
    "damage",
    [
        "{torn",
        "[]",
        '{"camera": "cam0", "model": "../../etc/passwd", "over": "fastestdet", "at": "2025-01-01T00:00:00+00:00"}',
        '{"camera": "cam0", "model": "fastestdet-tflite", "over": "fastestdet", "at": "yesterday"}',
        '{"camera": "cam0", "model": "fastestdet-tflite", "over": "fastestdet", "at": "2025-01-01T00:00:00+00:00", '
        '"by": "me"}',
        '{"camera": "cam7", "model": "fastestdet-tflite", "over": "fastestdet", "at": "2025-01-01T00:00:00+00:00"}',
    ],
)
def test_a_damaged_or_hand_edited_swap_is_a_warning_and_node_yaml_model_runs(
    swapped: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    record(swapped).write_text(damage, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger=VISION):
        node = start(swapped)
    try:
        assert running_model(node) == "fastestdet"
        (warning,) = warnings(caplog)
        assert str(record(swapped)) in warning and "fastestdet" in warning
    finally:
        node.close(flush_s=0)


def test_a_swapped_model_that_no_longer_loads_falls_back_to_node_yaml_model(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Catalogue.from_env().pull(SWAPPED)
    write_config(site, pull=False)  # the cache is all there is: nothing mends it at start
    node = start(site)
    try:
        assert node.execute(command("swap_model", model=SWAPPED)).ok
    finally:
        node.close(flush_s=0)
    (weights,) = (site / "cache" / SWAPPED).glob("*.tflite")
    weights.write_bytes(b"not the weights the manifest names")  # its sha256 no longer matches
    with caplog.at_level(logging.WARNING, logger=VISION):
        node = start(site)
    try:
        assert running_model(node) == "fastestdet"
        assert wait_until(lambda: reported_model(node) == "fastestdet")
        (warning,) = warnings(caplog)
        assert SWAPPED in warning and "sha256" in warning and "fastestdet" in warning
    finally:
        node.close(flush_s=0)


def numbered_model(site: Path, name: str = "numbered") -> str:
    """FastestDet added without labels, as `s4edge models add` adds it then: class_0 … class_79."""
    folder = site / "cache" / name
    shutil.copytree(Catalogue.from_env().models_dir / "fastestdet", folder)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest.update(name=name, labels=[f"class_{k}" for k in range(80)])
    manifest.pop("url")
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return name


def test_a_model_whose_labels_no_rule_watches_is_not_swapped_in(site: Path) -> None:
    # it was swapped in as a success, and the camera's person rules never raised again
    numbered = numbered_model(site)
    node = start(site)
    try:
        result = node.execute(command("swap_model", model=numbered))
        assert not result.ok
        detail = result.detail or ""
        assert "kept fastestdet" in detail and "its labels (class_0, class_1" in detail
        assert "rule centre-intrusion (person)" in detail and f"--name {numbered} --labels FILE" in detail
        assert running_model(node) == "fastestdet"
        assert not record(site).exists()
    finally:
        node.close(flush_s=0)


def test_a_node_yaml_naming_a_model_no_rule_can_use_starts_with_a_warning_and_check_says_so(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # refused at start, the camera took the node's gas and CO sources down with it: the node
    # runs, the log says which rules cannot fire, and `agent check` said it before
    from typer.testing import CliRunner

    from s4edge.cli import app

    write_config(site, model=numbered_model(site), pull=False)
    checked = CliRunner().invoke(app, ["agent", "check", "--config", str(site / "node.yaml")])
    assert checked.exit_code == 0, checked.output
    assert "warning" in checked.output and "rule square-crowd (person)" in checked.output
    assert "--labels FILE --force" in checked.output  # class_N: it was added without its labels
    node = Node(load_config(site / "node.yaml"), base_dir=site)
    try:
        with caplog.at_level(logging.WARNING, logger="s4edge.edge.vision.source"):
            node.start()
        assert [s.name for s in node.config.sources] == ["cam0"]
    finally:
        node.close(flush_s=0)
    assert "rule square-crowd (person)" in caplog.text and "model numbered cannot serve" in caplog.text

