"""Forwarding policy, the call lifecycle (Alert → Update → Cancel), retries and the record,
against the built-in PSAP on a real loopback socket and a real SQLite store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count
from threading import Event, Thread
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from s4edge.cloud_sync.aggregator.store import Store, forward_jobs, make_engine, metadata
from s4edge.cloud_sync.messages import Alert, Location, Measurement, Telemetry
from s4edge.cloud_sync.ng112.api import build_router
from s4edge.cloud_sync.ng112.cap import cap_text, parse_cap
from s4edge.cloud_sync.ng112.forwarder import Forwarder
from s4edge.cloud_sync.ng112.policy import Ng112Config
from s4edge.cloud_sync.ng112.readings import link_signature
from s4edge.cloud_sync.ng112.receiver import PsapReceiver
from s4edge.cloud_sync.ng112.records import forwards, get_forward, incidents
from s4edge.testing import eventually, free_port

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
_seq = count()


class FrozenClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def alert(kind="gas", severity="Severe", state="new", incident="inc-gas-0001", site="plaza", **kw) -> Alert:
    n = next(_seq)
    return Alert(
        node_id="n1",
        site=site,
        seq=n,
        kind=kind,
        severity=severity,
        state=state,
        incident=incident,
        ts=T0 + timedelta(seconds=n),
        location=kw.pop("location", Location(lat=48.2, lon=16.37, zone="gate")),
        measurements=[Measurement(quantity="ch4", value=20.0 + n, unit="%LEL")],
        **kw,
    )


@pytest.fixture
def psap():
    calls = []
    receiver = PsapReceiver("tcp:127.0.0.1:0", calls.append).start()
    receiver.calls = calls
    yield receiver
    receiver.stop()


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'agg.db'}")
    metadata.create_all(engine)
    return engine


@pytest.fixture
def clock():
    return FrozenClock()


def forwarder(engine, clock, psap_uri, **config) -> Forwarder:
    settings = dict(psap=psap_uri, t1_s=0.01, backoff_s=10, max_attempts=3, readings_base_url="https://agg.example")
    settings.update(config)
    return Forwarder(engine, Ng112Config.model_validate(settings), clock=clock)


def uri(receiver) -> str:
    host, port = receiver.address
    return f"sip:psap@{host}:{port};transport=tcp"


def test_one_incident_is_one_call_alert_then_update_then_cancel(engine, clock, psap, shared):
    fwd = forwarder(engine, clock, uri(psap))
    (first,) = fwd.submit(alert())
    assert fwd.run_due() == 1
    row = get_forward(engine, first)
    assert row["state"] == "delivered" and row["code"] == 200 and row["attempts"] == 1
    assert row["msg_type"] == "Alert" and row["latency_ms"] > 0 and row["answered_at"]
    (update,) = fwd.submit(alert(state="update", severity="Extreme"))
    (end,) = fwd.submit(alert(state="end"))
    assert fwd.run_due() == 1  # the Cancel waits until the Update is through
    assert fwd.run_due() == 1
    assert [get_forward(engine, f)["msg_type"] for f in (update, end)] == ["Update", "Cancel"]
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Update", "Cancel"]
    assert psap.calls[1].cap["severity"] == "Extreme"
    assert psap.calls[0].position == (48.2, 16.37)
    assert {c.cap["incidents"] for c in psap.calls} == {"inc-gas-0001"}


def test_a_dashboard_that_fails_to_hear_of_a_delivery_does_not_undo_it(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))

    def broken_dashboard(row):
        raise RuntimeError("the event bus is gone")

    fwd.on_change = broken_dashboard
    (first,) = fwd.submit(alert())
    assert fwd.run_due() == 1
    assert get_forward(engine, first)["state"] == "delivered"
    assert fwd.run_due() == 0 and len(psap.calls) == 1  # never sent again


def test_a_repeated_alert_is_forwarded_once(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    same = alert()
    assert len(fwd.submit(same)) == 1
    assert fwd.submit(same) == []


def test_policy_decides_what_opens_a_call(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    assert fwd.submit(alert(severity="Minor", incident="inc-minor-01")) == []
    assert fwd.submit(alert(kind="loitering", severity="Extreme", incident="inc-loit-01")) == []
    assert fwd.submit(alert(state="end", incident="inc-never-01")) == []
    assert fwd.run_due() == 0 and psap.calls == []


def test_confirm_mode_waits_for_the_operator(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm", "confirm_timeout_s": 60})
    (waiting,) = fwd.submit(alert())
    assert fwd.run_due() == 0
    assert get_forward(engine, waiting)["state"] == "awaiting_confirm"
    assert fwd.confirm(waiting, by="alice")
    assert fwd.run_due() == 1
    row = get_forward(engine, waiting)
    assert (row["state"], row["decided_by"]) == ("delivered", "alice")
    assert not fwd.confirm(waiting, by="bob")  # nothing left to confirm


def test_a_dismissed_incident_sends_nothing_ever(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm"})
    (waiting,) = fwd.submit(alert())
    (later,) = fwd.submit(alert(state="update"))
    assert fwd.dismiss(waiting, by="alice")
    clock.advance(fwd.config.update_interval_s)  # the update brought new readings only: it waited
    fwd.run_due()
    assert get_forward(engine, later)["state"] == "dismissed"
    assert psap.calls == []


@pytest.mark.parametrize(("severity", "outcome", "calls"), [("Extreme", "delivered", 1), ("Severe", "unconfirmed", 0)])
def test_an_unanswered_confirmation_escalates_only_extreme(engine, clock, psap, severity, outcome, calls):
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm", "confirm_timeout_s": 30})
    (waiting,) = fwd.submit(alert(severity=severity))
    clock.advance(29)
    assert fwd.run_due() == 0
    clock.advance(2)
    fwd.run_due()
    assert get_forward(engine, waiting)["state"] == outcome
    assert len(psap.calls) == calls


def test_an_incident_that_rose_to_extreme_while_awaiting_confirmation_goes_at_the_timeout(engine, clock, psap):
    # the timeout looked only at the first alert's severity (Severe): the Extreme update behind
    # it ended unconfirmed with it, and the PSAP heard nothing
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm", "confirm_timeout_s": 60})
    (first,) = fwd.submit(alert(severity="Severe"))
    clock.advance(5)
    (risen,) = fwd.submit(alert(state="update", severity="Extreme"))
    clock.advance(120)
    for _ in range(3):
        fwd.run_due()
        clock.advance(1)
    assert [get_forward(engine, f)["state"] for f in (first, risen)] == ["delivered", "delivered"]
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Update"]


def test_an_incident_that_rises_to_extreme_after_its_confirmation_lapsed_goes_then(engine, clock, psap):
    # its first alert ended unconfirmed; the Extreme update minutes later ended unconfirmed
    # with it, unasked, and the PSAP heard nothing of a life-threatening incident
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm", "confirm_timeout_s": 60})
    (first,) = fwd.submit(alert(severity="Severe"))
    clock.advance(61)
    fwd.run_due()
    clock.advance(120)
    (risen,) = fwd.submit(alert(state="update", severity="Extreme"))
    (after,) = fwd.submit(alert(state="update", severity="Extreme"))
    (ended,) = fwd.submit(alert(state="end", severity="Extreme"))
    for _ in range(4):
        fwd.run_due()
        clock.advance(1)
    states = [get_forward(engine, f)["state"] for f in (first, risen, after, ended)]
    assert states == ["unconfirmed", "delivered", "merged", "delivered"]  # new readings only: the Cancel has them
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Cancel"]


def test_failures_are_retried_with_backoff_then_marked_failed(engine, clock):
    closed = f"sip:psap@127.0.0.1:{free_port()};transport=tcp"  # nothing listens there
    fwd = forwarder(engine, clock, closed, backoff_s=10, max_attempts=3)
    (fid,) = fwd.submit(alert())
    assert fwd.run_due() == 1
    row = get_forward(engine, fid)
    assert (row["state"], row["attempts"]) == ("retrying", 1)
    assert "refused" in row["reason"].lower()
    clock.advance(9)
    assert fwd.run_due() == 0  # backoff: 10 s, then 20 s
    clock.advance(1)
    assert fwd.run_due() == 1
    clock.advance(19)
    assert fwd.run_due() == 0
    clock.advance(1)
    assert fwd.run_due() == 1
    row = get_forward(engine, fid)
    assert (row["state"], row["attempts"]) == ("failed", 3)
    assert fwd.run_due() == 0


def test_invalid_content_fails_before_sending_and_is_kept(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    # ng112.yaml refuses such a sender now (test_ng112_integrator.py); content a Caller makes may still fail
    fwd.caller = replace(fwd.caller, sender="sip:node one@plaza")
    (bad_sender,) = fwd.submit(alert())
    fwd.run_due()
    fwd2 = forwarder(engine, clock, uri(psap))
    (nowhere,) = fwd2.submit(alert(incident="inc-gas-0002", location=Location(lat=0.0, lon=0.0)))
    fwd2.run_due()
    assert get_forward(engine, bad_sender)["state"] == "failed"
    assert "CAP field 'sender'" in get_forward(engine, bad_sender)["reason"]
    assert get_forward(engine, nowhere)["state"] == "failed"
    assert "no usable location" in get_forward(engine, nowhere)["reason"]
    assert psap.calls == []


def test_correlated_alerts_open_one_escalated_call(engine, clock, psap):
    rules = [{"name": "gas-flame", "kinds": ["gas", "flame"], "within_s": 120}]
    fwd = forwarder(engine, clock, uri(psap), correlation=rules, default={"kinds": ["gas", "flame", "escalation"]})
    fwd.submit(alert(kind="gas", incident="inc-gas-0100"))
    created = fwd.submit(alert(kind="flame", incident="inc-flame-0100"))
    assert len(created) == 2
    while fwd.run_due():
        pass
    escalations = [c for c in psap.calls if c.cap["event"] == "escalation"]
    assert len(escalations) == 1 and escalations[0].cap["severity"] == "Extreme"


def readings_link(call) -> str:
    """The PSAP data request link of a call's CAP (CAP 1.2 §3.2.3 <resource><uri>), as a path."""
    link = urlsplit(cap_text(parse_cap(call.parts["application/emergencycalldata.cap+xml"]), "info/resource/uri"))
    assert (link.scheme, link.netloc) == ("https", "agg.example")
    return f"{link.path}?{link.query}"


def data_request_client(fwd) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(fwd))
    return TestClient(app, base_url="http://127.0.0.1:8080")


def test_the_psap_data_request_needs_the_link_of_the_call(engine, clock, psap):
    store = Store(engine, clock=clock)
    fwd = forwarder(engine, clock, uri(psap))
    stored = [alert(incident="inc-data-0001") for _ in range(12)]
    with engine.begin() as conn:
        store.insert_alerts(conn, [(a, T0) for a in stored])
        store.record_telemetry(
            conn,
            Telemetry(
                node_id="n1",
                site="plaza",
                seq=99,
                ts=T0 + timedelta(hours=1),
                readings=[Measurement(quantity=f"q{i}", value=i, unit="ppm") for i in range(5)],
            ),
            T0,
        )
    fwd.submit(stored[0])
    fwd.run_due()
    client = data_request_client(fwd)
    link = readings_link(psap.calls[0])
    good = client.get(link)
    assert good.status_code == 200
    readings = good.json()["readings"]
    assert len(readings) == 15
    assert readings[0]["source"] == "telemetry"  # the newest first
    assert [r["ts"] for r in readings] == sorted((r["ts"] for r in readings), reverse=True)
    signature = parse_qs(urlsplit(link).query)["sig"][0]
    wrong = signature[:-1] + ("0" if signature.endswith("1") else "1")  # one character off
    assert client.get(link.replace(signature, wrong)).status_code == 404
    assert client.get(link.replace("inc-data-0001", "inc-data-0002")).status_code == 404  # another incident's data
    assert client.get("/ng112/incidents/inc-data-0001/readings").status_code == 422


def test_the_psap_data_request_link_expires_and_its_holder_cannot_extend_it(engine, clock, psap):
    # The link held the incident's token and answered for ever: one that leaked (a PSAP log, a
    # forwarded e-mail) gave the node's readings to anyone, years later
    fwd = forwarder(engine, clock, uri(psap), update_interval_s=0)
    fwd.submit(alert(incident="inc-data-0003"))
    fwd.run_due()
    client = data_request_client(fwd)
    link = readings_link(psap.calls[0])
    assert client.get(link).status_code == 200
    clock.advance(86400)
    gone = client.get(link)
    assert gone.status_code == 410, gone.text
    assert "expired at 2026-03-01T14:00:00+00:00" in gone.json()["detail"]  # 2 h after it went, by default
    # its signature covers the expiry: moved on, it is no link of ours
    expires = parse_qs(urlsplit(link).query)["expires"][0]
    assert client.get(link.replace(f"expires={expires}", f"expires={int(expires) + 86400}")).status_code == 404
    # each message carries a fresh link, so the PSAP holds one while the incident goes on
    fwd.submit(alert(state="update", severity="Extreme", incident="inc-data-0003"))
    fwd.run_due()
    assert client.get(readings_link(psap.calls[1])).status_code == 200
    # a link of the old form, the token bare and no expiry, answers no more
    with engine.connect() as conn:
        token = conn.execute(select(incidents.c.token).where(incidents.c.incident == "inc-data-0003")).scalar_one()
    old = client.get("/ng112/incidents/inc-data-0003/readings", params={"token": token})
    assert old.status_code == 410 and "without an expiry" in old.json()["detail"]
    assert token not in readings_link(psap.calls[1])  # the key never leaves the aggregator


def test_the_token_an_earlier_release_sent_signs_no_link(engine, clock, psap):
    # releases before signed links sent the incident's token in every CAP; were it the key,
    # anyone holding such a CAP could sign a link to the year 9999
    fwd = forwarder(engine, clock, uri(psap), update_interval_s=0)
    fwd.submit(alert(incident="inc-data-0005"))
    fwd.run_due()
    with engine.begin() as conn:  # an incident forwarded by that release: no link key yet
        token = conn.execute(select(incidents.c.token).where(incidents.c.incident == "inc-data-0005")).scalar_one()
        conn.execute(incidents.update().where(incidents.c.incident == "inc-data-0005").values(link_key=None))
    client = data_request_client(fwd)
    last = 253402300799
    signature = link_signature(token, "inc-data-0005", last)
    forged = f"/ng112/incidents/inc-data-0005/readings?expires={last}&sig={signature}"
    assert client.get(forged).status_code == 404
    # its next message gets a key of its own, and a link that answers
    fwd.submit(alert(state="update", severity="Extreme", incident="inc-data-0005"))
    fwd.run_due()
    assert client.get(readings_link(psap.calls[1])).status_code == 200
    assert client.get(forged).status_code == 404


def test_the_readings_link_answers_for_readings_link_ttl_s(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap), readings_link_ttl_s=600)
    fwd.submit(alert(incident="inc-data-0004"))
    fwd.run_due()
    client = data_request_client(fwd)
    link = readings_link(psap.calls[0])
    assert parse_qs(urlsplit(link).query)["expires"] == [str(int((T0 + timedelta(seconds=600)).timestamp()))]
    clock.advance(600)
    assert client.get(link).status_code == 200  # up to its last second
    clock.advance(1)
    assert client.get(link).status_code == 410


def test_the_forwards_api_lists_and_decides(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm"})
    (waiting,) = fwd.submit(alert())
    app = FastAPI()
    app.include_router(build_router(fwd))
    client = TestClient(app, base_url="http://127.0.0.1:8080")
    listed = client.get("/ng112/forwards").json()["forwards"]
    assert [f["id"] for f in listed] == [waiting] and listed[0]["state"] == "awaiting_confirm"
    assert client.get("/ng112/forwards", params={"state": "bogus"}).status_code == 422
    assert client.post(f"/ng112/forwards/{waiting}/confirm", json={"by": "carol"}).json()["state"] == "pending"
    assert client.post(f"/ng112/forwards/{waiting}/dismiss").status_code == 409
    assert client.post("/ng112/forwards/unknown/confirm").status_code == 404


def test_the_dashboard_panel_is_served(engine, clock, psap):
    app = FastAPI()
    app.include_router(build_router(forwarder(engine, clock, uri(psap))))
    panel = TestClient(app).get("/ng112/panel.js")
    assert panel.status_code == 200 and panel.headers["content-type"].startswith("text/javascript")
    assert "/ng112/forwards" in panel.text


def test_a_claim_lost_mid_send_is_taken_back_and_delivered(engine, clock, psap):
    # A replica claimed the Alert and died before sending: its Update must not stay blocked.
    dead = forwarder(engine, clock, uri(psap))
    (first,) = dead.submit(alert())
    (later,) = dead.submit(alert(state="update", severity="Extreme"))
    assert [row.id for row in dead._claim_due()] == [first]
    assert get_forward(engine, first)["state"] == "sending"
    fwd = forwarder(engine, clock, uri(psap))  # the process that comes up afterwards
    lapse = fwd.config.timers.f + 30
    clock.advance(lapse - 1)
    assert fwd.run_due() == 0  # the claim may still be alive: no second copy
    clock.advance(2)
    assert fwd.run_due() == 1
    row = get_forward(engine, first)
    assert (row["state"], row["attempts"], row["msg_type"]) == ("delivered", 2, "Alert")
    assert fwd.run_due() == 1  # and the Update follows it
    assert get_forward(engine, later)["state"] == "delivered"
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Update"]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_a_retry_whose_first_copy_arrived_is_answered_but_not_a_second_call(engine, clock, proto):
    # The PSAP took the first copy and answered after the sender's Timer F: the sender retried, and
    # the built-in PSAP showed the same alert as a second call. The retry is a new SIP request (RFC
    # 3261 §8.1.1.4: a new Call-ID), answered as one, carrying the same CAP message (CAP 1.2 §3.2.1)
    calls, answer_late = [], Event()

    def slow_call_taker(call) -> None:
        calls.append(call)
        if len(calls) == 1:
            answer_late.wait(30)  # until the sender has given up on this copy

    receiver = PsapReceiver(f"{proto}:127.0.0.1:0", slow_call_taker).start()
    try:
        host, port = receiver.address
        fwd = forwarder(engine, clock, f"sip:psap@{host}:{port};transport={proto}")
        (fid,) = fwd.submit(alert(incident="inc-gas-0300"))
        assert fwd.run_due() == 1
        first = get_forward(engine, fid)
        assert (first["state"], first["code"]) == ("retrying", None) and "Timer F" in first["reason"]
        answer_late.set()
        clock.advance(10)
        assert fwd.run_due() == 1
    finally:
        answer_late.set()
        receiver.stop()
    row = get_forward(engine, fid)
    assert (row["state"], row["code"], row["attempts"]) == ("delivered", 200, 2)
    assert [call.cap["identifier"] for call in calls] == [row["cap_identifier"]]


def test_a_lapsed_claim_on_the_last_attempt_ends_failed(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap), max_attempts=1)
    (first,) = fwd.submit(alert())
    fwd._claim_due()
    clock.advance(fwd.config.timers.f + 31)
    assert fwd.run_due() == 0
    row = get_forward(engine, first)
    assert (row["state"], row["attempts"]) == ("failed", 1) and "lapsed" in row["reason"]
    assert psap.calls == []


def committed(engine, *batch: Alert) -> None:
    """Store alerts with their forward jobs, in one transaction, as ingest does."""
    store = Store(engine)
    with engine.begin() as conn:
        store.insert_alerts(conn, [(a, T0) for a in batch])
        store.add_forward_jobs(conn, [a.id for a in batch])


def queued(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(forward_jobs.c.alert_id)).scalars())


def test_jobs_left_in_the_store_are_forwarded_when_the_forwarder_starts(engine, clock, psap):
    # Committed with their jobs just before a crash: nothing in memory knows of them.
    missed, minor = alert(), alert(severity="Minor", incident="inc-minor-02")
    committed(engine, missed, minor)
    fwd = forwarder(engine, clock, uri(psap))
    fwd.start()
    try:
        row = fwd.wait_for(("delivered", "failed"), 10, alert_id=missed.id)
    finally:
        fwd.stop()
    assert row is not None and row["state"] == "delivered"
    assert [c.cap["incidents"] for c in psap.calls] == ["inc-gas-0001"]
    assert queued(engine) == []  # the Minor one's job is taken too: policy said no, once


def test_a_wake_takes_new_jobs_without_waiting_for_the_poll(engine, clock, psap, monkeypatch):
    fwd = forwarder(engine, clock, uri(psap))
    fwd.poll_s = 3600  # only a wake makes it look again
    drained = []
    drain = fwd.drain
    monkeypatch.setattr(fwd, "drain", lambda: drained.append(drain()) or drained[-1])
    fwd.start()
    try:
        eventually(lambda: drained, 10, "the first turn, which finds no job")
        missed = alert()
        committed(engine, missed)  # after that turn's drain: only the wake finds it
        fwd.wake()
        row = fwd.wait_for(("delivered", "failed"), 10, alert_id=missed.id)
    finally:
        fwd.stop()
    assert row is not None and row["state"] == "delivered"
    assert drained[:2] == [0, 1]


def test_an_update_waiting_for_its_alert_goes_when_the_alert_is_through(engine, clock, psap):
    first, update = alert(), alert(state="update", severity="Extreme")
    committed(engine, first, update)
    fwd = forwarder(engine, clock, uri(psap))
    fwd.poll_s = 3600  # the first turn takes both jobs; only the Alert's end can let the Update go
    fwd.start()
    try:
        row = fwd.wait_for(("delivered", "failed"), 10, alert_id=update.id)
    finally:
        fwd.stop()
    assert row is not None and row["state"] == "delivered"
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Update"]


def test_stop_during_a_turn_claims_nothing_more_and_waits_for_the_loop(engine, clock, psap, monkeypatch, caplog):
    due = alert()
    fwd = forwarder(engine, clock, uri(psap))
    (forward_id,) = fwd.submit(due)  # pending, due now
    inside, release = Event(), Event()

    def slow_drain():
        inside.set()
        release.wait(10)
        return 0

    monkeypatch.setattr(fwd, "drain", slow_drain)
    fwd.start()
    assert inside.wait(10)
    stopping = Thread(target=fwd.stop)
    stopping.start()
    eventually(fwd._stop.is_set, 10, "stop() asked")
    release.set()
    stopping.join(10)
    assert not stopping.is_alive()
    assert get_forward(engine, forward_id)["state"] == "pending" and psap.calls == []
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


def test_a_job_taken_twice_is_forwarded_once(engine, clock, psap):
    # Two replicas drain the same table: the second finds the forward the first recorded.
    first = alert()
    committed(engine, first)
    one, two = forwarder(engine, clock, uri(psap)), forwarder(engine, clock, uri(psap))
    assert one.drain() == 1
    with engine.begin() as conn:
        Store(engine).add_forward_jobs(conn, [first.id])  # as if the second took it before the first's commit
    assert two.drain() == 1
    assert one.run_due() + two.run_due() == 1
    assert len(psap.calls) == 1 and queued(engine) == []


def test_the_update_of_a_forwarded_incident_is_taken_below_policy(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    first = alert()
    committed(engine, first)
    fwd.drain()
    fwd.run_due()
    committed(engine, alert(state="update", severity="Minor"))  # below policy, but its incident is open
    assert fwd.drain() == 1
    assert fwd.run_due() == 1
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Update"]


def test_a_drain_that_fails_keeps_its_jobs_and_raises_the_escalation_again(engine, clock, psap):
    rules = [{"name": "gas-flame", "kinds": ["gas", "flame"], "within_s": 120}]
    fwd = forwarder(engine, clock, uri(psap), correlation=rules)
    gas, flame = alert(kind="gas", incident="inc-gas-0300"), alert(kind="flame", incident="inc-flame-0300")
    committed(engine, gas, flame)
    real, outage = fwd._record_once, [OperationalError("INSERT", {}, Exception("disk I/O error"))]

    def once_unavailable(items, jobs):
        if outage:
            raise outage.pop()
        return real(items, jobs)

    fwd._record_once = once_unavailable  # type: ignore[method-assign]
    with pytest.raises(OperationalError):
        fwd.drain()
    assert sorted(queued(engine)) == sorted([gas.id, flame.id])
    assert fwd.drain() == 2 and queued(engine) == []
    with engine.connect() as conn:
        kinds = sorted(conn.execute(select(forwards.c.kind)).scalars())
    assert kinds == ["escalation", "flame", "gas"]


def test_a_job_whose_alert_cannot_be_read_fails_for_an_operator_and_blocks_nothing(engine, clock, psap):
    broken, good = alert(incident="inc-broken-01"), alert(incident="inc-good-0001")
    committed(engine, broken, good)
    with engine.begin() as conn:  # stored by an older version, say, under rules this one refuses
        conn.execute(text("UPDATE alerts SET severity = 'Bogus' WHERE id = :id"), {"id": broken.id})
    fwd = forwarder(engine, clock, uri(psap))
    assert fwd.drain() == 2 and queued(engine) == []
    with engine.connect() as conn:
        failed = conn.execute(select(forwards).where(forwards.c.alert_id == broken.id)).one()
    assert failed.state == "failed" and "cannot be read back" in failed.reason
    assert fwd.run_due() == 1 and [c.cap["incidents"] for c in psap.calls] == ["inc-good-0001"]


def test_gas_and_flame_on_two_replicas_escalate_once(engine, clock, psap):
    # $share put gas on one replica and flame on the other; both alerts are in the shared store.
    rules = [{"name": "gas-flame", "kinds": ["gas", "flame"], "within_s": 120}]
    policy = {"kinds": ["escalation"]}  # only the escalation itself opens a call
    one, two = (forwarder(engine, clock, uri(psap), correlation=rules, default=policy) for _ in range(2))
    gas, flame = alert(kind="gas", incident="inc-gas-0200"), alert(kind="flame", incident="inc-flame-0200")
    store = Store(engine)
    with engine.begin() as conn:
        store.insert_alerts(conn, [(gas, T0)])
    assert one.submit(gas) == []  # alone so far
    with engine.begin() as conn:
        store.insert_alerts(conn, [(flame, T0)])
    assert len(two.submit(flame)) == 1  # the replica that got flame sees gas in the store
    assert one.submit(gas) == []  # a replica escalating the same parts again adds nothing
    while one.run_due() or two.run_due():
        pass
    escalations = [c for c in psap.calls if c.cap["event"] == "escalation"]
    assert len(escalations) == 1 and escalations[0].cap["severity"] == "Extreme"


def test_two_replicas_claiming_at_once_never_take_the_same_forward(engine, clock, psap, monkeypatch):
    """One conditional UPDATE claims all a replica found due; rows the other replica claimed
    between that replica's query and its UPDATE are not returned to it, so each is sent once."""
    other = make_engine(engine.url)  # the other replica's own connections to the shared store
    one, two = forwarder(engine, clock, uri(psap)), forwarder(other, clock, uri(psap))
    ids = {one.submit(alert(incident=f"inc-gas-03{i:02d}"))[0] for i in range(3)}
    connect = engine.connect

    def query_then_let_two_claim():  # ``one`` has its due rows; then ``two`` claims them all
        conn = connect()
        real_execute = conn.execute

        def execute(statement, *args, **kwargs):
            result = real_execute(statement, *args, **kwargs)
            if not statement.is_select:
                return result
            rows = result.all()
            assert {row.id for row in two._claim_due(sweep=False)} == ids
            return type("Rows", (), {"all": lambda self: rows})()

        conn.execute = execute
        return conn

    monkeypatch.setattr(engine, "connect", query_then_let_two_claim)
    assert one._claim_due(sweep=False) == []
    monkeypatch.undo()
    assert {get_forward(engine, i)["state"] for i in ids} == {"sending"}


def test_a_row_another_replica_sent_and_put_back_is_not_taken_on_a_stale_read(engine, clock, psap):
    # replica A reads the due rows; B claims one meanwhile, fails to send it and sets it to
    # retry in 10 s; A's claim took it all the same, sent it at once and lost B's attempt
    a = forwarder(engine, clock, uri(psap))
    b = forwarder(engine, clock, f"sip:psap@127.0.0.1:{free_port()};transport=tcp")  # nothing listens there
    (fid,) = a.submit(alert())

    class ReadThenRace:
        """A's engine: B's whole turn runs between A's read and A's claim."""

        def __init__(self) -> None:
            self.raced = False

        def begin(self):
            if not self.raced:
                self.raced = True
                assert b.run_due() == 1
            return engine.begin()

        def __getattr__(self, name):
            return getattr(engine, name)

    a.engine = ReadThenRace()
    assert a._claim_due(sweep=False) == []
    a.engine = engine
    row = get_forward(engine, fid)
    assert (row["state"], row["attempts"], psap.calls) == ("retrying", 1, [])


def test_a_call_the_psap_took_is_never_sent_again_for_a_store_away_a_moment(engine, clock, psap):
    # the outcome's write failed once (a dropped connection): the loop recorded the delivered
    # call as retrying, and the PSAP was called twice for one alert
    fwd = forwarder(engine, clock, uri(psap))
    (fid,) = fwd.submit(alert())

    class AwayOnce:
        def __init__(self) -> None:
            self.failed = False

        def begin(self):
            if psap.calls and not self.failed:
                self.failed = True
                raise OperationalError("UPDATE forwards", {}, Exception("server closed the connection"))
            return engine.begin()

        def __getattr__(self, name):
            return getattr(engine, name)

    (row,) = fwd._claim_due()
    fwd.engine = AwayOnce()
    fwd._send_or_record(row)
    fwd.engine = engine
    clock.advance(60)
    assert fwd.run_due() == 0
    assert (get_forward(engine, fid)["state"], len(psap.calls)) == ("delivered", 1)


def test_two_replicas_recording_one_incident_at_once_give_its_messages_distinct_places(pg_schema, clock, psap):
    # both counted the incident's forwards in one moment, both took ordinal 1: its Update and
    # Cancel went out in the wrong order under one Call-ID; the unique index sends the second
    # replica back to count again
    pg = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", pg_schema)
    Store(pg).create_all()
    a, b = forwarder(pg, clock, uri(psap)), forwarder(pg, clock, uri(psap))
    a.submit(alert())
    assert a.run_due() == 1
    record, raced = a._forward, []

    def b_records_meanwhile(*args, **kwargs):  # A has counted the incident's forwards by now
        if not raced:
            raced.append(b.submit(alert(state="update", severity="Extreme")))
        return record(*args, **kwargs)

    a._forward = b_records_meanwhile
    a.submit(alert(state="end"))
    with pg.connect() as conn:
        rows = conn.execute(select(forwards.c.ordinal, forwards.c.alert_state).order_by(forwards.c.ordinal)).all()
    assert [tuple(r) for r in rows] == [(0, "new"), (1, "update"), (2, "end")]
    while a.run_due():
        pass
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Update", "Cancel"]
    pg.dispose()


def test_updates_and_the_cancel_reference_the_alert_and_the_last_update(engine, clock, psap):
    # CAP 1.2 §3.2.1: each referenced only the Alert, so the Cancel cancelled a message the
    # Updates had superseded, and a state-tracking PSAP kept the Updates in effect
    fwd = forwarder(engine, clock, uri(psap))
    for state in ("new", "update", "update", "end"):
        fwd.submit(alert(state=state))
        fwd.run_due()
        clock.advance(fwd.config.update_interval_s)  # new readings each: one Update per interval
    sent = [(c.cap["msgType"], c.cap["identifier"], c.cap.get("references") or "") for c in psap.calls]
    assert [m for m, _, _ in sent] == ["Alert", "Update", "Update", "Cancel"]
    ids = [identifier for _, identifier, _ in sent]

    def named(refs: str) -> list[str]:
        return [ref.split(",")[1] for ref in refs.split()]

    assert named(sent[1][2]) == [ids[0]]
    assert named(sent[2][2]) == [ids[0], ids[1]]
    assert named(sent[3][2]) == [ids[0], ids[2]]


def sent_as(call) -> str:
    """The CAP 1.2 §3.2.1 reference (sender,identifier,sent) of the message a call carried."""
    root = parse_cap(call.parts["application/emergencycalldata.cap+xml"])
    return ",".join(cap_text(root, name) or "" for name in ("sender", "identifier", "sent"))


def test_the_cancel_references_the_update_as_sent_though_the_sender_changed_since(engine, clock, psap):
    # The last Update's reference was made again from the config: after sender_domain was edited
    # and the aggregator reloaded, the Cancel cancelled a message that never existed, and the
    # Update the PSAP had stayed in effect
    before = forwarder(engine, clock, uri(psap), sender_domain="old.example", update_interval_s=0)
    for state in ("new", "update"):
        before.submit(alert(state=state, incident="inc-gas-0200"))
        before.run_due()
    reloaded = forwarder(engine, clock, uri(psap), sender_domain="new.example", update_interval_s=0)
    reloaded.submit(alert(state="end", incident="inc-gas-0200"))
    reloaded.run_due()
    alert_sent, update_sent, cancel = psap.calls
    assert update_sent.cap["msgType"] == "Update" and sent_as(update_sent).startswith("sip:n1@plaza.old.example,")
    assert cancel.cap["msgType"] == "Cancel" and sent_as(cancel).startswith("sip:n1@plaza.new.example,")
    assert cancel.cap["references"] == f"{sent_as(alert_sent)} {sent_as(update_sent)}"


def test_each_forward_records_the_reference_of_the_message_it_sent(engine, clock, psap):
    # An Update's record named the message it referenced (build_cap returned the last reference
    # as its own), so the dashboard and the next message's reference pointed at the wrong one
    fwd = forwarder(engine, clock, uri(psap), update_interval_s=0)
    created = [fwd.submit(alert(state=state, incident="inc-gas-0201"))[0] for state in ("new", "update", "end")]
    while fwd.run_due():
        pass
    recorded = [get_forward(engine, forward_id) for forward_id in created]
    assert [f"{r['cap_sender']},{r['cap_identifier']},{r['cap_sent']}" for r in recorded] == [
        sent_as(call) for call in psap.calls
    ]


def test_a_store_from_before_the_sent_references_gets_them_and_its_earlier_updates_are_referenced(
    store_db, clock, psap
):
    # A store made before forwards recorded cap_sender and cap_sent: Store.create_all adds them,
    # and an Update delivered before then is referenced with the sender its incident's Alert went from
    url, schema = store_db
    old = make_engine(url, schema)
    Store(old).create_all()
    before = forwarder(old, clock, uri(psap), sender_domain="old.example", update_interval_s=0)
    for state in ("new", "update"):
        before.submit(alert(state=state, incident="inc-gas-0202"))
        before.run_due()
    table = f'"{schema}".forwards' if schema else "forwards"
    with old.begin() as conn:  # the table as an older release made it
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN cap_sender")
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN cap_sent")
    old.dispose()
    upgraded = make_engine(url, schema)
    Store(upgraded).create_all()
    with upgraded.connect() as conn:
        assert conn.execute(select(forwards.c.cap_sender, forwards.c.cap_sent)).all() == [(None, None)] * 2
    reloaded = forwarder(upgraded, clock, uri(psap), sender_domain="new.example", update_interval_s=0)
    reloaded.submit(alert(state="end", incident="inc-gas-0202"))
    reloaded.run_due()
    alert_sent, update_sent, cancel = psap.calls
    assert cancel.cap["references"] == f"{sent_as(alert_sent)} {sent_as(update_sent)}"
    upgraded.dispose()
