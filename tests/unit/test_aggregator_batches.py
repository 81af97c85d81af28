"""Ingest's validate → de-dup → commit → announce path, fed directly (no broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import OperationalError

from s4edge.cloud_sync.aggregator.alert_rows import AlertRows
from s4edge.cloud_sync.aggregator.broker import BrokerConfig, BrokerError
from s4edge.cloud_sync.aggregator.events import EventBus
from s4edge.cloud_sync.aggregator.ingest import Ingest, Received
from s4edge.cloud_sync.aggregator.metrics import IngestMetrics, RejectionLog
from s4edge.cloud_sync.aggregator.store import AlertQuery, Store, make_engine
from s4edge.cloud_sync.aggregator.store import alerts as alerts_table
from s4edge.cloud_sync.aggregator.store import forward_jobs as jobs_table
from s4edge.cloud_sync.aggregator.views import utc
from s4edge.cloud_sync.aggregator.writer import StoreSpec, WriterProcess, WriterRules
from s4edge.cloud_sync.logfmt import LOG_FORMAT_ENV
from s4edge.cloud_sync.messages import (
    Alert,
    Box,
    Detection,
    Heartbeat,
    Location,
    Measurement,
    ModelRef,
    Status,
    encode,
    topic_for,
)

T0 = datetime.now(UTC)  # when the messages are received: the writer refuses a ts far ahead of it


@pytest.fixture(autouse=True)
def received_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """T0 is each test's own now: a message stamped now and received at the module's import,
    five minutes before in a long run, would be refused as dated in the future."""
    monkeypatch.setitem(globals(), "T0", datetime.now(UTC))


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
        ts=T0 + timedelta(microseconds=seq),  # sent as they are received: never ahead of the receiver
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


def test_what_no_store_can_hold_is_refused_and_never_takes_its_batch_down(ingest: Ingest) -> None:
    # each of these once passed validation, then raised from the batch's commit (or on
    # PostgreSQL only): the batch was left unacked, and a few such stopped ingest for good
    def spoilt(n: int, **fields: Any) -> bytes:
        payload = json.loads(encode(alert(n)))
        payload.update(fields)
        return json.dumps(payload).encode()

    good = [alert(1), alert(2)]
    poison = [
        spoilt(3, ts="0001-01-01T00:00:00+14:00"),  # no UTC for it: OverflowError
        spoilt(4, seq=2**63),  # beyond a 64-bit integer column
        spoilt(5, title="gas\u0000 leak"),  # PostgreSQL's text refuses NUL
    ]
    ingest.process(
        [received(topic_for(good[0]), p) for p in poison] + [received(topic_for(a), encode(a)) for a in good]
    )
    assert sorted(a["id"] for a in ingest.store.alerts(AlertQuery())[0]) == sorted(a.id for a in good)
    assert metric(ingest, "s4edge_messages_rejected_total", reason="invalid") == 3


def test_a_message_whose_rows_cannot_be_made_is_refused_alone(ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    # defence in depth: a bug that raises while one message becomes rows refuses that one,
    # logged, and the batch's others land; before, the whole batch was left unacked
    good, bad = alert(1), alert(2)
    insert = AlertRows.insert

    def failing(self: AlertRows, conn: Any, batch: Any) -> Any:
        if any(a.id == bad.id for a, _ in batch):
            raise OverflowError("date value out of range")
        return insert(self, conn, batch)

    monkeypatch.setattr(AlertRows, "insert", failing)
    ingest.process([received(topic_for(a), encode(a)) for a in (bad, good)])
    assert [a["id"] for a in ingest.store.alerts(AlertQuery())[0]] == [good.id]
    assert metric(ingest, "s4edge_messages_rejected_total", reason="unstorable") == 1


def test_a_node_is_never_receipted_for_an_alert_id_stored_as_another_nodes(ingest: Ingest) -> None:
    # a receipt would make the second node forget an alert that nobody stored
    first = alert(1)
    second = alert(2).model_copy(update={"id": first.id, "node_id": "n2", "incident": "incident-0002"})
    items = [(topic_for(a), encode(a), T0) for a in (first, second)]
    assert ingest.writer.write(items[:1]).confirmed == {("s1", "n1"): {first.id}}
    again = ingest.writer.write(items[1:])
    assert again.confirmed == {}
    assert again.rejects == [("id_conflict", topic_for(second), f"alert id {first.id} is another node's")]
    assert ingest.store.alerts(AlertQuery())[0][0]["node_id"] == "n1"
    assert ingest.writer.write(items[:1]).confirmed == {("s1", "n1"): {first.id}}  # its own resent: receipted


def test_a_node_cannot_end_join_or_acknowledge_another_nodes_incident(ingest: Ingest) -> None:
    # incidents, acks and NG112 calls all go by the incident id: an "all clear" from n2 under
    # n1's open flame incident ended it in the console, with n2's title and severity
    fire = alert(1)
    ingest.writer.write([(topic_for(fire), encode(fire), T0)])
    hijack = alert(2).model_copy(update={"node_id": "n2", "state": "end", "severity": "Minor", "title": "all clear"})
    own = alert(3).model_copy(update={"node_id": "n2", "incident": "incident-0002"})
    outcome = ingest.writer.write([(topic_for(a), encode(a), T0) for a in (hijack, own)])
    assert outcome.rejects == [("incident_conflict", topic_for(hijack), "incident incident-0001 is another node's")]
    assert outcome.confirmed == {("s1", "n2"): {own.id}}  # never receipted: it is not stored
    stored = ingest.store.alerts(AlertQuery())[0]
    assert sorted((a["node_id"], a["incident"], a["state"]) for a in stored) == [
        ("n1", "incident-0001", "new"),
        ("n2", "incident-0002", "new"),
    ]
    more = alert(4).model_copy(update={"state": "update"})  # n1 goes on with its own
    assert ingest.writer.write([(topic_for(more), encode(more), T0)]).confirmed == {("s1", "n1"): {more.id}}


def forward_jobs(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(select(jobs_table.c.alert_id)).scalars())


def test_duplicates_are_stored_once_and_queued_for_forwarding_once(ingest: Ingest) -> None:
    ingest.forward_jobs(frozenset({"smoke"}))
    first, second = alert(1), alert(2)
    ingest.process([received(topic_for(first), encode(first))] * 2)
    ingest.process([received(topic_for(first), encode(first)), received(topic_for(second), encode(second))])
    assert forward_jobs(ingest.store) == sorted([first.id, second.id])
    assert ingest.store.count_alerts() == 2
    assert metric(ingest, "s4edge_messages_duplicate_total") == 2


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_commit_that_wrote_forward_jobs_wakes_the_forwarder(tmp_path: Path, writer: str) -> None:
    url = f"sqlite:///{tmp_path / 'agg.db'}"
    store = Store(make_engine(url))
    store.create_all()
    spec = StoreSpec(url) if writer == "process" else None
    ingest = Ingest(BrokerConfig("mqtt://127.0.0.1:1"), store, IngestMetrics(), client_id="t", writer_process=spec)
    wakes: list[None] = []
    ingest.forward_jobs(frozenset({"smoke"}), on_jobs=lambda: wakes.append(None))
    ingest.open_writer()
    smoke, loitering = alert(1), alert(2).model_copy(update={"kind": "loitering"})
    try:
        ingest.process([received(topic_for(smoke), encode(smoke))] * 2)
        ingest.process([received(topic_for(a), encode(a)) for a in (smoke, loitering)])  # a repeat, and no job
    finally:
        ingest.stop()
    assert len(wakes) == 1 and forward_jobs(store) == [smoke.id]


def test_only_the_kinds_asked_for_get_a_forward_job(ingest: Ingest) -> None:
    smoke, loitering = alert(1), alert(2).model_copy(update={"kind": "loitering"})
    ingest.process([received(topic_for(a), encode(a)) for a in (smoke, loitering)])
    assert forward_jobs(ingest.store) == []  # forwarding off: no jobs at all
    ingest.forward_jobs(frozenset({"smoke", "gas"}))
    later = [alert(3), alert(4).model_copy(update={"kind": "loitering"})]
    ingest.process([received(topic_for(a), encode(a)) for a in later])
    assert forward_jobs(ingest.store) == [later[0].id]


def test_an_alert_is_stored_only_with_its_forward_job(ingest: Ingest) -> None:
    """One transaction: a job the store refuses takes its alert with it (refused, counted),
    so no alert is ever stored with its forward job missing."""
    ingest.forward_jobs(frozenset({"smoke"}))
    good, jobless = alert(1), alert(2)
    with ingest.store.engine.begin() as conn:
        conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON forward_jobs WHEN NEW.alert_id = '{jobless.id}' "
                          "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"))  # fmt: skip
    ingest.process([received(topic_for(a), encode(a)) for a in (good, jobless)])
    assert [a["id"] for a in ingest.store.alerts(AlertQuery())[0]] == [good.id]
    assert forward_jobs(ingest.store) == [good.id]
    assert metric(ingest, "s4edge_messages_rejected_total", reason="store_refused") == 1


def test_a_message_dated_beyond_the_allowed_skew_is_refused_and_counted(ingest: Ingest) -> None:
    ahead = alert(1).model_copy(update={"ts": T0 + timedelta(minutes=6)})
    near = alert(2).model_copy(update={"ts": T0 + timedelta(minutes=4)})  # within the default 5 min
    forged = Heartbeat(node_id="n1", site="s1", seq=3, ts=datetime(9999, 1, 1, tzinfo=UTC), uptime_s=5.0)
    ingest.process([received(topic_for(m), encode(m)) for m in (ahead, near, forged)])
    assert [a["id"] for a in ingest.store.alerts(AlertQuery())[0]] == [near.id]
    assert metric(ingest, "s4edge_messages_rejected_total", reason="future_ts") == 2
    assert ingest.store.nodes(30, 3)[0]["heartbeat_ts"] is None


def test_the_last_status_and_heartbeat_to_arrive_win_whatever_their_dates(ingest: Ingest) -> None:
    """Arrival order, not the node's clock: a node whose clock was reset still updates its record."""
    later = Status(node_id="n1", site="s1", seq=1, ts=T0, state="offline")
    reset = Status(node_id="n1", site="s1", seq=2, ts=datetime(2000, 1, 1, tzinfo=UTC), state="online")
    beats = [
        Heartbeat(node_id="n1", site="s1", seq=3, ts=T0, uptime_s=100.0),
        Heartbeat(node_id="n1", site="s1", seq=4, ts=datetime(2000, 1, 1, tzinfo=UTC), uptime_s=5.0),
    ]
    ingest.process([received(topic_for(m), encode(m)) for m in (later, reset, *beats)])
    node = ingest.store.nodes(30, 3)[0]
    assert (node["state"], node["health"]["uptime_s"]) == ("online", 5.0)


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


# -- the batch INSERT (alert_rows) against SQLAlchemy's own path, on SQLite and PostgreSQL ------------

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def rich_alert(seq: int) -> Alert:
    """Every column filled, JSON sub-models included, a non-UTC timestamp to normalise."""
    return Alert(
        id=f"rich-alert-{seq:05d}", node_id="n1", site="s1", seq=seq, kind="intrusion", severity="Severe",
        state="new", incident="incident-0002", location=Location(lat=48.1, lon=11.5, zone="gate"),
        ts=datetime(2026, 5, 1, 14, 0, seq % 60, 123456, tzinfo=timezone(timedelta(hours=2))),
        title="person at the gate", detail="seen twice", status="Exercise",
        measurements=[Measurement(quantity="co", value=61.5, unit="ppm"),
                      Measurement(quantity="t", value=-1e-3, unit="C", sensor="s")],
        detection=Detection(label="person", count=2, track_ids=[4, 7], boxes=[Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4)]),
        model=ModelRef(name="yolo", version="8n", sha256="a" * 64),
    )  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """One store written by ``AlertRows``, one by ``Store.insert_alerts``; a small page forces chunking."""
    probe = create_engine(POSTGRES, connect_args={"connect_timeout": 3})
    schemas: list[str] = []
    if request.param == "sqlite":
        made = [Store(make_engine(f"sqlite:///{tmp_path / f'{name}.db'}")) for name in ("fast", "core")]
    else:
        try:
            with probe.connect():
                pass
        except OperationalError as exc:
            pytest.skip(f"PostgreSQL is unreachable at {POSTGRES} ({type(exc.orig).__name__}); start it to run this")
        schemas = [f"s4edge_rows_{uuid.uuid4().hex[:12]}" for _ in range(2)]
        made = [Store(make_engine(POSTGRES, schema=schema)) for schema in schemas]
    for store in made:
        store.create_all()
    # 7 rows per statement: a batch of 20 takes three statements.
    made[0].engine.dialect.insertmanyvalues_page_size = 7
    yield made[0], made[1]
    for store in made:
        store.engine.dispose()
    for schema in schemas:
        with probe.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    probe.dispose()


def test_batch_insert_stores_what_sqlalchemy_stores_and_names_only_new_ids(two_stores: tuple[Store, Store]) -> None:
    fast, core = two_stores
    rows = AlertRows(fast)
    plain = [(alert(i), T0) for i in range(3)]
    rich = [(rich_alert(i), T0 + timedelta(microseconds=i)) for i in range(20)]
    with fast.engine.begin() as conn:
        assert rows._statement(conn) is not None  # the batch INSERT, not the fallback to SQLAlchemy's path
        assert rows.insert(conn, plain[:2]) == {a.id for a, _ in plain[:2]}
    with fast.engine.begin() as conn:
        # Two already stored, spread over chunks with new ones: only the new are reported.
        assert rows.insert(conn, plain + rich) == {plain[2][0].id} | {a.id for a, _ in rich}
    with core.engine.begin() as conn:
        core.insert_alerts(conn, plain + rich)

    def everything(store: Store) -> list[dict[str, Any]]:
        with store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(alerts_table).order_by(alerts_table.c.id))]

    stored = everything(fast)
    assert len(stored) == 23
    assert stored == everything(core)
    first_rich = next(r for r in stored if r["id"] == rich[0][0].id)
    assert first_rich["measurements"][1] == {"quantity": "t", "value": -1e-3, "unit": "C", "sensor": "s"}
    assert first_rich["detection"]["boxes"] == [{"x1": 0.1, "y1": 0.2, "x2": 0.3, "y2": 0.4}]
    assert utc(first_rich["ts"]) == datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_a_row_the_store_refuses_is_rejected_alone(ingest: Ingest) -> None:
    """The batch INSERT raises like SQLAlchemy's would, so one bad row does not sink its batch."""
    good, too_long = alert(1), alert(2)
    # Valid on the wire, refused by the store: a trigger stands in for a constraint the model does not know.
    with ingest.store.engine.begin() as conn:
        conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.id = '{too_long.id}' "
                          "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"))  # fmt: skip
    ingest.process([received(topic_for(a), encode(a)) for a in (good, too_long)])
    assert ingest.store.count_alerts() == 1
    assert metric(ingest, "s4edge_messages_rejected_total", reason="store_refused") == 1


def test_an_outage_while_isolating_a_refused_row_is_retried_not_taken_for_a_refusal(ingest: Ingest) -> None:
    """A refusal sends the batch row by row; if the store then goes away, the rows not yet
    stored must be retried, never acked unstored as 'refused'."""
    first, refused, third = alert(1), alert(2), alert(3)
    with ingest.store.engine.begin() as conn:
        conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.id = '{refused.id}' "
                          "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"))  # fmt: skip
    real_commit, outages = ingest.writer._commit, [third.id]

    def commit_with_one_outage(batch, outcome):  # the store is away once, when the third row goes alone
        if outages and list(batch.alerts) == outages:
            outages.clear()
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_commit(batch, outcome)

    ingest.forward_jobs(frozenset({"smoke"}))
    ingest.writer._commit = commit_with_one_outage  # type: ignore[method-assign]
    beat = Heartbeat(node_id="n1", site="s1", seq=9, uptime_s=5.0)  # a non-alert, committed alone before the outage
    items = [received(topic_for(a), encode(a)) for a in (first, refused, third)]
    ingest.process([*items, received(topic_for(beat), encode(beat))])

    stored = {a["id"] for a in ingest.store.alerts(AlertQuery(limit=10))[0]}
    assert stored == {first.id, third.id}
    assert metric(ingest, "s4edge_messages_rejected_total", reason="store_refused") == 1
    # The retry resumes where the outage struck: what was committed before it is not counted again.
    assert metric(ingest, "s4edge_messages_stored_total", type="alert") == 2
    assert metric(ingest, "s4edge_messages_stored_total", type="heartbeat") == 1
    assert metric(ingest, "s4edge_messages_duplicate_total") == 0
    assert forward_jobs(ingest.store) == sorted([first.id, third.id]), "every alert stored has its job, retried or not"


# -- lingering: a burst becomes one batch, a lone message still goes promptly ---------------------------


def test_a_full_batch_is_taken_without_lingering(ingest: Ingest) -> None:
    ingest.linger_s, ingest.batch_max = 60.0, 5
    one = alert(1)
    for _ in range(7):
        ingest._pending.append(received(topic_for(one), encode(one)))
    started = time.monotonic()
    assert len(ingest._next_batch()) == 5
    assert time.monotonic() - started < 30  # did not wait out the 60 s linger


def test_a_lone_message_is_taken_once_nothing_more_arrives(ingest: Ingest) -> None:
    """Not after ``linger_s``: a 3.1.1 broker's in-flight window may be full until we ack."""
    ingest.linger_s, ingest.batch_max = 60.0, 500
    one = alert(1)
    ingest._pending.append(received(topic_for(one), encode(one)))
    started = time.monotonic()
    assert len(ingest._next_batch()) == 1
    assert time.monotonic() - started < 30


def test_messages_arriving_while_lingering_join_the_batch(ingest: Ingest) -> None:
    ingest.linger_s, ingest.linger_quiet_s, ingest.batch_max = 10.0, 2.0, 500
    one = alert(1)
    item = received(topic_for(one), encode(one))
    ingest._pending.append(item)
    later = threading.Timer(0.05, lambda: ingest._pending.extend([item] * 3))
    later.start()
    assert len(ingest._next_batch()) == 4
    later.join()


# -- the writer process ---------------------------------------------------------------------------------


def test_the_writer_process_reports_an_outage_and_is_ended_when_stopping(tmp_path: Path) -> None:
    """A store it cannot open is an outage: each retry is reported to the parent (which counts
    it) and a parent that is stopping ends the child instead of waiting; nothing is acked."""
    errors: list[str] = []
    writer = WriterProcess(StoreSpec(f"sqlite:///{tmp_path / 'no-such-dir' / 'agg.db'}"), on_store_error=errors.append)

    def stop_after_two(reason: str) -> None:
        errors.append(reason)
        if len(errors) == 2:
            writer.stopping.set()

    writer.on_store_error = stop_after_two
    one = alert(1)
    assert writer.write([(topic_for(one), encode(one), T0)]) is None
    assert errors == ["OperationalError: unable to open database file"] * 2  # the class, and why
    assert writer._child.poll() is not None  # ended, not left retrying


def test_the_writer_process_answers_what_the_thread_writer_answers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agg.db'}"
    Store(make_engine(url)).create_all()
    one, two = alert(1), alert(2)
    beat = Heartbeat(node_id="n1", site="s1", seq=3, uptime_s=5.0)
    items = [
        (topic_for(two), encode(two), T0),
        (topic_for(one), encode(one), T0),
        (topic_for(one), encode(one), T0),  # a copy in the same batch
        ("s4edge/v1/s1/n1/alert", b"{not json", T0),
        (None, b"{}", T0),
        (topic_for(beat), encode(beat), T0),
    ]
    writer = WriterProcess(StoreSpec(url))
    try:
        outcome = writer.write(items)
        again = writer.write(items[:2])
    finally:
        writer.close()
    assert outcome is not None and again is not None
    assert outcome.new_alerts == [1, 0]  # where they were in the batch, oldest first
    assert outcome.stored == {"alert": 2, "heartbeat": 1} and outcome.duplicates == 1
    assert [r[0] for r in outcome.rejects] == ["bad_json", "bad_topic"]
    assert outcome.received == {"alert": 4, "other": 1, "heartbeat": 1}
    assert outcome.nodes == [("s1", "n1", "heartbeat")]
    assert again.new_alerts == [] and again.duplicates == 2


def test_the_writer_process_follows_the_rules_it_was_given(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agg.db'}"
    store = Store(make_engine(url))
    store.create_all()
    now, ahead = alert(1).model_copy(update={"ts": T0}), alert(2).model_copy(update={"ts": T0 + timedelta(minutes=2)})
    loitering = alert(3).model_copy(update={"kind": "loitering", "ts": T0})
    writer = WriterProcess(StoreSpec(url), WriterRules(max_skew_s=60, forward_kinds=frozenset({"smoke"})))
    try:
        outcome = writer.write([(topic_for(a), encode(a), T0) for a in (now, ahead, loitering)])
    finally:
        writer.close()
    assert outcome is not None and [r[0] for r in outcome.rejects] == ["future_ts"]
    assert outcome.stored == {"alert": 2} and outcome.forward_jobs == 1
    assert forward_jobs(store) == [now.id]


def test_a_failure_while_the_writer_process_commits_does_not_shift_the_answers(tmp_path: Path) -> None:
    """Batch k is finished while the child commits batch k+1. If finishing k fails, k+1's
    answer must still be read, or every later batch would be acked on its predecessor's."""
    url = f"sqlite:///{tmp_path / 'agg.db'}"
    store = Store(make_engine(url))
    store.create_all()
    ingest = Ingest(
        BrokerConfig("mqtt://127.0.0.1:1"), store, IngestMetrics(), client_id="t", writer_process=StoreSpec(url)
    )
    ingest.open_writer()
    try:
        first = ingest._commit([received(topic_for(alert(1)), encode(alert(1)))])
        assert first is not None
        first.outcome.rejects.append(("no_such_reason", "t", "finishing this batch fails"))
        ingest._reject = lambda *args: (_ for _ in ()).throw(RuntimeError("a bug while finishing"))  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="a bug while finishing"):
            ingest._commit([received(topic_for(alert(2)), encode(alert(2)))], first)
        three = [received(topic_for(alert(s)), encode(alert(s))) for s in (3, 4, 5)]
        third = ingest._commit(three)
    finally:
        ingest.stop()
    assert third is not None and third.outcome.stored == {"alert": 3} and third.outcome.new_alerts == [0, 1, 2]
    assert store.count_alerts() == 5


def test_the_writer_process_logs_in_the_format_its_parent_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    writer = WriterProcess(StoreSpec(f"sqlite:///{tmp_path / 'no-such-dir' / 'agg.db'}"))
    writer.on_store_error = lambda reason: writer.stopping.set()
    one = alert(1)
    assert writer.write([(topic_for(one), encode(one), T0)]) is None
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line the child wrote is one JSON object
    assert any("store unavailable" in r["msg"] for r in records)
