"""The node on a disk with no byte left (a real tmpfs), as a field technician found it: what
it cannot store is counted or kept, said in one line, and blamed on the disk, not on the
camera or sensor whose alert it was."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from s4edge.cloud_sync.messages import Alert, Measurement, ModelRef, decode
from s4edge.cloud_sync.outbox import Outbox, read_backlog
from s4edge.drivers.sim.frames import moving_square
from s4edge.edge.alerts import AlertNotStored
from s4edge.edge.app import Node
from s4edge.edge.config import parse_config
from s4edge.edge.sources import SourceContext
from s4edge.edge.vision.analytics import SceneAnalytics, SceneConfig
from s4edge.edge.vision.pipeline import TrackingThread, VisionPipeline
from s4edge.edge.vision.tracker import Tracker
from s4edge.edge.vision.types import Detection
from s4edge.testing import free_port
from s4edge.testing.disk import SmallDisk

SIM = Path(__file__).resolve().parents[2] / "firmware_configs" / "sim-node.yaml"
PERSON = Detection(0, "person", 0.9, (0.45, 0.5, 0.55, 0.95))
SCENE = {
    "zones": [{"name": "centre", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 1.0], [0.3, 1.0]]}],
    "rules": [{"type": "intrusion", "name": "in", "zone": "centre"}],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Person:
    """A detector that sees one person in the zone on every frame."""

    model_ref = ModelRef(name="scripted", version="1", sha256="1" * 64)

    def detect(self, frame_bgr: Any) -> list[Detection]:
        return [PERSON]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def node(disk: SmallDisk, clock: Clock, tmp_path: Path) -> Any:
    data = yaml.safe_load(SIM.read_text())
    data["outbox"]["path"] = str(disk.mountpoint / "outbox.db")
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: nothing is sent
    data["sources"] = []  # the tests drive the book, the telemetry and the tick's duties
    running = Node(parse_config(data), base_dir=tmp_path, clock=clock)
    yield running
    running.close(flush_s=0)


def no_room(disk: SmallDisk, outbox: Outbox) -> None:
    """The disk without a byte left, and nothing the outbox can give up for a write: its
    reserve already given up, its WAL cut back, and the room those freed taken too."""
    disk.fill()
    for _ in range(10_000):
        try:
            outbox.put("filler", b"x" * 4096, kind="cmd_result")
        except sqlite3.OperationalError:
            disk.fill()  # the room the failed write freed (reserve, WAL)
            return
    raise AssertionError("the disk never filled")


def alerts(node: Node) -> list[Alert]:
    return [decode(r.payload) for r in node.outbox.pending(limit=10_000) if r.topic.endswith("/alert")]


def test_telemetry_a_full_disk_refuses_is_counted_as_dropped_and_said_in_one_line(
    node: Node, disk: SmallDisk, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    no_room(disk, node.outbox)
    readings = [Measurement(quantity="methane", value=12.0, unit="%LEL")]
    with caplog.at_level(logging.INFO, logger="s4edge"):
        for _ in range(5):
            node._telemetry("concourse", readings)
            clock.now += node.config.telemetry.interval_s
    said = [r for r in caplog.records if "storing telemetry" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in said] == [("WARNING", None)], "one line, no traceback"
    assert "database or disk is full" in said[0].getMessage()
    assert str(node.outbox.path) in said[0].getMessage(), "it names the disk to free"
    assert node.heartbeat().telemetry_dropped == 5

    disk.free()
    node._telemetry("concourse", readings)  # stored, and the drops with it
    assert read_backlog(node.outbox.path).telemetry_dropped == 5  # `s4edge agent status`


def test_an_alert_a_full_disk_refuses_is_kept_blamed_on_the_disk_and_stored_once_there_is_room(
    node: Node, disk: SmallDisk, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    no_room(disk, node.outbox)
    with caplog.at_level(logging.INFO, logger="s4edge"):
        for i in range(3):
            node.book.raise_(f"gas:{i}", "gas", "Severe", clock.now)  # raised into the source, before
        node.book.clear("gas:0", clock.now)
    assert len(node.unstored) == 4
    assert not [r for r in caplog.records if r.exc_info], "a full disk is no bug: no traceback"
    node._announce_faults()  # the tick's report
    assert node.health.degraded() == ["disk_full"]
    assert node.health.states()["alerts_unstored"].startswith("4 kept in memory")

    disk.free()
    node.unstored.retry()  # the tick's, every second
    stored = alerts(node)
    incidents = [stored[i].incident for i in range(3)]
    assert [(a.incident, a.state) for a in stored] == [(i, "new") for i in incidents] + [(incidents[0], "end")]
    assert [a.seq for a in stored] == sorted({a.seq for a in stored})
    assert len(node.unstored) == 0
    node._announce_faults()
    assert "alerts_unstored" not in node.health.states()


def test_a_camera_whose_alert_the_full_disk_refuses_reports_no_fault_of_its_own(
    node: Node, disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """The field report: ``tracking on camera cam0 failed`` with a traceback, and health
    ``cam0 — fault: OperationalError: database or disk is full``."""
    scene = SceneAnalytics("cam0", SceneConfig.model_validate(SCENE), node.book)
    pipe = VisionPipeline("cam0", Person(), Tracker(), scene, node.book)
    no_room(disk, node.outbox)
    tracking = TrackingThread(pipe)
    with caplog.at_level(logging.INFO, logger="s4edge"):
        for i in range(6):  # the tracker confirms the person, and the intrusion is raised
            tracking.submit(pipe.infer(moving_square(i), i / 15))
        tracking.close()
    assert node.book.open_keys(), "the intrusion is open"
    assert (pipe.errors, pipe.last_error) == (0, None)
    assert not [r for r in caplog.records if "tracking on camera" in r.getMessage()]
    assert len(node.unstored) == 1 and alerts(node) == []


def test_past_what_memory_keeps_a_source_is_refused_but_not_blamed(
    node: Node, disk: SmallDisk, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    node.unstored.limit = 1
    no_room(disk, node.outbox)
    node.book.raise_("gas:kept", "gas", "Severe", clock.now)
    with pytest.raises(AlertNotStored, match="the most alerts it keeps"):
        node.book.raise_("gas:refused", "gas", "Severe", clock.now)
    assert not node.book.is_open("gas:refused"), "the book raises it again at the next report"

    # a camera: its tracking skips the frame, and counts no error
    scene = SceneAnalytics("cam0", SceneConfig.model_validate(SCENE), node.book)
    pipe = VisionPipeline("cam0", Person(), Tracker(), scene, node.book)
    tracking = TrackingThread(pipe)
    for i in range(6):
        tracking.submit(pipe.infer(moving_square(i), i / 15))
    tracking.close()
    assert (pipe.errors, pipe.last_error) == (0, None)

    # a source whose loop it ended: restarted, and neither failed in health nor logged as failing
    class Refused:
        name = "refused"
        runs = 0

        def run(self, ctx: SourceContext) -> None:
            self.runs += 1
            if self.runs == 1:
                node.book.raise_("gas:source", "gas", "Severe", clock.now)

    source = Refused()
    context = SourceContext(
        emit=node._emit, telemetry=lambda r: None, health=node.health, stop=threading.Event(), clock=clock
    )
    with caplog.at_level(logging.INFO, logger="s4edge"):
        node._supervise(source, context, threading.Event())  # a first run refused, a second that ends
    assert source.runs == 2
    assert node.health.states()["refused"] == "running"
    assert not [r for r in caplog.records if "source refused" in r.getMessage()]


def test_a_command_on_a_full_disk_is_one_line_naming_the_disk(
    node: Node, disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    # its result could not be stored: a traceback under "command ping (…) failed"
    from datetime import UTC, datetime, timedelta

    from s4edge.cloud_sync.messages import Command
    from s4edge.testing import eventually

    no_room(disk, node.outbox)
    expires = datetime.now(UTC) + timedelta(seconds=60)
    ping = Command(
        node_id=node.config.node_id, site=node.config.site, seq=1, name="ping", issuer="aggregator", expires=expires
    )
    loop = threading.Thread(target=node._command_loop, daemon=True)
    with caplog.at_level(logging.WARNING, logger="s4edge.edge.app"):
        loop.start()
        node._commands.put(ping)
        said = eventually(lambda: [r for r in caplog.records if f"command ping ({ping.id})" in r.getMessage()])
        node._stop.set()
        loop.join(5)
    assert [(r.levelname, r.exc_info) for r in said] == [("WARNING", None)], "one line, no traceback"
    assert str(node.outbox.path) in said[0].getMessage() and "full disk" in said[0].getMessage()
