"""What an ongoing incident sends the PSAP: an Update at once when what a call-taker sees
changes (severity, event, headline, area, status) or the incident ends, and otherwise its
latest readings at most once per ``update_interval_s``: merged, never lost, a restart too.

Store-fed as in the aggregator (each alert committed with its forward job), against the
built-in PSAP on a real loopback socket and a real SQLite store; the node's own incident
book makes the stream (edge/alerts.py: an update every 5 s while the readings change)."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_ng112_forwarder import T0, alert, clock, committed, engine, forwarder, psap, uri

from s4edge.cloud_sync.messages import Alert, Location, Measurement
from s4edge.cloud_sync.ng112.api import build_router
from s4edge.cloud_sync.ng112.policy import Ng112Config, Ng112ConfigError, load_config
from s4edge.cloud_sync.ng112.records import forwards
from s4edge.edge.alerts import Content, IncidentBook

__all__ = ["clock", "engine", "psap"]  # the forwarder tests' fixtures, used here too

_seq = count(1000)


def take(fwd, engine, *batch: Alert) -> None:
    """Ingest commits them with their jobs; the forwarder drains the jobs and sends what is due."""
    if batch:
        committed(engine, *batch)
    fwd.drain()
    while fwd.run_due():
        pass


class Leak:
    """A gas leak at the gate, Severe throughout, its reading rising by 0.1 %LEL a second:
    the node's book sends an update every 5 s, and each alert is fed to the forwarder as it comes."""

    def __init__(self, fwd, engine, clock) -> None:
        self.fwd, self.engine, self.clock = fwd, engine, clock
        self.sent: list[Alert] = []
        self.book = IncidentBook(self._publish, update_interval_s=5.0)
        self.second = -1

    def _publish(self, draft) -> None:  # as edge/app.py does: the node's identity, place and seq
        n = next(_seq)
        stamped = draft.stamped("n1", "plaza", Location(lat=48.2, lon=16.37, zone="gate"))
        self.sent.append(stamped.model_copy(update={"seq": n, "ts": T0 + timedelta(seconds=n)}))

    def _tick(self) -> None:
        if self.second >= 0:
            self.clock.advance(1)
        self.second += 1

    def go_on(self, seconds: int) -> None:
        for _ in range(seconds):
            before = len(self.sent)
            self._tick()
            lel = 25 + self.second / 10
            content = Content(
                title=f"methane {lel:.0f} %LEL", measurements=(Measurement(quantity="ch4", value=lel, unit="%LEL"),)
            )
            self.book.raise_("gas:mq4", "gas", "Severe", float(self.second), content)
            take(self.fwd, self.engine, *self.sent[before:])

    def sealed(self) -> None:
        before = len(self.sent)
        self._tick()
        self.book.clear_all(float(self.second), "the leak is sealed")
        take(self.fwd, self.engine, *self.sent[before:])


def states(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(forwards.c.state, func.count()).group_by(forwards.c.state)).all())


def test_an_ongoing_incident_reaches_the_psap_twice_a_minute_with_its_latest_readings(engine, clock, psap):
    # Every update became a CAP Update: 12 MESSAGEs a minute on the call-taker's screen, each
    # differing from the one before in a reading only (121 in these 10 minutes).
    leak = Leak(forwarder(engine, clock, uri(psap)), engine, clock)
    leak.go_on(10 * 60 + 1)
    assert len(leak.sent) == 121  # the node: its Alert, then an update every 5 s
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert"] + ["Update"] * 20  # one per 30 s
    # the end of each interval sent its latest state, not the first of the interval
    assert psap.calls[-1].cap["identifier"] == f"s4edge-{leak.sent[-1].id}"
    assert psap.calls[-1].cap["headline"] == "methane 85 %LEL"
    assert states(engine) == {"delivered": 21, "merged": 100}  # every alert on record


def test_with_no_interval_every_update_goes_as_it_comes(engine, clock, psap):
    leak = Leak(forwarder(engine, clock, uri(psap), update_interval_s=0), engine, clock)
    leak.go_on(61)
    assert len(psap.calls) == len(leak.sent) == 13


@pytest.mark.parametrize(
    "change",
    [
        {"severity": "Extreme"},
        {"severity": "Moderate"},
        {"title": "methane 31 %LEL, spreading to the hall"},
        {"location": Location(lat=48.2, lon=16.37, zone="hall")},
        {"location": Location(lat=48.21, lon=16.37, zone="gate")},
        {"status": "Exercise"},
        {"state": "end"},
    ],
    ids=["severity rose", "severity fell", "headline", "area", "position", "status", "end"],
)
def test_what_a_call_taker_sees_changing_goes_at_once(engine, clock, psap, change):
    fwd = forwarder(engine, clock, uri(psap))
    take(fwd, engine, alert(title="methane 30 %LEL"))
    clock.advance(5)
    take(fwd, engine, alert(state="update", title="methane 31 %LEL"))  # a reading: it waits
    clock.advance(5)
    changed = alert(**{"state": "update", "title": "methane 31 %LEL", **change})
    take(fwd, engine, changed)
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Cancel" if changed.state == "end" else "Update"]
    assert psap.calls[-1].cap["identifier"] == f"s4edge-{changed.id}"
    assert states(engine) == {"delivered": 2, "merged": 1}


def test_a_reading_in_the_headline_is_a_reading(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    take(fwd, engine, alert(kind="co", title="CO alarm: 310 ppm"))
    for ppm in (320, 335, 350):
        clock.advance(5)
        take(fwd, engine, alert(kind="co", state="update", title=f"CO alarm: {ppm} ppm"))
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert"]
    clock.advance(15)  # 30 s after the Alert
    take(fwd, engine)
    assert [c.cap["headline"] for c in psap.calls] == ["CO alarm: 310 ppm", "CO alarm: 350 ppm"]


def test_the_end_goes_at_once_and_takes_the_waiting_readings_with_it(engine, clock, psap):
    leak = Leak(forwarder(engine, clock, uri(psap)), engine, clock)
    leak.go_on(21)  # updates at 5, 10, 15 and 20 s: each waits for the 30 s after the Alert
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert"]
    leak.sealed()
    end = leak.sent[-1]
    assert end.state == "end"
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert", "Cancel"]
    cancel = psap.calls[-1].cap
    assert cancel["identifier"] == f"s4edge-{end.id}" and cancel["headline"] == "methane 27 %LEL"
    # CAP 1.2 §3.2.1: no Update reached the PSAP, so the Cancel cancels the Alert alone
    assert [ref.split(",")[1] for ref in cancel["references"].split()] == [psap.calls[0].cap["identifier"]]
    with engine.connect() as conn:
        merged = conn.execute(
            select(forwards.c.reason).where(forwards.c.state == "merged").order_by(forwards.c.ordinal)
        ).scalars()
        assert [reason.split()[-1] for reason in merged] == [a.id for a in leak.sent[2:]]


def test_the_console_shows_the_waiting_update_and_what_each_alert_became(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    client = TestClient(console(fwd), base_url="http://127.0.0.1:8080")
    leak = Leak(fwd, engine, clock)
    leak.go_on(16)  # updates at 5, 10 and 15 s: the last one waits, the two before it merged
    summary = client.get("/ng112/summary").json()
    (waiting,) = summary["live"]
    assert (waiting["alert_id"], waiting["state"]) == (leak.sent[-1].id, "pending")
    assert waiting["reason"] == "new readings only: at most one Update per 30 s"
    assert waiting["due_at"] == (T0 + timedelta(seconds=30)).isoformat()
    merged = client.get("/ng112/forwards", params={"state": "merged"}).json()["forwards"]
    assert sorted(f["alert_id"] for f in merged) == sorted(a.id for a in leak.sent[1:3])
    assert all(f["msg_type"] is None and f["sent_at"] is None for f in merged)  # never sent
    leak.go_on(15)
    counts = client.get("/ng112/summary").json()["counts"]
    assert (counts["delivered"], counts["merged"], counts["pending"]) == (2, 5, 0) and len(psap.calls) == 2


def console(fwd) -> FastAPI:
    app = FastAPI()
    app.include_router(build_router(fwd))
    return app


def test_waiting_readings_survive_a_restart_and_go_at_their_time(engine, clock, psap):
    before = forwarder(engine, clock, uri(psap))
    take(before, engine, alert(title="methane 30 %LEL"))
    clock.advance(5)
    take(before, engine, alert(state="update", title="methane 31 %LEL"))  # waits until T0 + 30 s
    clock.advance(5)
    latest = alert(state="update", title="methane 32 %LEL")
    committed(engine, latest)  # stored with its job; the forwarder stops before it takes it
    del before
    after = forwarder(engine, clock, uri(psap))  # nothing in memory: the store is all it has
    take(after, engine)
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert"]
    clock.advance(20)
    take(after, engine)
    assert [(c.cap["msgType"], c.cap["identifier"]) for c in psap.calls[1:]] == [("Update", f"s4edge-{latest.id}")]


def test_an_end_left_in_the_store_goes_at_once_when_the_forwarder_is_back(engine, clock, psap):
    before = forwarder(engine, clock, uri(psap))
    take(before, engine, alert(title="methane 30 %LEL"))
    clock.advance(5)
    take(before, engine, alert(state="update", title="methane 31 %LEL"))  # waits until T0 + 30 s
    clock.advance(1)
    end = alert(state="end", title="methane 31 %LEL")
    committed(engine, end)  # the end came while no forwarder ran
    del before
    clock.advance(1)
    take(forwarder(engine, clock, uri(psap)), engine)
    assert [(c.cap["msgType"], c.cap["identifier"]) for c in psap.calls[1:]] == [("Cancel", f"s4edge-{end.id}")]


def test_an_update_never_waits_behind_readings_that_wait(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap))
    take(fwd, engine, alert(title="methane 30 %LEL"))
    clock.advance(5)
    take(fwd, engine, alert(state="update", title="methane 31 %LEL"))
    clock.advance(1)
    take(fwd, engine, alert(state="update", severity="Extreme", title="methane 60 %LEL"))
    clock.advance(5)
    take(fwd, engine, alert(state="update", severity="Extreme", title="methane 61 %LEL"))
    assert [(c.cap["msgType"], c.cap["severity"]) for c in psap.calls] == [("Alert", "Severe"), ("Update", "Extreme")]
    clock.advance(25)  # 30 s after the Extreme Update: the readings since
    take(fwd, engine)
    assert [c.cap["headline"] for c in psap.calls[2:]] == ["methane 61 %LEL"]


def test_readings_behind_an_alert_that_waited_for_its_operator_keep_their_interval(engine, clock, psap):
    fwd = forwarder(engine, clock, uri(psap), default={"mode": "confirm", "confirm_timeout_s": 600})
    first = alert(title="methane 30 %LEL")
    take(fwd, engine, first)
    clock.advance(5)
    reading = alert(state="update", title="methane 31 %LEL")  # due 30 s on: the Alert may go by then
    take(fwd, engine, reading)
    clock.advance(95)
    assert fwd.confirm(fwd.wait_for(("awaiting_confirm",), 0, alert_id=first.id)["id"], by="alice")
    take(fwd, engine)  # the Alert now, and the reading not right behind it
    assert [c.cap["msgType"] for c in psap.calls] == ["Alert"]
    clock.advance(30)
    take(fwd, engine)
    assert [(c.cap["msgType"], c.cap["identifier"]) for c in psap.calls[1:]] == [("Update", f"s4edge-{reading.id}")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("-1", "greater than or equal to 0"), ("601", "less than or equal to 600"), ("soon", "a valid number")],
)
def test_the_interval_is_checked_and_the_error_names_it(tmp_path, value, expected):
    path = tmp_path / "ng112.yaml"
    path.write_text(f"psap: sip:psap@127.0.0.1\nupdate_interval_s: {value}\n")
    with pytest.raises(Ng112ConfigError, match=rf"ng112\.yaml: update_interval_s: .*{expected}"):
        load_config(path)


def test_the_default_interval_is_thirty_seconds():
    assert Ng112Config(psap="sip:psap@127.0.0.1").update_interval_s == 30.0
