"""``s4edge bench vision``: the vision pipeline against its own raw model, in one run.

- **CPU per frame** (reported first): process CPU seconds per frame (``time.process_time``,
  every thread) through the full pipeline against the raw model run on already
  preprocessed frames; ``cpu_ratio`` = raw / pipeline, target ≥ 0.77 (the pipeline
  spends at most 1.3 × the model's CPU). Where it goes: each stage's CPU time in the
  thread that runs it (``time.thread_time``: capture and MJPG decoding, motion,
  preprocess, inference, decode and NMS, tracking, analytics and alerts), and what is
  left (hand-overs between threads, the outbox's writer, glue). CPU time is the steady
  figure on a shared machine; wall time follows the load. Beside them, each stage's CPU
  when it runs over the clip on its own (``stage_cpu_ms_per_frame_alone``): the work
  itself, so that what the pipeline adds by running the stages between inferences shows,
  and ``cpu_ratio_if_stages_cost_alone``, the ratio this work would give if it cost no
  more in the pipeline than alone: the ceiling of the stages as they are, on this machine.
  ``cpu_ratio_if_only_pixels_cost`` is the ratio if only the capture (the JPEG decoded)
  and preprocessing (one bilinear resize, one conversion to float) cost anything, and
  decoding, tracking, analytics and every hand-over were free: the bound that the pixels
  the model must see, at identical detections, put on the target on this machine.
  Each round's clock starts after ``--warmup`` frames (camera open, threads started,
  frame and tensor pools filled), as a node's camera runs for days.
- **throughput**: raw backend runs per second (``infer`` on already preprocessed
  frames) against the full pipeline (capture thread decoding the video and
  preprocessing → infer → tracking thread decoding, NMS, tracking, analytics and
  alerts into an SQLite outbox), every frame inferred; target ratio ≥ 0.90 on a quiet
  machine. Both use the node's default threads (every core but one); the pipeline with
  the model given every core is measured too, so that leaving a core free is seen to pay.
- **motion gate**: process CPU seconds per frame over the clip's static stretch
  (frames 113–172) with the gate, against inferring every frame; target ≤ 0.15.
- **memory**: resident set of a real agent (``edge.app.Node``: the node extras, this
  model, one camera replaying the clip at its own rate, the simulated sensors) in a
  fresh process, median over ``--rss-seconds`` (60); target ≤ 150 MB. Where it goes:
  the interpreter, each imported package (what its import added, less the packages it
  imported in turn), the node's start beyond its imports (model session, camera,
  threads) and running (frames, buffers, allocator); and the heavy packages a node
  should not have imported.

The JSON goes to stdout, a table of the CPU and memory figures to stderr.
"""

from __future__ import annotations

import builtins
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import typer

STATIC = range(113, 173)  # ../shared/data/video/SOURCE.md
RAW_TARGET, GATE_TARGET, RSS_TARGET_MB = 0.90, 0.15, 150.0
CPU_RATIO_TARGET = 0.77  # pipeline CPU per frame ≤ 1.3 × the raw model's
STAGES = ("capture", "motion", "preprocess", "inference", "decode", "track", "analytics")
# what a node has no use for: the aggregator's, the researcher's and the NIR trainer's stacks
NOT_FOR_A_NODE = (
    "scipy",
    "sklearn",
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "psycopg",
    "amqtt",
    "pycocotools",
    "lxml",
    "onnx",
    "pandas",
    "matplotlib",
)


def _frames(source: Path, limit: int | None = None) -> list[Any]:
    from s4edge.drivers.frames import ReplaySource

    replay = ReplaySource(source, realtime=False)
    replay.open()
    frames: list[Any] = []
    while limit is None or len(frames) < limit:
        ok, frame, _ = replay.read()
        if not ok:
            break
        frames.append(frame)
    replay.close()
    return frames


def _scene(book: Any) -> Any:
    from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig

    config = SceneConfig.model_validate(
        {
            "zones": [{"name": "centre", "polygon": [[0.25, 0.3], [0.75, 0.3], [0.75, 1.0], [0.25, 1.0]]}],
            "lines": [{"name": "mid", "a": [0.5, 0.0], "b": [0.5, 1.0]}],
            "rules": [
                {"type": "intrusion", "name": "centre-intrusion", "zone": "centre"},
                {"type": "loitering", "name": "centre-loiter", "zone": "centre", "dwell_s": 3},
                {"type": "crowd", "name": "crowd", "levels": [{"on_at": 4, "severity": "Moderate"}]},
                {"type": "line_cross", "name": "mid-cross", "line": "mid"},
            ],
        }
    )
    return SceneAnalytics("cam0", config, book)


class _OutboxPublisher:
    """Alerts stamped as the node stamps them (edge.app.Node.publish_alert), into SQLite."""

    def __init__(self, folder: Path) -> None:
        from s4edge.cloud_sync.outbox import Outbox

        self.outbox = Outbox(folder / "outbox.db")
        self.count = 0

    def __call__(self, draft: Any) -> None:
        from s4edge.cloud_sync.messages import Location, encode

        alert = draft.stamped("bench", "bench", Location(lat=0, lon=0))
        self.outbox.put_next("s4edge/v1/bench/bench/alert", lambda seq: encode(alert.model_copy(update={"seq": seq})))
        self.count += 1


def _pipeline(detector: Any, emit: Any, gate: Any = None) -> Any:
    """The agent's pipeline, its stages timed in CPU seconds of the thread running each."""
    from s4edge.edge.alerts import IncidentBook
    from s4edge.edge.vision.pipeline import VisionPipeline
    from s4edge.edge.vision.tracker import Tracker

    book = IncidentBook(emit)
    return VisionPipeline("cam0", detector, Tracker(), _scene(book), book, gate=gate, stage_timer=time.thread_time)


class _TimedSource:
    """A frame source whose reads (the video's decoding) are timed in CPU seconds, and
    which ends after ``limit`` frames, as a finite clip would."""

    def __init__(self, source: Any, limit: int | None = None) -> None:
        self.source = source
        self.name = source.name
        self.limit = limit
        self.cpu = 0.0
        self.reads = 0
        self._delivered = 0

    def open(self) -> None:
        self.source.open()

    def read(self) -> Any:
        if self.limit is not None and self._delivered >= self.limit:
            return False, None, 0.0
        start = time.thread_time()
        result = self.source.read()
        self.cpu += time.thread_time() - start
        self.reads += 1
        self._delivered += 1
        return result

    def restart_clock(self) -> None:
        self.cpu, self.reads = 0.0, 0

    def close(self) -> None:
        self.source.close()


class _YuyvCamera:
    """The clip as a V4L2 camera asked for raw YUYV delivers it (``drivers.frames``,
    ``pixel_format: yuyv``): packed 4:2:2 buffers, made before the clock starts, each
    read converted to BGR as OpenCV's V4L2 backend converts it, into pooled buffers.
    No JPEG to decode: what a node saves with a camera that gives raw frames."""

    def __init__(self, frames: list[Any], fps: float = 15.0) -> None:
        import cv2

        from s4edge.drivers.frames import BufferPool

        self.name = "yuyv:clip"
        self.fps = fps
        self._yuyv = [cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_YUYV) for frame in frames]
        self._pool = BufferPool(keep=6)
        self._next = 0

    def open(self) -> None:
        self._next = 0

    def read(self) -> tuple[bool, Any, float]:
        import cv2

        if self._next >= len(self._yuyv):
            return False, None, self._next / self.fps
        raw = self._yuyv[self._next]
        frame = cv2.cvtColor(raw, cv2.COLOR_YUV2BGR_YUYV, dst=self._pool.take((*raw.shape[:2], 3)))
        self._next += 1
        return True, frame, (self._next - 1) / self.fps

    def close(self) -> None:
        pass


def raw_round(detector: Any, tensors: list[Any]) -> tuple[float, float]:
    """Backend runs per second on frames already preprocessed, and CPU seconds per run."""
    start, cpu = time.perf_counter(), time.process_time()
    for tensor in tensors:
        detector.infer(tensor)
    return len(tensors) / (time.perf_counter() - start), (time.process_time() - cpu) / len(tensors)


def pipeline_round(
    detector: Any, camera: Any, warmup: int, limit: int, publisher: _OutboxPublisher
) -> tuple[float, float, dict[str, float]]:
    """Frames per second through the agent's real path (``VisionPipeline.run``): a
    lossless capture thread decodes, gates and preprocesses the next frame, and a
    tracking thread decodes, tracks and raises alerts for the last one, while this
    thread infers the current one. Also CPU seconds per frame, and each stage's CPU
    milliseconds per frame. ``camera`` is a frame source: the clip decoded from its
    MJPG file, or delivered as raw YUYV (``_YuyvCamera``).

    The clock starts after ``warmup`` frames, as a node's camera runs for days: opening
    the video, starting the threads and filling the frame and tensor pools (the first
    frames' page faults) are paid once per start, not per frame. It then runs over the
    next ``limit`` frames: each captured, inferred and tracked once within it."""
    from s4edge.edge.vision.capture import Capture
    from s4edge.edge.vision.pipeline import StageClock, TrackingThread

    pipe = _pipeline(detector, publisher)
    video = _TimedSource(camera, warmup + limit + 1)  # the one after the last: read while it is inferred
    capture = Capture(video, finite=True, lossless=True, prepare=pipe.prepare)
    tracking = TrackingThread(pipe)
    capture.start()
    for _ in range(warmup):
        frame = capture.wait_frame(timeout=5.0)
        if frame is None:
            raise RuntimeError(f"{camera.name} ended within the {warmup} frames of warm-up")
        tracking.submit(pipe.infer(frame.image, frame.ts, frame.prepared))
    tracking.close()  # the warm-up's frames are tracked before the clock starts
    tracking, pipe.clock, frames_before = TrackingThread(pipe), StageClock(), pipe.frames
    video.restart_clock()  # the next frame, read and prepared already, is in the warm-up's count
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(limit):
        frame = capture.wait_frame(timeout=5.0)
        if frame is None:
            break
        tracking.submit(pipe.infer(frame.image, frame.ts, frame.prepared))
    tracking.close()
    frames = max(1, pipe.frames - frames_before)
    fps, cpu_per_frame = frames / (time.perf_counter() - start), (time.process_time() - cpu) / frames
    capture.stop()
    if pipe.errors:
        raise RuntimeError(f"the pipeline failed on {pipe.errors} frames: {pipe.last_error}")
    stages = {"capture": video.cpu * 1000 / max(1, video.reads), **pipe.clock.means()}
    return fps, cpu_per_frame, stages


def throughput(
    detector: Any, all_cores: Any, source: Path, clip: list[Any], warmup: int, limit: int, rounds: int
) -> dict[str, Any]:
    """Raw and pipeline rounds alternate, and each pair gives a ratio: a load that
    drifts during the run (a shared machine) hits both sides of a pair alike.
    ``all_cores`` is the same model given every core, run through the same pipeline in
    the same rounds: the default should beat it, or leaving a core free would be a loss.
    The clip is played twice per round: decoded from its MJPG file (the target's
    figure), and as a camera that gives raw YUYV frames would deliver it. Every figure is
    of the ``limit`` frames after the first ``warmup`` (``pipeline_round``)."""
    from s4edge.drivers.frames import ReplaySource

    frames = clip[warmup : warmup + limit]
    tensors = [detector.preprocess(f)[0].copy() for f in frames]
    detector.infer(tensors[0])  # warm-up
    all_cores.infer(tensors[0])
    yuyv = _YuyvCamera(clip[: warmup + limit + 1])
    raw: list[tuple[float, float]] = []
    full_all: list[tuple[float, float, dict[str, float]]] = []
    full: list[tuple[float, float, dict[str, float]]] = []
    raw_camera: list[tuple[float, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        publisher = _OutboxPublisher(Path(tmp))
        try:
            for _ in range(rounds):
                raw.append(raw_round(detector, tensors))
                replay = partial(ReplaySource, source, realtime=False)
                full.append(pipeline_round(detector, replay(), warmup, limit, publisher))
                raw_camera.append(pipeline_round(detector, yuyv, warmup, limit, publisher))
                full_all.append(pipeline_round(all_cores, replay(), warmup, limit, publisher))
            alone = stages_alone(detector, source, warmup, frames, tensors, rounds, publisher)
        finally:
            publisher.outbox.close()
    mjpg = _against_raw(full, raw)
    alone["inference"] = round(statistics.median(r[1] for r in raw) * 1000, 3)  # the raw model
    return {
        **mjpg,
        "stage_cpu_ms_per_frame_alone": alone,
        # the ceiling of this work on this machine: the stages at their cost alone, nothing between them
        "cpu_ratio_if_stages_cost_alone": round(alone["inference"] / sum(alone.values()), 4),
        # the bound of identical detections: the JPEG decoded and the model's input made (one
        # bilinear resize, one conversion to float) as they are, and all else free
        "cpu_ratio_if_only_pixels_cost": round(
            alone["inference"] / (alone["inference"] + alone["capture"] + alone["preprocess"]), 4
        ),
        "cpu_ratio_target_min": CPU_RATIO_TARGET,
        "meets_cpu_target": mjpg["cpu_ratio"] >= CPU_RATIO_TARGET,
        # CPU seconds per frame: less swayed than wall time by other processes' load
        "raw_cpu_ms_per_frame": round(statistics.median(r[1] for r in raw) * 1000, 3),
        "raw_backend_fps": round(statistics.median(r[0] for r in raw), 2),
        "pipeline_fps_model_on_all_cores": round(statistics.median(f[0] for f in full_all), 2),
        "target_min": RAW_TARGET,
        "meets_target": mjpg["ratio"] >= RAW_TARGET,
        "raw_camera": {
            **_against_raw(raw_camera, raw),
            "what": "the clip as a V4L2 camera asked for YUYV gives it: no JPEG to decode, "
            "the YUYV→BGR conversion counted in capture",
        },
        "alerts_to_outbox": publisher.count,
    }


def stages_alone(
    detector: Any,
    source: Path,
    warmup: int,
    frames: list[Any],
    tensors: list[Any],
    rounds: int,
    publisher: _OutboxPublisher,
) -> dict[str, float]:
    """Each stage's CPU per frame when it runs over the clip on its own, stage after
    stage: every frame decoded from the file (after ``warmup`` frames, as in the
    pipeline's rounds; ``frames`` are the ones after them), then every frame
    preprocessed, then every frame's outputs decoded, tracked and analysed (medians of
    ``rounds``). That is the
    work itself; the pipeline's own figures add what running it between inferences
    costs (its code and data evicted by the model, a core that idled coming back cold)."""
    from s4edge.drivers.frames import ReplaySource
    from s4edge.edge.vision.pipeline import Inferred

    outputs = [detector.infer(tensor) for tensor in tensors]
    geometry = detector.preprocess(frames[0])[1]
    rounds_ms: list[dict[str, float]] = []
    for _ in range(rounds):
        video = _TimedSource(ReplaySource(source, realtime=False), warmup + len(frames))
        video.open()
        for _ in range(warmup):
            video.read()
        video.restart_clock()
        while video.read()[0]:
            pass
        video.close()
        pipe = _pipeline(detector, publisher)
        for i, frame in enumerate(frames):
            pipe.prepare(frame, i / 15)
        for i, (frame, output) in enumerate(zip(frames, outputs, strict=True)):
            pipe.track(Inferred(frame, i / 15, detector.model_ref, partial(detector.decode, output, geometry)))
        rounds_ms.append({"capture": video.cpu * 1000 / max(1, video.reads), **pipe.clock.means()})
    return {stage: round(statistics.median(r.get(stage, 0.0) for r in rounds_ms), 3) for stage in STAGES}


def _against_raw(full: list[tuple[float, float, dict[str, float]]], raw: list[tuple[float, float]]) -> dict[str, Any]:
    """Pipeline rounds against the raw model's, pair by pair: CPU and throughput ratios,
    and where the pipeline's CPU went, stage by stage (medians)."""
    ratios = [f[0] / r[0] for f, r in zip(full, raw, strict=True)]
    cpu_ratios = [r[1] / f[1] for f, r in zip(full, raw, strict=True)]
    full_cpu = statistics.median(f[1] for f in full)
    stages = {stage: statistics.median(f[2].get(stage, 0.0) for f in full) for stage in STAGES}
    stages["other"] = full_cpu * 1000 - sum(stages.values())  # hand-overs, the outbox's writer, glue
    return {
        "cpu_ratio": round(statistics.median(cpu_ratios), 4),
        "cpu_ratio_rounds": [round(v, 3) for v in cpu_ratios],
        "pipeline_cpu_ms_per_frame": round(full_cpu * 1000, 3),
        "stage_cpu_ms_per_frame": {stage: round(ms, 3) for stage, ms in stages.items()},
        "pipeline_fps": round(statistics.median(f[0] for f in full), 2),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_rounds": [round(v, 3) for v in ratios],
    }


def gate_cpu(detector: Any, frames: list[Any], rounds: int) -> dict[str, Any]:
    """CPU seconds per frame over the static stretch, gated against inferring every frame."""
    from s4edge.edge.vision.motion import MotionConfig, MotionGate

    static = frames[STATIC.start : STATIC.stop]
    lead_in = frames[STATIC.start - 15 : STATIC.start]  # the gate and tracker arrive warm, as in a live run
    result: dict[str, list[float]] = {"gated": [], "every_frame": [], "skipped": []}
    for _ in range(rounds):
        for mode in ("gated", "every_frame"):
            gate = MotionGate(MotionConfig()) if mode == "gated" else None
            pipe = _pipeline(detector, lambda draft: None, gate)
            for i, frame in enumerate(lead_in):
                pipe.process(frame, i / 15)
            start = time.process_time()
            for i, frame in enumerate(static):
                pipe.process(frame, (len(lead_in) + i) / 15)
            result[mode].append((time.process_time() - start) / len(static))
            if gate is not None:
                result["skipped"].append(gate.skipped)
    gated, every = statistics.median(result["gated"]), statistics.median(result["every_frame"])
    return {
        "static_frames": len(static),
        "gated_cpu_ms_per_frame": round(gated * 1000, 3),
        "every_frame_cpu_ms_per_frame": round(every * 1000, 3),
        "ratio": round(gated / every, 4),
        "target_max": GATE_TARGET,
        "meets_target": gated / every <= GATE_TARGET,
        "skipped_per_round": result["skipped"],
    }


def agent_rss(model: str, source: Path, seconds: float) -> dict[str, Any]:
    """Resident memory of a real node with one camera and the simulated sensors,
    measured in a fresh process."""
    code = (
        "import sys; from s4edge.bench.vision import _agent_child; "
        "_agent_child(sys.argv[1], sys.argv[2], float(sys.argv[3]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, model, str(source.resolve()), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:]}
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _package(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[0] == "s4edge" else parts[0]


class _ImportLedger:
    """Resident memory each package's import added, less what the packages it imported
    in turn added (those count for themselves): ``builtins.__import__`` wrapped while a
    node starts. Approximate: another thread's allocations during an import count for it."""

    def __init__(self) -> None:
        self.mb: defaultdict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._original = builtins.__import__

    def __enter__(self) -> _ImportLedger:
        builtins.__import__ = self._import
        return self

    def __exit__(self, *exc: object) -> None:
        builtins.__import__ = self._original

    def _import(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level or (name in sys.modules and not fromlist):  # nothing new: not worth a look
            return self._original(name, globals, locals, fromlist, level)
        stack: list[float] = self._local.__dict__.setdefault("stack", [])
        stack.append(0.0)
        before = _rss_mb()
        try:
            return self._original(name, globals, locals, fromlist, level)
        finally:
            spent, nested = _rss_mb() - before, stack.pop()
            self.mb[_package(name)] += spent - nested
            if stack:
                stack[-1] += spent


def _agent_child(model: str, source: str, seconds: float) -> None:
    interpreter = _rss_mb()
    with _ImportLedger() as ledger:
        import psutil

        from s4edge.edge.app import Node
        from s4edge.edge.config import parse_config
        from s4edge.testing.mosquitto import free_port

        folder = Path(tempfile.mkdtemp(prefix="s4edge-bench-"))
        config = parse_config(
            {
                "node_id": "bench-node",
                "site": "bench",
                "location": {"lat": 0, "lon": 0},
                # nobody listens there: the node runs offline, alerts wait in its outbox
                "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
                "outbox": {"path": str(folder / "outbox.db")},
                "commands": {"issuers": ["aggregator"]},
                "sources": [
                    {
                        "type": "vision",
                        "name": "cam0",
                        "camera": {"url": f"replay:{source}", "loop": True, "realtime": True},
                        "model": {"name": model},
                        "scene": _scene_dict(),
                    },
                    _sim_sensors(),
                ],
            }
        )
        node = Node(config)
        before_start = _rss_mb()
        imported_before_start = sum(ledger.mb.values())
        node.start()
        started = _rss_mb()
    imported = sum(ledger.mb.values())
    process = psutil.Process()
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        samples.append(process.memory_info().rss / 2**20)
    states, figures = node.health.states(), node.health.vision()
    node.close(flush_s=0.1)
    steady = statistics.median(samples[len(samples) // 4 :])  # after the model and the first frames are in
    packages = sorted(ledger.mb.items(), key=lambda item: -item[1])
    shown = [(name, mb) for name, mb in packages if mb >= 0.5][:14]
    breakdown = {
        "interpreter": round(interpreter, 1),
        **{f"import {name}": round(mb, 1) for name, mb in shown},
        "import (everything else)": round(imported - sum(mb for _, mb in shown), 1),
        "node built, beyond its imports": round(before_start - interpreter - imported_before_start, 1),
        "node start, beyond its imports (model session, camera, threads)": round(
            started - before_start - (imported - imported_before_start), 1
        ),
        "running (frames, buffers, allocator)": round(steady - started, 1),
    }
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_mb_median": round(steady, 1),
                "rss_mb_max": round(max(samples), 1),
                "target_max_mb": RSS_TARGET_MB,
                "meets_target": steady <= RSS_TARGET_MB,
                "rss_mb_breakdown": breakdown,
                "imports_a_node_has_no_use_for": [name for name in NOT_FOR_A_NODE if name in sys.modules],
                "camera_state": states.get("cam0"),
                "camera_fps": figures.camera_fps,
                "sensor_states": {k: v for k, v in states.items() if k.startswith("env.")},
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)  # daemon threads of the uplink need not linger


def _scene_dict() -> dict[str, Any]:
    return {
        "zones": [{"name": "centre", "polygon": [[0.25, 0.3], [0.75, 0.3], [0.75, 1.0], [0.25, 1.0]]}],
        "rules": [
            {"type": "intrusion", "name": "centre-intrusion", "zone": "centre"},
            {"type": "crowd", "name": "crowd", "levels": [{"on_at": 4, "severity": "Moderate"}]},
        ],
    }


def _sim_sensors() -> dict[str, Any]:
    """The simulated chips of edge/sensing/examples/sensors-sim.yaml, on the gas_leak scenario."""
    return {
        "type": "sensors",
        "name": "env",
        "bus": "sim",
        "scenario": "gas_leak",
        "period_s": 1.0,
        "sensors": [
            {"name": "climate", "kind": "bme280", "address": 0x77},
            {
                "name": "mq2",
                "kind": "mq2",
                "gas": "methane",
                "address": 0x48,
                "channel": 0,
                "r0_ohm": 10000,
                "sim": {"signal": "methane_lel", "scale": 500},
            },
            {
                "name": "mq7",
                "kind": "mq7",
                "gas": "co",
                "address": 0x48,
                "channel": 1,
                "r0_ohm": 10000,
                "profile": "en50291",
                "sim": {"signal": "co_ppm"},
            },
            {"name": "co2", "kind": "scd4x"},
            {"name": "voc", "kind": "sgp30"},
            {"name": "flame-1", "kind": "flame", "pin": 17, "sim": {"signal": "flame"}},
        ],
    }


def _table(report: dict[str, Any]) -> str:
    """The CPU and memory figures as a plain table, for a person reading the run."""
    tp, memory = report["throughput"], report["memory"]
    lines = [
        f"cpu_ratio {tp['cpu_ratio']} (target ≥ {tp['cpu_ratio_target_min']}): "
        f"pipeline {tp['pipeline_cpu_ms_per_frame']} CPU ms per frame, raw model {tp['raw_cpu_ms_per_frame']}",
        f"{'stage':<12}{'CPU ms/frame':>14}{'alone':>14}",
        *(
            f"{stage:<12}{ms:>14.3f}{tp['stage_cpu_ms_per_frame_alone'].get(stage, float('nan')):>14.3f}"
            for stage, ms in tp["stage_cpu_ms_per_frame"].items()
        ),
        f"{'raw model':<12}{tp['raw_cpu_ms_per_frame']:>14.3f}",
        f"cpu_ratio if every stage cost what it costs alone: {tp['cpu_ratio_if_stages_cost_alone']}",
        f"cpu_ratio if only capture and preprocess cost (the rest free): {tp['cpu_ratio_if_only_pixels_cost']}",
        f"throughput ratio {tp['ratio']} (target ≥ {tp['target_min']}; load average {report['load_average']})",
        f"raw YUYV camera: cpu_ratio {tp['raw_camera']['cpu_ratio']}, "
        f"pipeline {tp['raw_camera']['pipeline_cpu_ms_per_frame']} CPU ms per frame "
        f"(capture {tp['raw_camera']['stage_cpu_ms_per_frame']['capture']}), "
        f"throughput ratio {tp['raw_camera']['ratio']}",
    ]
    if "rss_mb_median" in memory:
        lines.append(f"agent RSS median {memory['rss_mb_median']} MB (target ≤ {memory['target_max_mb']})")
        lines += [f"  {mb:>7.1f} MB  {part}" for part, mb in memory["rss_mb_breakdown"].items()]
        lines.append(f"  imports a node has no use for: {', '.join(memory['imports_a_node_has_no_use_for']) or 'none'}")
    return "\n".join(lines)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("vision")
    def vision(
        model: str = typer.Option("fastestdet", "--model", help="Catalogue model name"),
        source: Path = typer.Option(
            Path("../shared/data/video/bench_people_640x480_15fps.avi"), "--source", help="Video file to replay"
        ),
        frames: int = typer.Option(60, "--frames", help="Frames per throughput round"),
        warmup: int = typer.Option(
            30, "--warmup", help="Frames each round runs before its clock starts (camera opened, buffers pooled)"
        ),
        rounds: int = typer.Option(9, "--rounds", help="Rounds per measurement; medians are quoted"),
        rss_seconds: float = typer.Option(60.0, "--rss-seconds", help="How long the agent runs for the memory figure"),
        threads: int | None = typer.Option(
            None, "--threads", help="Intra-op threads (default: the node's, every core but one)"
        ),
    ) -> None:
        """Pipeline CPU per frame vs the raw model, throughput, motion-gate CPU, agent memory (JSON)."""
        from s4edge.edge.vision.backends import BackendOptions, default_threads
        from s4edge.edge.vision.source import ModelConfig, load_detector

        if not source.is_file():
            raise typer.BadParameter(f"{source}: no such video; build one with scripts/make_demo_clip.py")
        threads = threads or default_threads()
        detector = load_detector(ModelConfig(name=model, backend=BackendOptions(threads=threads)))
        every_core = os.cpu_count() or 1
        all_cores = load_detector(ModelConfig(name=model, backend=BackendOptions(threads=every_core)))
        clip = _frames(source)
        load_before = os.getloadavg()
        if len(clip) <= warmup + frames:
            raise typer.BadParameter(f"{source} has {len(clip)} frames: fewer than --warmup + --frames + 1")
        measured = throughput(detector, all_cores, source, clip, warmup, frames, rounds)
        report = {
            "cpu_ratio": measured["cpu_ratio"],
            "cpu_ratio_target_min": CPU_RATIO_TARGET,
            "cpu_ratio_raw_camera": measured["raw_camera"]["cpu_ratio"],
            "stage_cpu_ms_per_frame": measured["stage_cpu_ms_per_frame"],
            "model": detector.model_ref.model_dump(),
            "source": str(source),
            "frames_per_round": frames,
            "warmup_frames_per_round": warmup,
            "rounds": rounds,
            "threads": {"pipeline_and_raw": threads, "all_cores": every_core},
            "throughput": measured,
            "motion_gate": gate_cpu(detector, clip, rounds) if len(clip) >= STATIC.stop else "clip too short",
            "memory": agent_rss(model, source, rss_seconds),
            "cpu_count": os.cpu_count(),
            "load_average": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        }
        typer.echo(_table(report), err=True)
        typer.echo(json.dumps(report, indent=2))
