"""A simulated camera that a test can unplug, replug and stall (behavioural
simulators). It behaves like a V4L2/RTSP camera seen through OpenCV: unplugged, it
refuses ``open`` and ``read`` returns ``(False, None, ts)``; stalled, ``read`` blocks
until the stall ends or the source is closed from another thread (as
``VideoCapture.release`` does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from s4edge.drivers.frames import Frame, FrameSourceError


def moving_square(index: int, size: tuple[int, int] = (64, 48)) -> Frame:
    """A grey frame with a bright square that moves one pixel per frame."""
    width, height = size
    frame = np.full((height, width, 3), 40, dtype=np.uint8)
    x = index % max(1, width - 8)
    frame[height // 2 - 4 : height // 2 + 4, x : x + 8] = 220
    return frame


class SimulatedCamera:
    """Frames from ``make_frame(index)``; faults switched on and off by the test."""

    def __init__(
        self,
        make_frame: Callable[[int], Frame] = moving_square,
        *,
        period_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "simcam",
    ) -> None:
        self.name = name
        self._make_frame = make_frame
        self._period_s = period_s
        self._clock = clock
        self._plugged = True
        self._opened = False
        self._unstalled = threading.Event()
        self._unstalled.set()
        self._closed = threading.Event()
        self.index = 0
        self.opens = 0
        self.failed_opens = 0

    # the test's side
    def unplug(self) -> None:
        self._plugged = False

    def replug(self) -> None:
        self._plugged = True

    def stall(self) -> None:
        self._unstalled.clear()

    def unstall(self) -> None:
        self._unstalled.set()

    # the FrameSource side
    def open(self) -> None:
        if not self._plugged:
            self.failed_opens += 1
            raise FrameSourceError(f"{self.name}: no such device (simulated unplug)")
        self._closed.clear()
        self._opened = True
        self.opens += 1

    def read(self) -> tuple[bool, Frame | None, float]:
        while not self._unstalled.wait(0.01):
            if self._closed.is_set():
                return False, None, self._clock()
        if not (self._opened and self._plugged):
            self._opened = False
            return False, None, self._clock()
        if self._period_s:
            self._closed.wait(self._period_s)
        frame = self._make_frame(self.index)
        self.index += 1
        return True, frame, self._clock()

    def close(self) -> None:
        self._opened = False
        self._closed.set()
