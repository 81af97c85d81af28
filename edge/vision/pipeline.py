"""One camera's vision pipeline: capture → motion gate → detector → tracker →
scene analytics → incidents.

The detector is a reference that ``swap_model`` replaces between two frames: the new
model is built (pulled, sha256-checked, loaded) while the old one keeps working, and
a swap that fails leaves the old one in place and says why.
"""

from __future__ import annotations

import inspect
import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import time as time_of_day
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.messages import ModelRef
from s4edge.edge.alerts import AlertNotStored, Content, IncidentBook
from s4edge.edge.sources import SourceContext
from s4edge.edge.vision.analytics import SceneAnalytics
from s4edge.edge.vision.capture import Capture
from s4edge.edge.vision.motion import MotionGate
from s4edge.edge.vision.snapshots import SnapshotWriter
from s4edge.edge.vision.tracker import Track, Tracker
from s4edge.edge.vision.types import Detection

HEALTH_EVERY_S = 1.0
_T = TypeVar("_T")
log = logging.getLogger(__name__)


class FrameDetector(Protocol):
    """What the pipeline needs of a detector (edge.vision.detector.Detector)."""

    @property
    def model_ref(self) -> ModelRef: ...

    def detect(self, frame_bgr: Any) -> list[Detection]: ...


@runtime_checkable
class SplitDetector(FrameDetector, Protocol):
    """A detector whose preprocessing can run apart from inference (in the capture thread)."""

    def preprocess(self, frame_bgr: Any) -> tuple[Any, Any]: ...

    def infer(self, tensor: Any) -> Any: ...

    def decode(self, outputs: Any, geometry: Any) -> list[Detection]: ...


DetectorFactory = Callable[[str], FrameDetector]


@dataclass(frozen=True)
class Prepared:
    """A frame's motion verdict and, when it is to be inferred, its input tensor as made
    by ``detector``'s preprocessing."""

    infer: bool
    detector: FrameDetector | None = None
    tensor: Any = None
    geometry: Any = None


@dataclass(frozen=True, slots=True)
class Inferred:
    """A frame after the model ran on it: what tracking and analytics need of it."""

    image: Any
    ts: float
    model: ModelRef  # the model that saw this frame, even if a swap landed since
    decode: Callable[[], list[Detection]] | None  # None: a static frame, the last detections stand
    # the same outputs decoded at another score threshold (a snapshot's blur), where the model can
    decode_at: Callable[[float], list[Detection]] | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A detector with what each frame needs of it, found out once at load or swap: its
    ref (``model_ref`` builds a new pydantic object on every read) and whether it splits
    (a runtime Protocol check reads every member, ``model_ref`` included)."""

    detector: FrameDetector
    ref: ModelRef
    split: SplitDetector | None
    decodes_at: bool = False  # its decode takes a score_threshold (edge.vision.detector.Detector's does)

    @classmethod
    def of(cls, detector: FrameDetector) -> LoadedModel:
        split = detector if isinstance(detector, SplitDetector) else None
        takes = split is not None and "score_threshold" in inspect.signature(split.decode).parameters
        return cls(detector, detector.model_ref, split, takes)


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    detail: str
    model: ModelRef | None = None


def _decode_at(split: SplitDetector, outputs: Any, geometry: Any, score_threshold: float) -> list[Detection]:
    decode: Callable[..., list[Detection]] = split.decode
    return decode(outputs, geometry, score_threshold=score_threshold)


class StageClock:
    """Recent per-stage durations in milliseconds; medians for the heartbeat."""

    def __init__(self, window: int = 120) -> None:
        self._ms: dict[str, deque[float]] = {}
        self._window = window
        self._frames: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()  # the capture thread times its stages too

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._ms.setdefault(stage, deque(maxlen=self._window)).append(seconds * 1000.0)

    def frame(self, ts: float) -> None:
        with self._lock:
            self._frames.append(ts)

    def median_ms(self, stage: str) -> float | None:
        with self._lock:
            values = list(self._ms.get(stage, ()))
        return round(statistics.median(values), 2) if values else None

    def means(self) -> dict[str, float]:
        """Mean milliseconds per stage over the window (they add up, unlike medians)."""
        with self._lock:
            snapshot = {stage: list(v) for stage, v in self._ms.items() if v}
        return {stage: statistics.fmean(v) for stage, v in snapshot.items()}

    def medians(self) -> dict[str, float]:
        with self._lock:
            snapshot = {stage: list(v) for stage, v in self._ms.items() if v}
        return {stage: round(statistics.median(v), 2) for stage, v in snapshot.items()}

    def fps(self) -> float:
        with self._lock:
            frames = list(self._frames)
        if len(frames) < 2 or frames[-1] <= frames[0]:
            return 0.0
        return round((len(frames) - 1) / (frames[-1] - frames[0]), 2)


def _one_opencv_thread() -> None:
    """OpenCV splits each resize or blur across its own thread pool. On frames this small
    the hand-over costs more CPU than it saves (the motion check: 0.28 → 0.08 CPU ms per
    frame), and the pipeline already runs capture, inference and tracking side by side.
    The setting is process-wide, as OpenCV keeps it."""
    import cv2

    cv2.setNumThreads(1)


class TrackingThread:
    """Runs ``VisionPipeline.track`` on frame N while the model infers frame N+1.

    Inference releases the GIL and, with one core left to the rest of the pipeline
    (``BackendOptions.threads``), decoding, tracking, analytics and alerts fit in the
    time the next inference takes, instead of adding to it (``s4edge bench vision``).
    One slot, taken in order: frames stay in sequence for the tracker, and inference
    waits rather than running ahead of a slow frame.
    """

    def __init__(self, pipeline: VisionPipeline) -> None:
        self._pipeline = pipeline
        self._slot: queue.Queue[Inferred | None] = queue.Queue(maxsize=1)
        self._failures = FailureLog(log, f"tracking on camera {pipeline.name}")
        self._thread = threading.Thread(target=self._loop, name=f"track-{pipeline.name}", daemon=True)
        self._thread.start()

    def submit(self, frame: Inferred) -> None:
        self._slot.put(frame)

    def close(self, timeout: float = 5.0) -> None:
        """Finish the frames handed over, then stop (a thread stuck past ``timeout`` is a
        daemon and is left behind)."""
        if not self._thread.is_alive():
            return
        try:
            self._slot.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (frame := self._slot.get()) is not None:
            self._pipeline.guarded(self._failures, self._pipeline.track, frame)


class VisionPipeline:
    def __init__(
        self,
        name: str,
        detector: FrameDetector,
        tracker: Tracker,
        analytics: SceneAnalytics,
        book: IncidentBook,
        *,
        gate: MotionGate | None = None,
        detector_factory: DetectorFactory | None = None,
        snapshots: SnapshotWriter | None = None,
        local_time: Callable[[], time_of_day] = lambda: datetime.now().time(),
        stage_timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``stage_timer`` times the stages in ``clock``: wall time by default (the
        heartbeat's ``stages_ms``); ``time.thread_time`` gives each stage's CPU time, as
        every stage runs within one thread (``s4edge bench vision``)."""
        _one_opencv_thread()
        self._timer = stage_timer
        self.name = name
        self._loaded = LoadedModel.of(detector)  # replaced whole: a frame never mixes two models
        self.tracker = tracker
        self.analytics = analytics
        self.book = book
        self.gate = gate
        self._factory = detector_factory
        self.snapshots = snapshots
        self._local_time = local_time
        self._last_detections: list[Detection] = []
        self._swap_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self.clock = StageClock()
        self.frames = 0
        self.inferences = 0
        self.errors = 0
        self.last_error: str | None = None
        self.swap_status: str | None = None

    @property
    def detector(self) -> FrameDetector:
        return self._loaded.detector

    def prepare(self, image: Any, ts: float, replaces: Prepared | None = None) -> Prepared:
        """Motion check and preprocessing: the part of a frame's work that may run in
        the capture thread, overlapping inference on the previous frame."""
        with self._prepare_lock:
            t0 = self._timer()
            carried = replaces is not None and replaces.infer
            infer = self.gate is None or self.gate.check(image, ts, force=carried).infer
            t1 = self._timer()
            self.clock.add("motion", t1 - t0)
        split = self._loaded.split
        if not infer or split is None:
            return Prepared(infer)
        try:
            tensor, geometry = split.preprocess(image)
        except Exception:
            # The gate has taken this frame as its reference: asked again, it would call the
            # frame static and the error would never show. Inferred by detect() instead,
            # whose error the pipeline counts and reports.
            return Prepared(True)
        self.clock.add("preprocess", self._timer() - t1)
        return Prepared(True, split, tensor, geometry)

    def process(self, image: Any, ts: float, prepared: Prepared | None = None) -> list[Track]:
        """Run one frame through every stage; ``ts`` is the frame's capture time and
        ``prepared`` what ``prepare`` made of it (done here when absent)."""
        return self.track(self.infer(image, ts, prepared))

    def infer(self, image: Any, ts: float, prepared: Prepared | None = None) -> Inferred:
        """The model's part of a frame: run it (a static frame skips it)."""
        loaded = self._loaded  # one reference per frame: a swap lands between frames
        if prepared is None:
            prepared = self.prepare(image, ts)
        if not prepared.infer:
            return Inferred(image, ts, loaded.ref, None)
        t0 = self._timer()
        split = loaded.split
        if split is not None and prepared.detector is split:
            outputs = split.infer(prepared.tensor)
            decode = partial(split.decode, outputs, prepared.geometry)
            decode_at = partial(_decode_at, split, outputs, prepared.geometry) if loaded.decodes_at else None
        else:  # no split, or prepared by the model just swapped out
            detections = loaded.detector.detect(image)
            decode, decode_at = partial(list, detections), None
        self.clock.add("inference", self._timer() - t0)
        self.inferences += 1
        return Inferred(image, ts, loaded.ref, decode, decode_at)

    def track(self, frame: Inferred) -> list[Track]:
        """The rest of a frame, in frame order: decode and NMS, tracker, analytics, snapshots."""
        t1 = self._timer()
        if frame.decode is not None:
            self._last_detections = frame.decode()
        # on a static scene the last detections still stand: tracks age, not vanish
        t2 = self._timer()
        tracks = self.tracker.update(self._last_detections, frame.ts)
        t3 = self._timer()
        self.analytics.model = frame.model
        snapshots_on = self.snapshots is not None and self.snapshots.config.enabled
        opened_before = set(self._my_incidents()) if snapshots_on else set()
        self.analytics.update(tracks, frame.ts, self._local_time())
        t4 = self._timer()
        fresh = set(self._my_incidents()) - opened_before if snapshots_on else set()
        if fresh and self.snapshots is not None:
            # raw detections too: a person not yet confirmed by the tracker, or just lost
            # by it, is in the frame all the same and must be blurred; and those the model
            # scores below its alert threshold (a person half hidden, far away) as well
            seen = self._last_detections
            if frame.decode_at is not None:
                seen = frame.decode_at(self.snapshots.config.blur_min_score)
            boxes = [(t.label, t.box) for t in tracks] + [(d.label, d.box) for d in seen]
            self.snapshots.save(frame.image, boxes, sorted(fresh)[0].split(":")[0])
        if frame.decode is not None:
            self.clock.add("decode", t2 - t1)
        self.clock.add("track", t3 - t2)
        self.clock.add("analytics", t4 - t3)
        self.clock.frame(time.monotonic())  # processed frames per wall second, whatever the clip's rate
        self.frames += 1
        return tracks

    def _my_incidents(self) -> list[str]:
        return [key for key in self.book.open_keys() if key.split(":")[1:2] == [self.name]]

    def swap_model(self, name: str) -> SwapResult:
        """Build ``name`` and switch to it between frames; on failure keep the old model."""
        if self._factory is None:
            return SwapResult(False, "this pipeline was built without a model catalogue")
        with self._swap_lock:
            old = self._loaded.ref
            try:
                new = self._factory(name)
            except Exception as exc:  # a bad model of any kind must not stop the camera
                self.swap_status = f"swap to {name} failed, kept {old.name}: {exc}"
                return SwapResult(False, self.swap_status, old)
            self._loaded = LoadedModel.of(new)
            ref = self._loaded.ref
            self.swap_status = f"swapped {old.name} {old.version} → {ref.name} {ref.version}"
            return SwapResult(True, self.swap_status, ref)

    def run(self, ctx: SourceContext, capture: Capture) -> None:
        """Process the newest frames until ``ctx.stop``; camera loss becomes a
        ``camera_fault`` incident and degraded health, and clears on recovery."""
        fault_key = f"camera_fault:{self.name}"
        last_health = float("-inf")
        tracking = TrackingThread(self)
        inference = FailureLog(log, f"inference on camera {self.name}")
        capture.start()
        try:
            while not ctx.stop.is_set():
                frame = capture.wait_frame(timeout=0.2)
                state = capture.state()
                now = ctx.clock()
                if not state.ok:
                    self.book.raise_(
                        fault_key,
                        "camera_fault",
                        "Moderate",
                        now,
                        Content(title=f"camera {self.name} lost", detail=state.reason),
                    )
                elif self.book.is_open(fault_key) and frame is not None:
                    self.book.clear(fault_key, now, detail=f"camera {self.name} recovered")
                if frame is not None:
                    inferred = self.guarded(inference, self.infer, frame.image, frame.ts, frame.prepared)
                    if inferred is not None:
                        tracking.submit(inferred)
                if now - last_health >= HEALTH_EVERY_S or state.ended:
                    self.report(ctx, capture, state.reason)
                    last_health = now
                if state.ended and frame is None:
                    tracking.close()  # the last frames' alerts are out before "finished"
                    ctx.health.set(self.name, "finished")
                    return
        finally:
            capture.stop()
            tracking.close()

    def guarded(self, failures: FailureLog, stage: Callable[..., _T], *args: Any) -> _T | None:
        """``stage(*args)``; an error is counted, reported in health and logged by the
        calling thread's ``failures``, and the frame is skipped. An alert the node could not
        take (AlertNotStored: its disk is full) is the node's fault, not this camera's."""
        try:
            result = stage(*args)
        except AlertNotStored:  # the node reports it as its outbox's; the book raises it again
            return None
        except Exception as exc:  # one bad frame or a model error must not end the loop
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            failures.failed(exc)
            return None
        failures.ok()
        return result

    def report(self, ctx: SourceContext, capture: Capture, camera_fault: str | None) -> None:
        problems = [p for p in (camera_fault, self.last_error) if p]
        ctx.health.set(self.name, f"fault: {'; '.join(problems)}" if problems else "ok")
        ctx.health.set("camera_fps", self.clock.fps())
        inference_ms = self.clock.median_ms("inference")
        if inference_ms is not None:
            ctx.health.set("inference_ms", inference_ms)
        ctx.health.set("dropped_frames", capture.dropped)
        ctx.health.set(f"{self.name}.stages_ms", self.clock.medians())
        ctx.health.set(f"{self.name}.model", self._loaded.ref.name)
        if self.gate is not None:
            ctx.health.set(f"{self.name}.motion_skipped", self.gate.skipped)
        if self.swap_status:
            ctx.health.set(f"{self.name}.swap", self.swap_status)
        self.last_error = None
