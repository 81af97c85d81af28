"""Frame sources by URL, replay timing, and the capture thread: newest frame only,
dropped-frame count, reopen with backoff, stall detection."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from s4edge.cloud_sync.uplink import Backoff
from s4edge.drivers.frames import (
    BufferPool,
    FrameSourceError,
    GStreamerSource,
    OpenCVSource,
    Picamera2Source,
    ReplaySource,
    open_source,
)
from s4edge.drivers.sim.frames import SimulatedCamera, moving_square
from s4edge.edge.vision.capture import Capture
from s4edge.testing import eventually as wait_until


def write_clip(path: Path, frames: int = 12, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(moving_square(i))
    writer.release()
    return path


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("0", OpenCVSource),
        (2, OpenCVSource),
        ("rtsp://10.0.0.5/stream1", OpenCVSource),
        ("http://cam.local/mjpg", OpenCVSource),
        ("gst:videotestsrc ! videoconvert ! appsink", GStreamerSource),
        ("picamera2:", Picamera2Source),
        ("replay:clips/a.avi", ReplaySource),
        ("/var/lib/clip.mp4", OpenCVSource),
    ],
)
def test_open_source_picks_the_adapter_by_url(url: str | int, kind: type) -> None:
    assert isinstance(open_source(url), kind)


def test_replay_of_a_file_follows_the_clip_timeline(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=10.0)
    source = ReplaySource(clip, realtime=False, clock=lambda: 100.0)
    source.open()
    stamps = []
    while True:
        ok, frame, ts = source.read()
        if not ok:
            break
        assert frame is not None and frame.shape == (48, 64, 3)
        stamps.append(ts)
    assert stamps == pytest.approx([100.0 + i / 10 for i in range(12)])


def test_realtime_replay_waits_for_each_frame_time(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=3, fps=10.0)
    slept: list[float] = []
    source = ReplaySource(clip, realtime=True, clock=lambda: 5.0, sleep=slept.append)
    source.open()
    for _ in range(3):
        source.read()
    assert slept == pytest.approx([0.1, 0.2])  # frame 0 is due at once


def test_replay_loops_and_time_keeps_going(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), moving_square(i * 5))
    source = ReplaySource(folder, fps=2.0, loop=True, realtime=False, clock=lambda: 0.0)
    source.open()
    reads = [source.read() for _ in range(7)]
    assert all(ok for ok, _, _ in reads)
    assert [ts for _, _, ts in reads] == pytest.approx([i / 2 for i in range(7)])
    assert np.array_equal(reads[3][1], reads[0][1])  # back at the first image


def test_missing_or_undecodable_sources_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match="no such video file"):
        ReplaySource(tmp_path / "nope.avi").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrameSourceError, match=r"no .* images"):
        ReplaySource(tmp_path / "empty").open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(FrameSourceError, match="cannot decode"):
        ReplaySource(junk).open()
    with pytest.raises(FrameSourceError, match="cannot open camera"):
        OpenCVSource(str(tmp_path / "absent.mp4")).open()


def test_picamera2_missing_is_a_clear_error_not_an_import_failure() -> None:
    pytest.importorskip("cv2")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(FrameSourceError, match="picamera2 is not installed"):
            Picamera2Source().open()
    else:  # pragma: no cover - on a Pi
        pytest.skip("picamera2 is installed here")


# --- frame buffers and raw camera formats --------------------------------------------


def test_a_buffer_is_reused_only_once_nothing_refers_to_it() -> None:
    pool = BufferPool(keep=2)
    first = pool.take((4, 4, 3))
    was_first = weakref.ref(first)
    second = pool.take((4, 4, 3))
    assert second is not first  # the first is still held
    view = first[:, :, 0]
    del first
    third = pool.take((4, 4, 3))
    assert third is not view.base and third is not second  # a view keeps its array from reuse
    del view
    assert pool.take((4, 4, 3)) is was_first()  # nothing refers to the first any more
    assert pool.made == 3


def test_the_pool_keeps_only_so_many_buffers_and_makes_room_for_a_new_size() -> None:
    pool = BufferPool(keep=2)
    held = [pool.take((2, 2)) for _ in range(4)]  # all in use: two are made beyond the pool
    assert len({id(b) for b in held}) == 4 and pool.made == 4
    del held
    big = pool.take((8, 8))  # a camera that changed size: an idle small buffer gives way
    del big
    assert pool.take((8, 8)).shape == (8, 8) and pool.made == 5


def test_a_replay_reads_into_reused_buffers(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=10.0)
    plain = cv2.VideoCapture(str(clip))
    source = ReplaySource(clip, realtime=False)
    source.open()
    made_before = None
    for index in range(12):
        ok, frame, _ = source.read()
        expected = plain.read()[1]
        assert ok and frame is not None and np.array_equal(frame, expected)
        if index == 3:
            made_before = source._reader.frames.made
        del frame  # consumed: its buffer may take the next frame
    assert source._reader.frames.made == made_before  # no new frame memory once running


class FakeVideoCapture:
    """cv2.VideoCapture as a V4L2 camera that honours FOURCC and, like some backends,
    hands over raw two-channel YUYV."""

    instances: ClassVar[list[FakeVideoCapture]] = []

    opens_through_ffmpeg: ClassVar[bool] = True

    def __init__(self, target: object, api: int = 0, params: list[int] | None = None) -> None:
        self.api, self.params = api, params
        self.props: dict[int, float] = {}
        self.sets: list[tuple[int, float]] = []
        FakeVideoCapture.instances.append(self)

    def isOpened(self) -> bool:
        return self.api != cv2.CAP_FFMPEG or FakeVideoCapture.opens_through_ffmpeg

    def set(self, prop: int, value: float) -> bool:
        self.sets.append((prop, value))
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self, image: np.ndarray | None = None) -> tuple[bool, np.ndarray]:
        b, g, r = 40, 120, 200  # BT.601 studio range, as V4L2 cameras send it
        y, u, v = (
            16 + 0.257 * r + 0.504 * g + 0.098 * b,
            128 - 0.148 * r - 0.291 * g + 0.439 * b,
            128 + 0.439 * r - 0.368 * g - 0.071 * b,
        )
        yuyv = np.empty((4, 6, 2), np.uint8)  # Y0 U Y1 V: luma per pixel, chroma shared by two
        yuyv[:, :, 0] = round(y)
        yuyv[:, 0::2, 1] = round(u)
        yuyv[:, 1::2, 1] = round(v)
        return True, yuyv

    def release(self) -> None:
        pass


@pytest.mark.parametrize(
    ("url", "pixel_format", "asked"),
    [("0", "yuyv", "YUYV"), ("/dev/video2", "yuyv", "YUYV"), ("1", "mjpg", "MJPG"), ("0", "any", None)],
)
def test_a_v4l2_camera_is_asked_for_raw_frames(
    monkeypatch: pytest.MonkeyPatch, url: str, pixel_format: str, asked: str | None
) -> None:
    FakeVideoCapture.instances.clear()
    monkeypatch.setattr(cv2, "VideoCapture", FakeVideoCapture)
    source = open_source(url, pixel_format=pixel_format, size=(640, 480))  # type: ignore[arg-type]
    source.open()
    cap = FakeVideoCapture.instances[-1]
    fourccs = [value for prop, value in cap.sets if prop == cv2.CAP_PROP_FOURCC]
    if asked is None:
        assert fourccs == []
    else:
        assert fourccs == [cv2.VideoWriter_fourcc(*asked)]
        props = [prop for prop, _ in cap.sets]
        assert props.index(cv2.CAP_PROP_FOURCC) < props.index(cv2.CAP_PROP_FRAME_WIDTH)  # format before size
        assert cap.props[cv2.CAP_PROP_CONVERT_RGB] == 1
        assert isinstance(source, OpenCVSource) and source.delivered_format == asked


@pytest.mark.parametrize("url", ["rtsp://10.0.0.5/stream1", "/var/lib/clip.mp4"])
def test_streams_and_files_are_not_asked_for_a_pixel_format(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    FakeVideoCapture.instances.clear()
    monkeypatch.setattr(cv2, "VideoCapture", FakeVideoCapture)
    open_source(url).open()
    assert [prop for prop, _ in FakeVideoCapture.instances[-1].sets if prop == cv2.CAP_PROP_FOURCC] == []


@pytest.mark.parametrize("ffmpeg", [True, False])
def test_streams_and_files_are_decoded_by_ffmpeg_on_one_thread_where_it_opens_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ffmpeg: bool
) -> None:
    """FFmpeg's frame threads cost CPU for the same pixels; a camera (V4L2) is not FFmpeg's."""
    monkeypatch.setattr(cv2, "VideoCapture", FakeVideoCapture)
    monkeypatch.setattr(FakeVideoCapture, "opens_through_ffmpeg", ffmpeg)
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"")
    for source in (open_source("/var/lib/clip.mp4"), ReplaySource(clip)):
        FakeVideoCapture.instances.clear()
        source.open()
        first, used = FakeVideoCapture.instances[0], FakeVideoCapture.instances[-1]
        assert (first.api, first.params) == (cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        assert (used is first) == ffmpeg  # else the backend OpenCV picks, as before
    FakeVideoCapture.instances.clear()
    stream = open_source("rtsp://10.0.0.5/stream1")
    if ffmpeg:
        stream.open()
    else:  # a stream is FFmpeg's alone: no other backend is tried
        with pytest.raises(FrameSourceError):
            stream.open()
    assert [(c.api, c.params) for c in FakeVideoCapture.instances] == [(cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])]
    FakeVideoCapture.instances.clear()
    open_source("/dev/video0").open()
    assert [(c.api, c.params) for c in FakeVideoCapture.instances] == [(cv2.CAP_ANY, None)]


def test_raw_yuyv_handed_over_anyway_becomes_bgr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "VideoCapture", FakeVideoCapture)
    source = open_source("0")
    source.open()
    ok, frame, _ = source.read()
    assert ok and frame is not None and frame.shape == (4, 6, 3)
    np.testing.assert_allclose(frame[0, 0], (40, 120, 200), atol=3)


# --- capture --------------------------------------------------------------------------


def test_capture_keeps_only_the_newest_frame_and_counts_the_dropped() -> None:
    camera = SimulatedCamera(period_s=0.002)
    capture = Capture(camera)
    capture.start()
    try:
        assert wait_until(lambda: capture.captured >= 20)
        frame = capture.wait_frame(timeout=1.0)
        assert frame is not None and frame.seq >= 20
        assert capture.dropped >= frame.seq - 2  # the consumer took one frame out of many
        newer = capture.wait_frame(timeout=1.0)
        assert newer is not None and newer.seq > frame.seq
    finally:
        capture.stop()


def test_a_lost_camera_is_reopened_with_backoff_and_recovers() -> None:
    camera = SimulatedCamera(period_s=0.002)
    capture = Capture(camera, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert capture.wait_frame(timeout=2.0) is not None
        camera.unplug()
        assert wait_until(lambda: not capture.state().ok)
        assert "no such device" in (capture.state().reason or "") or "stopped delivering" in (
            capture.state().reason or ""
        )
        assert wait_until(lambda: camera.failed_opens >= 3)  # it keeps trying
        camera.replug()
        assert wait_until(lambda: capture.state().ok)
        assert capture.wait_frame(timeout=2.0) is not None
        assert camera.opens >= 2
    finally:
        capture.stop()


class BrokenPipelineCamera(SimulatedCamera):
    """A camera whose backend raises its own error (as OpenCV's GStreamer backend raises
    ``cv2.error``), not a FrameSourceError, from ``open`` or ``close`` while ``broken``."""

    def __init__(self, *, open_fails: bool = False, close_fails: bool = False) -> None:
        super().__init__(period_s=0.002)
        self.open_fails, self.close_fails = open_fails, close_fails
        self.raised = 0

    def open(self) -> None:
        if self.open_fails:
            self.raised += 1
            raise cv2.error("gst_element_set_state failed (simulated)")
        super().open()

    def close(self) -> None:
        super().close()
        if self.close_fails:
            self.raised += 1
            raise RuntimeError("release failed (simulated)")


def test_an_open_that_raises_a_backend_error_is_a_fault_and_retried() -> None:
    camera = BrokenPipelineCamera(open_fails=True)
    capture = Capture(camera, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert wait_until(lambda: camera.raised >= 3)  # the thread survived and keeps trying
        state = capture.state()
        assert not state.ok and "gst_element_set_state" in (state.reason or "")
        camera.open_fails = False
        assert wait_until(lambda: capture.state().ok)
        assert capture.wait_frame(timeout=2.0) is not None
    finally:
        capture.stop()


def test_a_close_that_raises_is_a_fault_and_the_camera_is_reopened() -> None:
    camera = BrokenPipelineCamera(close_fails=True)
    capture = Capture(camera, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert capture.wait_frame(timeout=2.0) is not None
        camera.unplug()
        assert wait_until(lambda: camera.raised >= 1)
        assert wait_until(lambda: camera.failed_opens >= 2)  # the thread outlived the failed close
        camera.close_fails = False
        camera.replug()
        assert wait_until(lambda: capture.state().ok)
        assert capture.wait_frame(timeout=2.0) is not None
    finally:
        capture.stop()


def test_a_stalled_camera_is_a_fault_and_is_reopened() -> None:
    camera = SimulatedCamera(period_s=0.002)
    capture = Capture(camera, stall_after_s=0.1, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert capture.wait_frame(timeout=2.0) is not None
        camera.stall()
        assert wait_until(lambda: not capture.state().ok)
        assert "stalled" in (capture.state().reason or "")
        camera.unstall()
        assert wait_until(lambda: capture.state().ok)
        assert camera.opens >= 2
    finally:
        capture.stop()


def test_a_lossless_finite_replay_hands_over_every_frame_then_ends(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=12)
    capture = Capture(ReplaySource(clip, realtime=False), finite=True, lossless=True)
    capture.start()
    seqs = []
    try:
        while not capture.state().ended:
            frame = capture.wait_frame(timeout=1.0)
            if frame is not None:
                seqs.append(frame.seq)
                time.sleep(0.002)  # a slow consumer
    finally:
        capture.stop()
    assert seqs == list(range(1, 13))
    assert capture.dropped == 0


def test_capture_stop_unblocks_a_stalled_read() -> None:
    camera = SimulatedCamera()
    camera.stall()
    capture = Capture(camera)
    capture.start()
    stopped = threading.Event()
    threading.Thread(target=lambda: (capture.stop(), stopped.set()), daemon=True).start()
    assert stopped.wait(3.0)


def test_the_demo_clip_is_built_from_the_packaged_photos_with_a_still_stretch(tmp_path: Path) -> None:
    from s4edge.demo_clip import build, photos
    from s4edge.resources import packaged

    shipped = photos(packaged("demo_frames"))
    assert [p.name for p in shipped] == [f"fastestdet_{i}.jpg" for i in range(5)]
    out = tmp_path / "cache" / "clip.avi"
    frames = build(shipped[:2], out, (160, 120), 10.0, seconds_per_image=0.5, static_s=0.5)
    assert frames == 5 + 5 + 5
    source = ReplaySource(out, realtime=False, clock=lambda: 0.0)
    source.open()
    decoded = [source.read()[1] for _ in range(frames)]
    assert all(f is not None and f.shape == (120, 160, 3) for f in decoded)
    assert source.read()[0] is False
    still = decoded[10:15]  # after the second photo (index len // 2 == 1)
    assert all(np.abs(f.astype(int) - still[0].astype(int)).max() <= 2 for f in still)
    assert np.abs(decoded[0].astype(int) - decoded[4].astype(int)).mean() > 1  # the pan moves


class SlowToClose(SimulatedCamera):
    """A backend whose release blocks while a read hangs, until the test lets it go."""

    def __init__(self) -> None:
        super().__init__(period_s=0.002)
        self.release = threading.Event()
        self.closing = threading.Event()  # a close has begun and is blocked
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        self.closing.set()
        self.release.wait(10.0)
        self.closing.clear()
        super().close()


def test_a_stall_is_reported_at_once_even_when_closing_the_camera_blocks() -> None:
    camera = SlowToClose()
    capture = Capture(camera, stall_after_s=0.1, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert capture.wait_frame(timeout=2.0) is not None
        camera.stall()
        assert wait_until(lambda: not capture.state().ok)
        assert wait_until(camera.closing.is_set)
        for _ in range(20):  # the pipeline asks every frame: it must not wait on the close
            assert "stalled" in (capture.state().reason or "")
        assert camera.closing.is_set(), "the answers came while the close was still blocked"
        assert camera.closes == 1  # one close per stall, not one per question
        camera.release.set()
        camera.unstall()
        assert wait_until(lambda: capture.state().ok)
        assert camera.opens >= 2
    finally:
        camera.release.set()
        capture.stop()


def test_a_camera_delivering_empty_frames_is_a_fault_and_recovers() -> None:
    # ok=True with a 0x0 array passed the check, and every frame then failed in the motion
    # gate (ZeroDivisionError) with no camera_fault
    empty = [True]
    camera = SimulatedCamera(lambda i: np.zeros((0, 0, 3), np.uint8) if empty[0] else moving_square(i), period_s=0.002)
    capture = Capture(camera, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert wait_until(lambda: "empty frame" in (capture.state().reason or ""))
        empty[0] = False
        assert wait_until(lambda: capture.state().ok)
        assert capture.wait_frame(timeout=2.0) is not None
    finally:
        capture.stop()


class HangingOpen(SimulatedCamera):
    """An RTSP camera gone at boot: open() blocks until the stall's close lets it go."""

    def __init__(self) -> None:
        super().__init__(period_s=0.002)
        self.hang = threading.Event()
        self.hang.set()
        self.released = threading.Event()

    def open(self) -> None:
        if self.hang.is_set():
            self.released.wait(5.0)
            self.released.clear()
            raise FrameSourceError(f"{self.name}: cannot open")
        super().open()

    def close(self) -> None:
        self.released.set()
        super().close()


def test_an_open_that_hangs_is_a_stall_not_a_healthy_camera() -> None:
    camera = HangingOpen()
    capture = Capture(camera, stall_after_s=0.1, backoff=Backoff(0.01, 0.05))
    capture.start()
    try:
        assert wait_until(lambda: "stalled" in (capture.state().reason or ""))
        camera.hang.clear()
        assert wait_until(lambda: capture.state().ok)
        assert capture.wait_frame(timeout=2.0) is not None
    finally:
        camera.released.set()
        capture.stop()
