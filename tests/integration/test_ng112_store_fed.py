"""NG112 is fed from the store: the writer process killed after its commit and before its
answer loses no call and repeats none, and a job the last aggregator left is called by
the next (real mosquitto, the built-in PSAP receiver, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import POSTGRES
from sqlalchemy import select

from s4edge.cloud_sync.aggregator.app import Aggregator, AggregatorConfig
from s4edge.cloud_sync.aggregator.broker import BrokerConfig
from s4edge.cloud_sync.aggregator.store import forward_jobs
from s4edge.cloud_sync.aggregator.writer import WriterProcess
from s4edge.cloud_sync.messages import Alert, Location, Measurement, encode, new_id, topic_for
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.receiver import PsapReceiver, ReceivedCall
from s4edge.cloud_sync.ng112.records import forwards
from s4edge.cloud_sync.ng112.service import attach
from s4edge.testing import Mosquitto
from s4edge.testing import eventually as wait_until

# The writer process, made to die once: after the commit that stored an alert, before its answer.
DIES_AFTER_COMMIT = """
import json, os, signal, sys
from pathlib import Path
from s4edge.cloud_sync.aggregator import writer

marker, send = Path(sys.argv[1]), writer.send_frame

def send_or_die(stream, body):
    if not marker.exists() and json.loads(body).get("stored", {}).get("alert"):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    send(stream, body)

writer.send_frame = send_or_die
sys.exit(writer._serve(sys.stdin.buffer, sys.stdout.buffer))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(url, schema): a SQLite file, or a fresh schema on the local PostgreSQL, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agg.db'}", None
        return
    yield POSTGRES, request.getfixturevalue("pg_schema")


@pytest.fixture
def psap() -> Iterator[tuple[str, list[ReceivedCall]]]:
    """The built-in PSAP receiver: its SIP URI, and the calls it answered 200 OK."""
    calls: list[ReceivedCall] = []
    receiver = PsapReceiver("tcp:127.0.0.1:0", calls.append).start()
    host, port = receiver.address
    yield f"sip:psap@{host}:{port};transport=tcp", calls
    receiver.stop()


def gas(incident: str) -> Alert:
    return Alert(
        node_id="n1", site="plaza", seq=1, kind="gas", severity="Extreme", state="new",
        incident=incident, location=Location(lat=48.2, lon=16.37, zone="gate"),
    )  # fmt: skip


def test_a_writer_killed_between_commit_and_answer_still_calls_the_psap_once(
    broker: Mosquitto,
    node: mqtt.Client,
    psap: tuple[str, list[ReceivedCall]],
    store: tuple[str, str | None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    psap_uri, calls = psap
    wrapper, killed = tmp_path / "dies_after_commit.py", tmp_path / "killed"
    wrapper.write_text(DIES_AFTER_COMMIT)
    monkeypatch.setattr(WriterProcess, "program", (str(wrapper), str(killed)))
    url, schema = store
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=url, db_schema=schema, client_id="agg-sf", writer="process"
    )
    aggregator = Aggregator(config)
    forwarder = attach(aggregator, Ng112Config(psap=psap_uri, t1_s=0.05))
    aggregator.start()
    try:
        first = gas("inc-killed-0001")
        node.publish(topic_for(first), encode(first), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=first.id)
        assert killed.exists(), "the writer process was to die after its commit"
        assert row is not None and row["state"] == "delivered", row
        second = gas("inc-after-0002")  # a marker: stored and called by the writer that replaced it
        node.publish(topic_for(second), encode(second), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=second.id)
        assert row is not None and row["state"] == "delivered", row
        with aggregator.store.engine.connect() as conn:
            sent = sorted(tuple(r) for r in conn.execute(select(forwards.c.incident, forwards.c.attempts)))
            left = conn.execute(select(forward_jobs.c.alert_id)).all()
        assert sent == [("inc-after-0002", 1), ("inc-killed-0001", 1)] and left == []
        assert sorted(call.cap["incidents"] or "" for call in calls) == ["inc-after-0002", "inc-killed-0001"]
    finally:
        forwarder.stop()
        aggregator.stop()


def test_a_job_the_last_aggregator_left_is_called_once_by_the_next(
    broker: Mosquitto, node: mqtt.Client, psap: tuple[str, list[ReceivedCall]], store: tuple[str, str | None]
) -> None:
    """The thread writer: the alert's job is in its commit, so an aggregator gone before its
    forwarder took it (a crash, here a stop) leaves it to the next one, which calls once."""
    psap_uri, calls = psap
    url, schema = store
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=url, db_schema=schema, client_id="agg-sf-t", writer="thread"
    )
    ng112 = Ng112Config(psap=psap_uri, t1_s=0.05)
    alert = gas("inc-left-0001")
    first = Aggregator(config)
    first.forward_jobs(ng112.job_kinds)  # forwarding on, its forwarder never started
    with first:
        node.publish(topic_for(alert), encode(alert), qos=1).wait_for_publish(5)
        wait_until(lambda: first.store.alert(alert.id) is not None, what="the alert, stored with its job")
    second = Aggregator(config)
    forwarder = attach(second, ng112)
    second.start()
    try:
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=alert.id)
        assert row is not None and row["state"] == "delivered", row
        with second.store.engine.connect() as conn:
            assert conn.execute(select(forward_jobs.c.alert_id)).all() == []
        assert [call.cap["incidents"] for call in calls] == ["inc-left-0001"]
    finally:
        forwarder.stop()
        second.stop()


def test_an_ongoing_incident_sends_its_readings_merged_and_its_end_at_once(
    broker: Mosquitto, node: mqtt.Client, psap: tuple[str, list[ReceivedCall]], store: tuple[str, str | None]
) -> None:
    """A node's Alert, 20 updates that bring new readings only, then the end, through the
    aggregator (the forwarder in its own process): the PSAP's call-taker gets the Alert and
    the Cancel, not 20 Updates between them; the readings went with the Cancel."""
    psap_uri, calls = psap
    url, schema = store
    config = AggregatorConfig(
        BrokerConfig(broker.url), db_url=url, db_schema=schema, client_id="agg-sf-u", writer="process"
    )
    aggregator = Aggregator(config)
    forwarder = attach(aggregator, Ng112Config(psap=psap_uri, t1_s=0.05))  # update_interval_s: 30 s
    aggregator.start()
    try:
        first = gas("inc-leak-0001")
        node.publish(topic_for(first), encode(first), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=first.id)
        assert row is not None and row["state"] == "delivered", row
        readings = [later(first, 1 + n, "update", 30 + n) for n in range(1, 21)]
        for update in readings:
            node.publish(topic_for(update), encode(update), qos=1).wait_for_publish(5)
        for update in readings:  # each on record: waiting for its interval, or merged into the next
            row = forwarder.wait_for(("pending", "merged"), 20, alert_id=update.id)
            assert row is not None and row["state"] in ("pending", "merged"), row
        end = later(first, 22, "end", 50)
        node.publish(topic_for(end), encode(end), qos=1).wait_for_publish(5)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=end.id)
        assert row is not None and (row["state"], row["msg_type"]) == ("delivered", "Cancel"), row
        assert [(call.cap["msgType"], call.cap["identifier"]) for call in calls] == [
            ("Alert", f"s4edge-{first.id}"),
            ("Cancel", f"s4edge-{end.id}"),
        ]
        with aggregator.store.engine.connect() as conn:
            merged = conn.execute(select(forwards.c.alert_id).where(forwards.c.state == "merged")).scalars()
            assert sorted(merged) == sorted(update.id for update in readings)
    finally:
        forwarder.stop()
        aggregator.stop()


def test_an_end_stored_while_no_forwarder_ran_goes_at_once_past_the_waiting_readings(
    broker: Mosquitto, node: mqtt.Client, psap: tuple[str, list[ReceivedCall]], store: tuple[str, str | None]
) -> None:
    """The waiting Update is a row in the store, not a timer in a process: an aggregator
    stopped while it waits, and the end stored by another with no forwarder running, the
    next forwarder sends the Cancel at once, the readings merged into it, and no Update."""
    psap_uri, calls = psap
    url, schema = store
    ng112 = Ng112Config(psap=psap_uri, t1_s=0.05)

    def aggregator(name: str) -> Aggregator:
        return Aggregator(AggregatorConfig(BrokerConfig(broker.url), db_url=url, db_schema=schema, client_id=name))

    def publish(alert: Alert) -> None:
        node.publish(topic_for(alert), encode(alert), qos=1).wait_for_publish(5)

    first, before = gas("inc-leak-0002"), aggregator("agg-sf-before")
    reading = later(first, 2, "update", 31)
    forwarder = attach(before, ng112)
    with before:
        publish(first)
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=first.id)
        assert row is not None and row["state"] == "delivered", row
        publish(reading)
        row = forwarder.wait_for(("pending",), 20, alert_id=reading.id)
        assert row is not None and row["state"] == "pending", row  # waiting for its 30 s
        forwarder.stop()
    end, meanwhile = later(first, 3, "end", 33), aggregator("agg-sf-meanwhile")
    meanwhile.forward_jobs(ng112.job_kinds)  # forwarding on, its forwarder never started
    with meanwhile:
        publish(end)
        wait_until(lambda: meanwhile.store.alert(end.id) is not None, what="the end, stored with its job")
    after = aggregator("agg-sf-after")
    forwarder = attach(after, ng112)
    after.start()
    try:
        row = forwarder.wait_for(("delivered", "failed"), 20, alert_id=end.id)
        assert row is not None and (row["state"], row["msg_type"]) == ("delivered", "Cancel"), row
        assert [call.cap["msgType"] for call in calls] == ["Alert", "Cancel"]
        with after.store.engine.connect() as conn:
            merged = conn.execute(select(forwards.c.alert_id).where(forwards.c.state == "merged")).scalars()
            assert list(merged) == [reading.id]
    finally:
        forwarder.stop()
        after.stop()


def later(first: Alert, seq: int, state: str, lel: float) -> Alert:
    """An update or the end of ``first``'s incident, the node's ``seq``, its methane reading ``lel``."""
    return first.model_copy(update={"id": new_id(), "seq": seq, "state": state, "measurements": [methane(lel)]})


def methane(lel: float) -> Measurement:
    return Measurement(quantity="ch4", value=lel, unit="%LEL")
