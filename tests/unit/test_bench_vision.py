"""``s4edge bench vision``'s stages alone: each stage run over the clip on its own gives
a CPU figure for every stage the pipeline runs, measured on the frames it was given."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4edge.bench import vision
from s4edge.demo_clip import demo_clip
from s4edge.edge.vision.catalogue import Catalogue
from s4edge.edge.vision.detector import Detector

REPO = Path(__file__).resolve().parents[2]
FRAMES = 20


@pytest.fixture(scope="module")
def fastestdet(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    catalogue = Catalogue(models_dir=REPO / "models", cache_dir=tmp_path_factory.mktemp("cache"))
    return Detector.from_catalogue(catalogue, "fastestdet")  # the shipped default model


def test_every_stage_the_pipeline_runs_is_measured_alone(fastestdet: Detector, tmp_path: Path) -> None:
    clip = demo_clip(tmp_path / "clip.avi")
    frames = vision._frames(clip, FRAMES)
    tensors = [fastestdet.preprocess(frame)[0].copy() for frame in frames]
    publisher = vision._OutboxPublisher(tmp_path)
    try:
        alone = vision.stages_alone(fastestdet, clip, 0, frames, tensors, 1, publisher)
    finally:
        publisher.outbox.close()
    assert set(alone) == set(vision.STAGES)
    for stage in ("capture", "preprocess", "decode", "track", "analytics"):
        assert alone[stage] > 0, f"{stage} was not measured: {alone}"
    assert alone["inference"] == 0  # the raw model's figure is the inference alone; no stage runs it here


def test_a_round_times_the_frames_after_its_warm_up(fastestdet: Detector, tmp_path: Path) -> None:
    from s4edge.drivers.frames import ReplaySource

    clip = demo_clip(tmp_path / "clip.avi")
    publisher = vision._OutboxPublisher(tmp_path)
    try:
        fps, cpu, stages = vision.pipeline_round(fastestdet, ReplaySource(clip, realtime=False), 5, 10, publisher)
        assert fps > 0 and cpu > 0
        assert stages["inference"] > 0 and stages["capture"] > 0
        with pytest.raises(RuntimeError, match="within the 500 frames of warm-up"):
            vision.pipeline_round(fastestdet, ReplaySource(clip, realtime=False), 500, 10, publisher)
    finally:
        publisher.outbox.close()
