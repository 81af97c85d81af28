"""The capture thread: reads a FrameSource as fast as it delivers and keeps only the
newest frame, so a slow detector never backs the camera up (and never sees a stale
frame). A source that fails or stalls is closed and reopened with backoff; its state
is for the pipeline to turn into a ``camera_fault`` alert and degraded health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The uplink's backoff: doubling delays, reset by the first good frame, with jitter that
# keeps cameras sharing an RTSP server from reconnecting in lock-step. edge.vision.source
# imports it from here.
from s4edge.cloud_sync.logfmt import FailureLog
from s4edge.cloud_sync.uplink import Backoff as Backoff
from s4edge.drivers.frames import Frame, FrameSource, FrameSourceError

log = logging.getLogger(__name__)

Prepare = Callable[[Frame, float, Any], Any]
"""``prepare(image, ts, replaces)``: per-frame work done in the capture thread;
``replaces`` is what the unconsumed frame being dropped had prepared, or None."""


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    seq: int
    image: Frame
    ts: float
    prepared: Any = None  # what ``Capture.prepare`` made of the frame, if anything


@dataclass(frozen=True, slots=True)
class CameraState:
    ok: bool
    reason: str | None = None
    ended: bool = False


class Capture:
    """Runs ``source`` in a daemon thread. ``finite`` sources (a replay without loop)
    end at their last frame instead of being reopened. ``lossless`` makes the thread
    wait for each frame to be taken (a replay processed as fast as possible, where
    every frame counts); a live camera never waits. ``prepare`` runs on every frame in
    the capture thread (the pipeline's motion check and preprocessing), so that it
    overlaps with inference on the frame before."""

    def __init__(
        self,
        source: FrameSource,
        *,
        stall_after_s: float = 5.0,
        backoff: Backoff | None = None,
        finite: bool = False,
        lossless: bool = False,
        prepare: Prepare | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.stall_after_s = stall_after_s
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.finite = finite
        self.lossless = lossless
        self.prepare = prepare
        self.prepare_errors = 0
        self._clock = clock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: CapturedFrame | None = None
        self._consumed_seq = 0
        self._seq = 0
        self._fault: str | None = None
        self._ended = False
        self._reading_since: float | None = None
        self._unblocking = threading.Event()  # a closer thread is releasing a stalled read
        self._failures = FailureLog(log, f"capture from {source.name}")
        self.dropped = 0
        self.reopens = 0

    @property
    def captured(self) -> int:
        return self._seq

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"capture-{self.source.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is None:
            self.source.close()
            return
        # The capture thread closes its own source; closing it from here while it reads
        # can hang OpenCV, so only a read still blocked after ``timeout`` (a stalled
        # camera) is unblocked by closing under it.
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.source.close()
            self._thread.join(timeout)

    def _set_fault(self, reason: str | None) -> None:
        with self._cond:
            self._fault = reason
            self._cond.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._cycle():
                    return
            except Exception as exc:  # cv2.error from a GStreamer pipeline, driver errors: the thread must survive them
                self._set_fault(f"{self.source.name}: {type(exc).__name__}: {exc}")
                self._failures.failed(exc)
            if not self._stop.is_set():
                self.reopens += 1
                self._stop.wait(self.backoff.next())

    def _cycle(self) -> bool:
        """Open the source, read until it fails, close it; True when a finite source ended."""
        self._reading_since = self._clock()  # an open that hangs (an RTSP camera gone at boot) is a stall too
        try:
            self.source.open()
        except FrameSourceError as exc:
            self._set_fault(str(exc))
            return False
        finally:
            self._reading_since = None
            self._unblocking.clear()
        self._read_until_failure()
        finished = self.finite and self._fault is None
        try:
            self.source.close()
        except Exception as exc:  # a failed release must neither end the thread nor pass unseen
            self._set_fault(f"{self.source.name}: close failed ({type(exc).__name__}: {exc})")
        if finished:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
        return finished

    def _read_until_failure(self) -> None:
        while not self._stop.is_set():
            self._reading_since = self._clock()
            try:
                ok, image, ts = self.source.read()
            except Exception as exc:  # cv2.error, driver errors alike: the capture thread must survive them
                self._set_fault(f"{self.source.name}: read failed ({exc})")
                return
            finally:
                self._reading_since = None
                self._unblocking.clear()
            if not ok or image is None:
                if not (self.finite and self._fault is None and self._seq > 0):
                    self._set_fault(f"{self.source.name}: camera stopped delivering frames")
                return
            if image.size == 0:  # a read that succeeds with nothing in it: no stage can use it
                self._set_fault(f"{self.source.name}: camera delivered an empty frame")
                return
            prepared = self._prepare(image, ts)
            with self._cond:
                if self.lossless:
                    self._cond.wait_for(lambda: self._stop.is_set() or self._seq <= self._consumed_seq)
                self._seq += 1
                if self._latest is not None and self._latest.seq > self._consumed_seq:
                    self.dropped += 1
                self._latest = CapturedFrame(self._seq, image, ts, prepared)
                self._fault = None
                self._cond.notify_all()
            self.backoff.reset()
            self._failures.ok()

    def _prepare(self, image: Frame, ts: float) -> Any:
        """Run the consumer's per-frame preparation here, in parallel with its work on
        the previous frame. It sees what the frame about to be dropped had prepared, so
        a need (such as "this one must be inferred") is never lost with a drop."""
        if self.prepare is None:
            return None
        with self._cond:
            waiting = self._latest is not None and self._latest.seq > self._consumed_seq
            pending = self._latest if waiting and not self.lossless else None  # lossless: nothing is dropped
        try:
            return self.prepare(image, ts, pending.prepared if pending is not None else None)
        except Exception:  # the consumer prepares the frame itself and reports the error
            self.prepare_errors += 1
            return None

    def state(self) -> CameraState:
        """The camera as the pipeline should report it. A read blocked for longer than
        ``stall_after_s`` is a stall: the source is closed, which unblocks the read
        (as ``VideoCapture.release`` does) and makes the thread reopen it. The close runs
        in a thread of its own, once per stall: a backend may block in it too, and the
        pipeline that asks must go on reporting the fault."""
        since = self._reading_since
        if since is not None and self._clock() - since > self.stall_after_s and not self._unblocking.is_set():
            self._set_fault(f"{self.source.name}: no frame for {self.stall_after_s:g} s (stalled)")
            self._unblocking.set()
            threading.Thread(target=self._close_stalled, name=f"unstall-{self.source.name}", daemon=True).start()
        with self._cond:
            drained = self._latest is None or self._latest.seq <= self._consumed_seq
            return CameraState(ok=self._fault is None, reason=self._fault, ended=self._ended and drained)

    def _close_stalled(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # reported, not raised: this thread has no caller
            self._set_fault(f"{self.source.name}: stalled, and close failed ({type(exc).__name__}: {exc})")

    def wait_frame(self, timeout: float) -> CapturedFrame | None:
        """The newest frame not yet handed out, waiting up to ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._stop.is_set()
                    or self._ended
                    or (self._latest is not None and self._latest.seq > self._consumed_seq)
                ),
                timeout,
            )
            latest = self._latest
            if latest is None or latest.seq <= self._consumed_seq:
                return None
            self._consumed_seq = latest.seq
            self._cond.notify_all()
            return latest
