"""The vision source plugin's config, its registration, and local snapshots with
every person blurred."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from s4edge.edge.config import ConfigError, load_config, parse_config
from s4edge.edge.sources import load_plugins
from s4edge.edge.vision.snapshots import SnapshotConfig, SnapshotWriter, blur_boxes

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "firmware_configs" / "vision-demo.yaml"


def node(source: dict) -> dict:
    return {
        "node_id": "n1",
        "site": "s1",
        "location": {"lat": 0, "lon": 0},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "sources": [source],
    }


def test_vision_is_a_builtin_source_plugin() -> None:
    assert "vision" in load_plugins()


def test_the_plugin_imports_without_touching_opencv_or_onnxruntime() -> None:
    code = "import sys, edge.config; print('cv2' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_demo_config_validates() -> None:
    config = load_config(DEMO)
    (vision,) = [s for s in config.sources if s.type == "vision"]
    assert vision.model.name == "fastestdet"
    # the clip `python -m s4edge.demo_clip` builds, beside the config
    assert vision.camera.url == f"replay:{DEMO.resolve().parent / 'demo_clip.avi'}"
    assert {r.type for r in vision.scene.rules} >= {"intrusion", "crowd"}
    assert vision.snapshots.enabled is False


def test_a_typo_in_a_rule_is_refused_with_its_path() -> None:
    source = {
        "type": "vision",
        "camera": {"url": "0"},
        "model": {"name": "fastestdet"},
        "scene": {"zones": [], "rules": [{"type": "loitering", "name": "l", "zone": "z", "dwel_s": 3}]},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(node(source), "node.yaml")
    assert "node.yaml" in str(err.value) and "dwel_s" in str(err.value)


def test_snapshots_are_off_by_default(tmp_path: Path) -> None:
    writer = SnapshotWriter(SnapshotConfig(folder=tmp_path), "cam0")
    assert writer.save(np.zeros((10, 10, 3), np.uint8), [], "intrusion") is None
    assert list(tmp_path.iterdir()) == []


def textured(height: int = 240, width: int = 320) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_snapshot_blurs_every_person_and_only_people(tmp_path: Path) -> None:
    frame = textured()
    person, car = (0.1, 0.1, 0.4, 0.9), (0.6, 0.1, 0.9, 0.5)
    writer = SnapshotWriter(SnapshotConfig(enabled=True, folder=tmp_path, jpeg_quality=100), "cam0", wall=lambda: 1e9)
    path = writer.save(frame, [("person", person), ("car", car)], "intrusion")
    assert path is not None and path.parent == tmp_path
    saved = cv2.imread(str(path))
    inside_person = saved[40:200, 40:120].astype(float)
    inside_car = saved[40:110, 200:280].astype(float)
    # random texture has a std of ~74; blurred it is nearly flat
    assert inside_person.std() < 15
    assert inside_car.std() > 50


def test_blur_handles_degenerate_boxes() -> None:
    frame = textured(20, 20)
    out = blur_boxes(frame, [(0.5, 0.5, 0.5, 0.5), (0.0, 0.0, 1.0, 1.0)])
    assert out.shape == frame.shape and out.std() < frame.std()


def test_snapshot_retention_keeps_the_newest(tmp_path: Path) -> None:
    now = [1_000.0]
    config = SnapshotConfig(enabled=True, folder=tmp_path, max_count=3, max_age_s=100)
    writer = SnapshotWriter(config, "cam0", wall=lambda: now[0])
    for i in range(5):
        now[0] = 1_000.0 + i
        path = writer.save(textured(16, 16), [], "crowd")
        assert path is not None
        os.utime(path, (now[0], now[0]))
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"cam0-{1000 + i:.3f}-crowd.jpg" for i in (2, 3, 4)]
    now[0] = 1_000.0 + 103.5  # the oldest two are now past max_age_s
    writer.prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0-1004.000-crowd.jpg"]


def test_the_swap_model_command_names_the_model_and_reports_failures() -> None:
    from s4edge.cloud_sync.messages import ModelRef
    from s4edge.edge.alerts import IncidentBook
    from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
    from s4edge.edge.vision.pipeline import VisionPipeline
    from s4edge.edge.vision.source import Config, VisionSource
    from s4edge.edge.vision.tracker import Tracker

    class Fixed:
        def __init__(self, name: str) -> None:
            self.model_ref = ModelRef(name=name, version="1", sha256="0" * 64)

        def detect(self, frame_bgr: object) -> list:
            return []

    def factory(name: str) -> Fixed:
        if name == "broken":
            raise ValueError("models/broken/manifest.yaml: decoder: unknown family")
        return Fixed(name)

    config = Config.model_validate({"type": "vision", "camera": {"url": "0"}, "model": {"name": "a"}})
    book = IncidentBook(lambda draft: None)
    pipe = VisionPipeline(
        "cam0", Fixed("a"), Tracker(), SceneAnalytics("cam0", SceneConfig(), book), book, detector_factory=factory
    )
    source = VisionSource(config, pipe)
    assert source.swap_model({"model": "b"}) == "cam0: swapped a 1 → b 1"
    assert pipe.detector.model_ref.name == "b"
    with pytest.raises(ValueError, match="unknown family"):
        source.swap_model({"model": "broken"})
    assert pipe.detector.model_ref.name == "b"
    with pytest.raises(ValueError, match=r"needs args\.model"):
        source.swap_model({})
