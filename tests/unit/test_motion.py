"""The motion gate skips inference on a static scene and still re-checks it regularly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s4edge.drivers.frames import ReplaySource
from s4edge.drivers.sim.frames import moving_square
from s4edge.edge.vision.motion import MotionConfig, MotionGate

CLIP = "data/video/bench_people_640x480_15fps.avi"
STATIC = range(113, 173)  # data/video/SOURCE.md: frames 113–172 are one identical frame


def still(value: int = 90) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(value, 2, (240, 320, 3)), 0, 255).astype(np.uint8)


def test_static_frames_skip_inference_until_the_forced_recheck() -> None:
    gate = MotionGate(MotionConfig(force_every_s=2.0))
    decisions = [gate.check(still(), t / 15) for t in range(45)]  # 3 s at 15 fps
    infer = [t for t, d in enumerate(decisions) if d.infer]
    assert infer == [0, 30]  # the first frame, then the forced re-check after 2 s
    assert decisions[1].reason == "static" and decisions[30].reason == "forced"
    assert (gate.inferred, gate.skipped) == (2, 43)


def test_motion_triggers_inference() -> None:
    gate = MotionGate(MotionConfig(width=64, min_area=0.001))
    assert gate.check(moving_square(0), 0.0).infer
    later = gate.check(moving_square(6), 0.1)
    assert later.infer and later.reason == "motion"


def test_slow_drift_adds_up_against_the_last_inferred_frame() -> None:
    gate = MotionGate(MotionConfig(width=64, min_area=0.03, force_every_s=100))
    gate.check(moving_square(0), 0.0)
    # one pixel per frame is under min_area; compared with frame 0 it soon is not
    decisions = [gate.check(moving_square(i), i / 15) for i in range(1, 10)]
    assert not decisions[0].infer
    assert any(d.infer for d in decisions)


def test_sensor_noise_is_not_motion() -> None:
    gate = MotionGate()
    rng = np.random.default_rng(1)
    base = still()
    gate.check(base, 0.0)
    noisy = np.clip(base.astype(int) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    assert not gate.check(noisy, 0.1).infer


def test_a_disabled_gate_always_infers() -> None:
    gate = MotionGate(MotionConfig(enabled=False))
    assert all(gate.check(still(), t).infer for t in range(5))


def test_the_static_stretch_of_the_benchmark_clip_is_skipped(shared: Path) -> None:
    clip = shared / CLIP
    if not clip.is_file():
        pytest.skip(f"{clip} is absent (see ../shared/README.md)")
    source = ReplaySource(clip, realtime=False, clock=lambda: 0.0)
    source.open()
    gate = MotionGate(MotionConfig(force_every_s=2.0))
    decisions = {}
    for index in range(STATIC.stop):
        ok, frame, ts = source.read()
        assert ok and frame is not None
        decisions[index] = gate.check(frame, ts)
    source.close()
    static = [decisions[i] for i in STATIC]
    # frame 113 is a cut from the pan before it; past it, only the forced re-checks run
    assert static[0].infer
    skipped = sum(not d.infer for d in static[1:])
    assert skipped >= len(static) - 1 - 2  # 4 s static, forced every 2 s
    moving = [decisions[i].infer for i in range(60, 100)]
    assert sum(moving) >= 20  # the pans before it do reach the detector
