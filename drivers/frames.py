"""Camera frame sources behind one small protocol, chosen by URL, as pyserial chooses a port.

``open_source(url)`` understands:

- ``0`` / ``1`` … — a V4L2 device index (OpenCV);
- ``rtsp://…``, ``http://…``, ``https://…`` — a network stream (OpenCV/FFmpeg);
- ``gst:<pipeline>`` — a GStreamer pipeline string ending in ``appsink`` (cv2.CAP_GSTREAMER);
- ``picamera2:`` or ``picamera2:<index>`` — the Raspberry Pi camera stack;
- ``replay:<path>`` — a video file or a folder of images, replayed at its own fps;
- any other string — a video file opened by OpenCV.

OpenCV and picamera2 are imported inside the adapters: a missing library breaks
only the source that needs it, never an import.

A V4L2 camera (a device index or ``/dev/video*``) is asked for raw YUYV frames, which
OpenCV turns into BGR with one colour conversion, instead of MJPG, which the node would
have to decode as a JPEG (about 0.5 ms of CPU per 640×480 frame); ``pixel_format="mjpg"``
asks for MJPG instead, for sizes the USB link cannot carry raw. Frames are read into
buffers that are reused once nothing refers to them any more (``BufferPool``), so a
running camera allocates no new frame memory.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from s4edge.shown import shown_url

Frame = npt.NDArray[np.uint8]
"""A BGR image, height × width × 3."""

PixelFormat = Literal["yuyv", "mjpg", "any"]
"""What a V4L2 camera is asked for: raw YUYV (no JPEG decoding on the node), MJPG, or
whatever it gives by default."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_DEVICE = re.compile(r"/dev/video\d+|/dev/v4l/by-(id|path)/[^/]+")  # V4L2 nodes and udev's stable links


class FrameSourceError(RuntimeError):
    """A source that cannot be opened or read; the message says what to check."""


class FrameSource(Protocol):
    """``read`` returns ``(ok, frame, ts)``: ``ts`` is monotonic seconds of capture.
    ``ok`` False means the source is gone or at its end; the caller may reopen it."""

    name: str

    def open(self) -> None: ...

    def read(self) -> tuple[bool, Frame | None, float]: ...

    def close(self) -> None: ...


def _refcounts(buffers: list[Any]) -> list[int]:
    return [sys.getrefcount(buffer) for buffer in buffers]


_IDLE_REFS = _refcounts([np.empty(0)])[0]  # a buffer that only the pool's list holds


class BufferPool:
    """Arrays that are handed out again once nothing refers to them any more.

    A frame or a model input may still be in use in another thread (inferred, tracked,
    saved as a snapshot) long after it was handed out, so a buffer is reused only when
    its reference count says that the pool alone holds it: any holder, a numpy view of
    it included, keeps it from being overwritten. Up to ``keep`` buffers are kept; when
    none is free, a new array is made, as if there were no pool.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.made = 0  # arrays allocated, pooled or not: stays flat while buffers are reused
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
        """A free buffer of this shape and dtype (contents undefined), or a new one."""
        with self._lock:
            counts = _refcounts(self._buffers)
            for index, count in enumerate(counts):
                buffer = self._buffers[index]
                if count == _IDLE_REFS and buffer.shape == shape and buffer.dtype == dtype:
                    return buffer
            fresh = np.empty(shape, dtype)
            self.made += 1
            if len(self._buffers) >= self.keep:
                idle = [i for i, count in enumerate(counts) if count == _IDLE_REFS]
                if not idle:
                    return fresh  # everything is in use: this one is not kept
                del self._buffers[idle[0]]  # a buffer of another shape nobody uses
            self._buffers.append(fresh)
            return fresh


def open_video(target: str, stream: bool = False) -> Any:
    """``cv2.VideoCapture`` of a file or stream URL through FFmpeg, with one decoding thread.
    Its default frame threads decode the same pixels for more CPU and a frame of latency each:
    0.73 against 0.54 CPU ms a 640×480 MJPG frame of the shared clip, and the pipeline already
    runs capture beside inference. A file FFmpeg cannot open goes to whichever backend opens it,
    as before; a stream is FFmpeg's alone."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if cap.isOpened() or stream:
        return cap
    cap.release()
    return cv2.VideoCapture(target)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv is a dependency
        raise FrameSourceError(f"OpenCV is not installed ({exc}); pip install opencv-python-headless") from None
    return cv2


def _fourcc(code: str) -> int:
    return int(_cv2().VideoWriter_fourcc(*code))


def _fourcc_name(value: float) -> str:
    number = int(value)
    return "".join(chr((number >> shift) & 0xFF) for shift in (0, 8, 16, 24)).strip("\x00 ")


class _PooledRead:
    """``cv2.VideoCapture.read`` into reused frame buffers (``BufferPool``). Six covers the
    frames a vision pipeline holds at once: the one being read, the newest waiting, the
    one in inference, and one or two in tracking."""

    def __init__(self) -> None:
        self.frames = BufferPool(keep=6)
        self._shape: tuple[int, ...] | None = None

    def read(self, cap: Any) -> tuple[bool, Any]:
        if self._shape is None:
            ok, frame = cap.read()
        else:
            ok, frame = cap.read(self.frames.take(self._shape))
        if ok and frame is not None:
            self._shape = frame.shape  # a camera that changes size gets buffers of the new size
        return bool(ok), frame


class OpenCVSource:
    """A V4L2 device index, a stream URL or a video file, through ``cv2.VideoCapture``.

    ``v4l2``: the target is a V4L2 camera, asked for ``pixel_format`` before its size
    (the driver picks the sizes and rates each format offers). OpenCV converts YUYV to
    BGR itself (``CAP_PROP_CONVERT_RGB``, kept on); a backend that hands over the raw
    two-channel YUYV all the same is converted here.
    """

    def __init__(
        self,
        target: int | str,
        *,
        api: str | None = None,
        size: tuple[int, int] | None = None,
        v4l2: bool = False,
        pixel_format: PixelFormat = "yuyv",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = shown_url(str(target))  # the name goes into faults, alerts and health: no camera password
        self._target = target
        self._api = api
        self._size = size
        self._v4l2 = v4l2
        self.pixel_format = pixel_format
        self.delivered_format: str | None = None  # what the camera agreed to, as its FOURCC
        self._clock = clock
        self._cap: Any = None
        self._reader = _PooledRead()

    def open(self) -> None:
        cv2 = _cv2()
        self.close()
        if self._api not in (None, "CAP_FFMPEG") or self._v4l2 or not isinstance(self._target, str):
            cap = cv2.VideoCapture(self._target, getattr(cv2, self._api) if self._api else cv2.CAP_ANY)
        else:  # a stream URL or a file
            cap = open_video(self._target, stream=self._api == "CAP_FFMPEG")
        if not cap.isOpened():
            cap.release()
            raise FrameSourceError(f"cannot open camera {self.name!r}: check the device, URL or file path")
        if self._v4l2 and self.pixel_format != "any":
            cap.set(cv2.CAP_PROP_FOURCC, _fourcc(self.pixel_format.upper()))
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 1)
        if self._size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        if self._v4l2:
            self.delivered_format = _fourcc_name(cap.get(cv2.CAP_PROP_FOURCC)) or None
        self._cap = cap

    def read(self) -> tuple[bool, Frame | None, float]:
        if self._cap is None:
            return False, None, self._clock()
        ok, frame = self._reader.read(self._cap)
        if ok and frame is not None and frame.ndim == 3 and frame.shape[2] == 2:
            frame = _cv2().cvtColor(frame, _cv2().COLOR_YUV2BGR_YUYV)  # raw YUYV despite CONVERT_RGB
        return ok, frame if ok else None, self._clock()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def fps(self) -> float:
        return float(self._cap.get(_cv2().CAP_PROP_FPS)) if self._cap is not None else 0.0


class GStreamerSource(OpenCVSource):
    """A GStreamer pipeline string, e.g. ``v4l2src ! videoconvert ! appsink``; needs an
    OpenCV built with GStreamer (the PyPI wheels are not)."""

    def __init__(self, pipeline: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(pipeline, api="CAP_GSTREAMER", clock=clock)
        self.name = f"gst:{shown_url(pipeline)[:40]}"  # hidden before cut: a cut could split the '@' off


class Picamera2Source:
    """The Raspberry Pi camera through picamera2 (libcamera), BGR frames."""

    def __init__(
        self, index: int = 0, *, size: tuple[int, int] = (640, 480), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = f"picamera2:{index}"
        self._index = index
        self._size = size
        self._clock = clock
        self._cam: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise FrameSourceError(f"picamera2 is not installed ({exc}); apt install python3-picamera2") from None
        self.close()
        try:
            cam = Picamera2(self._index)
            # picamera2 "RGB888" is B,G,R in memory: already OpenCV's order.
            cam.configure(cam.create_video_configuration(main={"size": self._size, "format": "RGB888"}))
            cam.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise FrameSourceError(f"cannot start camera {self._index}: {exc}") from None
        self._cam = cam

    def read(self) -> tuple[bool, Frame | None, float]:
        if self._cam is None:
            return False, None, self._clock()
        try:
            frame = self._cam.capture_array("main")
        except (RuntimeError, OSError):
            return False, None, self._clock()
        return True, np.ascontiguousarray(frame[:, :, :3]), self._clock()

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None


class ReplaySource:
    """A recorded video file or a folder of images, played back as a camera.

    ``ts`` follows the recording's own timeline (frame index / fps after ``open``), so
    that analytics see the clip's time whether it is replayed in real time or as fast
    as possible. With ``loop`` the clip restarts and time keeps going forward.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        fps: float | None = None,
        loop: bool = False,
        realtime: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = Path(path)
        self.name = f"replay:{self.path.name}"
        self._fps = fps
        self.loop = loop
        self.realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._cap: Any = None
        self._reader = _PooledRead()
        self._images: list[Path] = []
        self._next_image = 0
        self._index = 0
        self._t0 = 0.0
        self.fps = fps or 0.0

    def open(self) -> None:
        self.close()
        if self.path.is_dir():
            self._images = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise FrameSourceError(f"{self.path}: no {'/'.join(IMAGE_SUFFIXES)} images to replay")
            self.fps = self._fps or 1.0
        else:
            if not self.path.is_file():
                raise FrameSourceError(f"{self.path}: no such video file to replay")
            cv2 = _cv2()
            cap = open_video(str(self.path))
            if not cap.isOpened():
                cap.release()
                raise FrameSourceError(f"{self.path}: OpenCV cannot decode this video")
            self._cap = cap
            self.fps = self._fps or float(cap.get(cv2.CAP_PROP_FPS)) or 15.0
        self._next_image = 0
        self._index = 0
        self._t0 = self._clock()

    def _decode_next(self) -> Frame | None:
        if self._images:
            if self._next_image >= len(self._images):
                return None
            path = self._images[self._next_image]
            self._next_image += 1
            frame: Frame | None = _cv2().imread(str(path), _cv2().IMREAD_COLOR)
            if frame is None:
                raise FrameSourceError(f"{path}: not a readable image")
            return frame
        if self._cap is None:
            return None
        ok, frame = self._reader.read(self._cap)
        return frame if ok else None

    def _rewind(self) -> None:
        if self._images:
            self._next_image = 0
        elif self._cap is not None:
            self._cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)

    def read(self) -> tuple[bool, Frame | None, float]:
        if self._cap is None and not self._images:
            return False, None, self._clock()
        frame = self._decode_next()
        if frame is None and self.loop and self._index > 0:
            self._rewind()
            frame = self._decode_next()
        if frame is None:
            return False, None, self._clock()
        ts = self._t0 + self._index / self.fps
        self._index += 1
        if self.realtime:
            ahead = ts - self._clock()
            if ahead > 0:
                self._sleep(ahead)
        return True, frame, ts

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._images = []


def open_source(
    url: str | int,
    *,
    fps: float | None = None,
    loop: bool = False,
    realtime: bool = True,
    size: tuple[int, int] | None = None,
    pixel_format: PixelFormat = "yuyv",
    clock: Callable[[], float] = time.monotonic,
) -> FrameSource:
    """Build (not open) the source a camera URL names; see the module doc for the forms.
    ``pixel_format`` is what a V4L2 camera is asked for."""
    if isinstance(url, int) or (isinstance(url, str) and url.isdigit()):
        return OpenCVSource(int(url), size=size, v4l2=True, pixel_format=pixel_format, clock=clock)
    if url.startswith("replay:"):
        return ReplaySource(url.removeprefix("replay:"), fps=fps, loop=loop, realtime=realtime, clock=clock)
    if url.startswith("gst:"):
        return GStreamerSource(url.removeprefix("gst:"), clock=clock)
    if url.startswith("picamera2:") or url == "picamera2":
        index = url.partition(":")[2]
        return Picamera2Source(int(index or 0), size=size or (640, 480), clock=clock)
    if url.startswith(STREAM_SCHEMES):
        return OpenCVSource(url, api="CAP_FFMPEG", clock=clock)
    if _DEVICE.fullmatch(os.path.normpath(url)):
        return OpenCVSource(url, size=size, v4l2=True, pixel_format=pixel_format, clock=clock)
    return OpenCVSource(url, clock=clock)


def named_file(url: str) -> tuple[str, str] | None:
    """``(prefix, path)`` when ``url`` names a file, ``replay:<path>`` or a bare video file; None for
    a device (index or /dev/video*), a stream, a ``gst:`` pipeline or the Pi camera."""
    if url.startswith("replay:"):
        return "replay:", url.removeprefix("replay:")
    if url.isdigit() or url.startswith(("gst:", "picamera2:", *STREAM_SCHEMES)) or url == "picamera2":
        return None
    return None if _DEVICE.fullmatch(os.path.normpath(url)) else ("", url)
