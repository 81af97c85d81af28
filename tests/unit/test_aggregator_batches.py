"""Ingest's validate → de-dup → commit → announce path, fed directly (no broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_sync.aggregator.broker import BrokerConfig, BrokerError
from cloud_sync.aggregator.events import EventBus
from cloud_sync.aggregator.ingest import Ingest, Received
from cloud_sync.aggregator.metrics import IngestMetrics, RejectionLog
from cloud_sync.aggregator.store import AlertQuery, Store, make_engine
from cloud_sync.messages import Alert, Heartbeat, Location, Status, encode, topic_for

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'agg.db'}"))
    store.create_all()
    return Ingest(BrokerConfig("mqtt://127.0.0.1:1"), store, IngestMetrics(store.count_online), client_id="t")


def received(topic: str | None, payload: bytes) -> Received:
    return Received(topic, payload, 1, 1, 0, T0, time.monotonic())


def alert(seq: int) -> Alert:
    return Alert(
        node_id="n1", site="s1", seq=seq, kind="smoke", severity="Extreme", state="new",
        incident="incident-0001", location=Location(lat=1.0, lon=2.0),
    )  # fmt: skip


def metric(ingest: Ingest, name: str, **labels: str) -> float:
    return ingest.metrics.registry.get_sample_value(name, labels) or 0.0


def test_bad_input_is_counted_by_reason_and_good_input_still_stored(ingest: Ingest) -> None:
    good = alert(1)
    with_unknown = json.loads(encode(alert(2)))
    with_unknown["image"] = "x"
    wrong_schema = json.loads(encode(alert(3)))
    wrong_schema["schema"] = "s4edge/0"
    ingest.process(
        [
            received(topic_for(good), encode(good)),
            received(topic_for(good), b"{not json"),
            received(topic_for(good), json.dumps(with_unknown).encode()),
            received(topic_for(good), json.dumps(wrong_schema).encode()),
            received(topic_for(good), b" " * 20000),
            received("s4edge/v1/s1/other-node/alert", encode(alert(4))),
            received(None, encode(alert(5))),
        ]
    )
    assert ingest.store.count_alerts() == 1
    for reason in ("bad_json", "invalid", "bad_schema", "too_large", "topic_mismatch", "bad_topic"):
        assert metric(ingest, "s4edge_messages_rejected_total", reason=reason) == 1, reason
    assert metric(ingest, "s4edge_messages_stored_total", type="alert") == 1


def test_duplicates_are_stored_once_and_announced_once(ingest: Ingest) -> None:
    told: list[str] = []
    ingest.on_alert_stored.append(lambda a: told.append(a.id))
    first, second = alert(1), alert(2)
    ingest.process([received(topic_for(first), encode(first))] * 2)
    ingest.process([received(topic_for(first), encode(first)), received(topic_for(second), encode(second))])
    assert told == [first.id, second.id]
    assert ingest.store.count_alerts() == 2
    assert metric(ingest, "s4edge_messages_duplicate_total") == 2


def test_a_failing_hook_does_not_stop_the_others(ingest: Ingest, caplog: pytest.LogCaptureFixture) -> None:
    told: list[str] = []

    def broken(_alert: Alert) -> None:
        raise RuntimeError("subscriber bug")

    ingest.on_alert_stored += [broken, lambda a: told.append(a.id)]
    one = alert(1)
    ingest.process([received(topic_for(one), encode(one))])
    assert told == [one.id]
    assert "subscriber bug" in caplog.text


def test_node_status_and_heartbeat_are_recorded(ingest: Ingest) -> None:
    status = Status(node_id="n1", site="s1", seq=0, state="online")
    beat = Heartbeat(node_id="n1", site="s1", seq=1, uptime_s=12, cpu_percent=40)
    ingest.process([received(topic_for(status), encode(status)), received(topic_for(beat), encode(beat))])
    node = ingest.store.nodes(30, 3)[0]
    assert node["state"] == "online" and node["health"]["cpu_percent"] == 40
    assert metric(ingest, "s4edge_nodes_online") == 1


def test_new_alerts_reach_the_event_bus_subscribers(ingest: Ingest) -> None:
    async def watch() -> tuple[str, str]:
        subscription = ingest.events.subscribe() if ingest.events else None
        assert subscription is not None
        one = alert(1)
        await asyncio.to_thread(ingest.process, [received(topic_for(one), encode(one))])
        item = await asyncio.wait_for(subscription.queue.get(), 5)
        assert item is not None
        return item

    ingest.events = EventBus()
    event, data = asyncio.run(watch())
    assert (event, json.loads(data)) == ("alert", ingest.store.alerts(AlertQuery())[0][0])


def test_rejections_are_logged_once_per_reason_per_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rejections = RejectionLog(window_s=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    logged = [rejections.note("bad_json", "t", "x") for _ in range(5)]
    logged.append(rejections.note("invalid", "t", "y"))
    now[0] = 61.0
    logged.append(rejections.note("bad_json", "t", "x"))
    assert logged == [True, False, False, False, False, True, True]
    assert "4 more like it" in caplog.records[-1].getMessage()


def test_an_unreachable_broker_is_a_clear_error(ingest: Ingest) -> None:
    with pytest.raises(BrokerError, match=r"could not connect to mqtt://127\.0\.0\.1:1"):
        ingest.start(timeout=2)
