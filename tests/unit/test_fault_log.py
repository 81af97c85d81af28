"""Every fault and recovery the node publishes goes through the log too (edge/health.py
FaultLog): sensor faults from the sensor health rules, degraded parts of the status, and
the JSON lines' fields for log shippers."""

from __future__ import annotations

import io
import json
import logging

import pytest

from s4edge.cloud_sync.logfmt import json_handler
from s4edge.edge.alerts import AlertDraft, IncidentBook
from s4edge.edge.health import FaultLog, Health
from s4edge.edge.sensing.health import HealthPolicy, SensorHealth


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "s4edge.edge.health.faults"]


def test_a_sensor_fault_and_its_recovery_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    faults = FaultLog()
    book = IncidentBook(faults.alert, update_interval_s=0)  # the node logs what it has stored
    sensor = SensorHealth("mq7-boiler", book, HealthPolicy(fault_after=2))
    sensor.failed(0.0, "I2C NACK at 0x48")
    assert logged(caplog) == [], "one failed read is retried, not yet a fault"
    sensor.failed(1.0, "I2C NACK at 0x48")
    sensor.failed(2.0, "I2C NACK at 0x48")  # the same fault: nothing new to say
    sensor.failed(3.0, "I2C bus timeout")  # another reason: said
    sensor.succeeded(4.0, raw=1.23)
    assert logged(caplog) == [
        ("WARNING", "sensor_fault: sensor mq7-boiler fault — 2 or more failed reads in a row: I2C NACK at 0x48"),
        (
            "WARNING",
            "sensor_fault continues: sensor mq7-boiler fault — 2 or more failed reads in a row: I2C bus timeout",
        ),
        ("INFO", "sensor_fault over: sensor mq7-boiler fault — mq7-boiler reads normally again"),
    ]


def test_a_sensor_stuck_for_a_day_says_so_once_not_every_read() -> None:
    """Its detail held the seconds it had been stuck: each read changed it, and the book sent
    an update every 5 s (17,000 a day, each a row in the aggregator's store)."""
    drafts: list[AlertDraft] = []
    book = IncidentBook(drafts.append, update_interval_s=5.0, max_duration_s=None)
    sensor = SensorHealth("mq7-boiler", book, HealthPolicy(stuck_after_s=600))
    for second in range(0, 86400, 5):
        sensor.succeeded(float(second), raw=1.23)
    assert [d.state for d in drafts] == ["new"]


def test_other_alerts_are_not_fault_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    FaultLog().alert(AlertDraft(kind="gas", severity="Severe", state="new", incident="inc-gas-01", title="methane"))
    assert logged(caplog) == []


def test_degraded_parts_are_logged_when_they_fail_and_when_they_are_well_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    health, faults = Health(), FaultLog()
    health.set("cam0", "fault: cam0: camera stopped delivering frames")
    health.set("sensors.mq7-boiler", "error: I2C NACK")  # retrying, not degraded
    for _ in range(2):  # a tick that sees the same fault says nothing new
        faults.parts(health.degraded_states(), health.states())
    health.set("cam0", "ok")
    health.set_outbox(OSError("database or disk is full"))
    faults.parts(health.degraded_states(), health.states())
    assert logged(caplog) == [
        ("WARNING", "degraded: cam0 — fault: cam0: camera stopped delivering frames"),
        ("WARNING", "degraded: outbox — fault: database or disk is full"),
        ("INFO", "recovered: cam0 — now ok"),
    ]


def test_json_lines_carry_the_event_and_the_part() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.fault-log.json")
    logger.addHandler(json_handler(stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    faults = FaultLog(logger)
    draft = AlertDraft(kind="camera_fault", severity="Moderate", state="new", incident="inc-cam-01",
                       title="camera cam0 lost", detail="cam0: no such video file to replay")  # fmt: skip
    faults.alert(draft)
    faults.alert(AlertDraft(**{**draft.__dict__, "state": "end", "detail": "camera cam0 recovered"}))
    faults.parts({"cam0": "fault: gone"}, {})
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["level"], e["event"]) for e in entries] == [
        ("WARNING", "fault"),
        ("INFO", "recovered"),
        ("WARNING", "fault"),
    ]
    assert entries[0]["fault_kind"] == "camera_fault" and entries[0]["incident"] == "inc-cam-01"
    assert "camera cam0 lost" in entries[0]["msg"] and entries[2]["part"] == "cam0"
